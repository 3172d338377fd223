"""When a run logs, evaluates and checkpoints, from the step number alone.

A pure function of the step (never the clock), so a run resumed from the checkpoint of step
``k`` logs, evaluates and saves at exactly the steps the uninterrupted run did. It only says
what is due; the loop then does it in a fixed order (fetch and check the step's metrics, log,
evaluate, save with the evaluation's score), because all three need the checked metrics first
and the checkpoint needs the evaluation's result. Arithmetic, as big_vision's ``itstime``: no
clu (which would bring TensorFlow) for a modulo.
"""

from __future__ import annotations

import dataclasses

from dynamixer_jax.train.plan import CadencePlan, StepCounts


@dataclasses.dataclass(frozen=True)
class Due:
    """What to do after a step."""

    log: bool
    evaluate: bool
    save: bool

    def __bool__(self) -> bool:
        return self.log or self.evaluate or self.save


@dataclasses.dataclass(frozen=True)
class Cadence:
    """Call after a step with its number: what is due then."""

    cadence: CadencePlan
    steps: StepCounts

    def __call__(self, step: int) -> Due:
        last = step == self.steps.total_steps  # the last step always logs and evaluates
        log = last or step % self.cadence.log_every_steps == 0
        evaluate = last or step % self.steps.eval_every_steps == 0
        save = evaluate or step % self.cadence.checkpoint_every_steps == 0  # one per evaluation
        return Due(log=log, evaluate=evaluate, save=save)
