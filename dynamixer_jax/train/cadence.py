"""When a run logs, evaluates and checkpoints: clu's periodic actions, asked after every step.

Each action is a ``clu.periodic_actions.PeriodicCallback`` deciding from the step number alone
(``every_steps`` and ``on_steps``, never the clock), so a run resumed from the checkpoint of step
``k`` logs, evaluates and saves at exactly the steps the uninterrupted run did. The actions only
say what is due; the loop then does it in a fixed order (fetch and check the step's metrics,
log, evaluate, save with the evaluation's score), because all three need the checked metrics
first and the checkpoint needs the evaluation's result. clu imports TensorFlow, so this module
is imported when a run starts.
"""

from __future__ import annotations

import dataclasses

from clu import periodic_actions

from dynamixer_jax.train.plan import CadencePlan, StepCounts


@dataclasses.dataclass(frozen=True)
class Due:
    """What to do after a step."""

    log: bool
    evaluate: bool
    save: bool

    def __bool__(self) -> bool:
        return self.log or self.evaluate or self.save


def _action(every_steps: int, on_steps: list[int]) -> periodic_actions.PeriodicCallback:
    return periodic_actions.PeriodicCallback(
        every_steps=every_steps, on_steps=on_steps, callback_fn=lambda step, t: None
    )


class Cadence:
    """Call once after every step, with its number (the first call may be any step)."""

    def __init__(self, cadence: CadencePlan, steps: StepCounts):
        end = [steps.total_steps]  # the last step always logs and evaluates
        self._log = _action(cadence.log_every_steps, end)
        self._evaluate = _action(steps.eval_every_steps, end)
        self._save = _action(cadence.checkpoint_every_steps, [])

    def __call__(self, step: int) -> Due:
        log, evaluate, save = (action(step) for action in (self._log, self._evaluate, self._save))
        return Due(log=log, evaluate=evaluate, save=save or evaluate)  # a checkpoint per eval
