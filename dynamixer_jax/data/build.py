"""The planned dataset, opened, and its training and eval splits as ``TrainData``/``EvalData``.

What a run's ``DataPlan`` (``dynamixer_jax.train.plan``) asks for, built for the training loop,
evaluation and the benchmarks. Importing this module imports no TensorFlow: the input pipeline
(``pipeline.py``, ``sources.py``) is imported when a function here is first called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dynamixer_jax.train.plan import DataPlan, RunPlan


def make_train_data(plan: RunPlan, source: Any) -> Any:
    """The configured training split of ``source`` (an opened data source) as ``TrainData``."""
    from dynamixer_jax.data.pipeline import TrainData  # noqa: PLC0415 (TensorFlow)

    data = plan.data
    return TrainData(
        source,
        global_batch_size=data.batch_size,
        image_size=data.image_size,
        seed=plan.seed,
        split=data.train_split,
        augment=data.augment,
        shuffle_buffer_size=data.shuffle_buffer_size,
        threads=data.threads,
        prefetch_batches=data.prefetch_batches,
    )


def make_eval_data(data: DataPlan, source):
    """The planned eval split of ``source`` (an opened data source) as ``EvalData``."""
    from dynamixer_jax.data.pipeline import EvalData  # noqa: PLC0415 (TensorFlow)

    return EvalData(
        source,
        global_batch_size=data.eval_batch_size,
        image_size=data.image_size,
        crop_fraction=data.crop_fraction,
        split=data.eval_split,
        threads=data.threads,
    )


def open_configured_source(data: DataPlan):
    """The planned dataset (TFDS name or folder), opened (raises DataError with advice)."""
    from dynamixer_jax.data.sources import open_source  # noqa: PLC0415 (TensorFlow)

    return open_source(
        data.dataset, data.data_dir, image_key=data.image_key, label_key=data.label_key
    )
