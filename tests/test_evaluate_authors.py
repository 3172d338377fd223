"""``evaluate`` on an authors'-format PyTorch checkpoint (raw and EMA weights) agrees with our
PyTorch reference model run on the same eval batches; fine-tuning starts from such a file."""

import numpy as np
import pytest
import torch
from conftest import REPO

from dynamixer_jax.data.build import make_eval_data
from dynamixer_jax.data.device_augment import normalize
from dynamixer_jax.data.sources import open_source
from dynamixer_jax.train import evaluate, load_config, train_and_evaluate
from dynamixer_jax.train.plan import make_plan
from dynamixer_jax.train.reporting import read_metrics
from dynamixer_torch import TorchDynaMixer, randomize_

QUICKSTART = str(REPO / "configs" / "quickstart.py")
ARCH = dict(
    layers=(1, 1),
    embed_dims=(64, 128),
    transitions=(True, False),
    num_segments=(4, 8),
    reduced_dims=(2, 2),
    mlp_ratios=(3, 3),
    patch_size=4,
)  # configs/quickstart.py's model with one layer per stage (half the compile)
OVERRIDES = {f"model_overrides.{key}": value for key, value in ARCH.items()}


@pytest.fixture(scope="module")
def authors_checkpoint(tmp_path_factory):
    """A timm-style checkpoint file of the quickstart architecture with raw and EMA weights."""
    raw = randomize_(TorchDynaMixer(**ARCH, num_classes=10, image_size=32), seed=0).eval()
    ema = randomize_(TorchDynaMixer(**ARCH, num_classes=10, image_size=32), seed=1).eval()
    path = tmp_path_factory.mktemp("authors") / "dynamixer_digits.pth.tar"
    torch.save(
        {"epoch": 3, "state_dict": raw.state_dict(), "state_dict_ema": ema.state_dict()}, path
    )
    return path, raw, ema


def _torch_metrics(model, config, data_dir):
    sums = {"top1": 0.0, "top5": 0.0, "loss": 0.0, "count": 0.0}
    eval_data = make_eval_data(make_plan(config).data, open_source(config.dataset, data_dir))
    with torch.no_grad():
        for batch in eval_data.batches():
            real = batch["mask"]
            images = np.asarray(normalize(batch["image"][real], config.mean, config.std))
            images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
            labels = torch.from_numpy(batch["label"][real]).long()
            logits = model(images.float())
            sums["loss"] += float(
                torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
            )
            sums["top1"] += float((logits.argmax(-1) == labels).sum())
            sums["top5"] += float((logits.topk(5, -1).indices == labels[:, None]).any(-1).sum())
            sums["count"] += float(real.sum())
    count = sums.pop("count")
    assert count == 360  # every test digit once
    return {key: value / count for key, value in sums.items()}


def test_evaluate_authors_checkpoint_matches_pytorch(authors_checkpoint, digits_data_dir):
    path, raw, ema = authors_checkpoint
    # 360 = 7.5 batches
    config = load_config(QUICKSTART, data_dir=digits_data_dir, eval_batch_size=48, **OVERRIDES)
    results = evaluate(config, str(path))
    for prefix, model in (("", raw), ("ema_", ema)):
        want = _torch_metrics(model, config, digits_data_dir)
        # Logits agree to ~1e-5 (tests/test_parity.py): the loss to far better than 1e-4, and
        # at most one of 360 predictions may flip on a near-tie.
        assert results[f"{prefix}eval_loss"] == pytest.approx(want["loss"], rel=1e-4)
        assert abs(results[f"{prefix}eval_top1"] - want["top1"]) <= 1 / 360
        assert abs(results[f"{prefix}eval_top5"] - want["top5"]) <= 1 / 360
    assert results["eval_loss"] != pytest.approx(results["ema_eval_loss"])  # two different models


def test_finetune_from_authors_checkpoint_at_another_size(
    authors_checkpoint, digits_data_dir, tmp_path, caplog
):
    path, raw, _ = authors_checkpoint
    config = load_config(
        str(REPO / "configs" / "finetune.py"),
        init_from=str(path),
        dataset="sklearn_digits",
        data_dir=digits_data_dir,
        eval_split="test",
        image_size=48,
        batch_size=32,
        num_train_steps=3,
        log_every_steps=1,
        checkpoint_every_steps=3,
        half_precision=False,
        **OVERRIDES,
    )
    with caplog.at_level("INFO", logger="dynamixer_jax"):
        result = train_and_evaluate(config, str(tmp_path))
    assert result["status"] == "finished" and result["step"] == 3
    messages = [record.getMessage() for record in caplog.records]
    # 48 / 4 = a 12x12 grid instead of 8x8: every generate layer resampled, the head fresh
    generate = sum(1 for key in raw.state_dict() if ".generate." in key)
    assert f"were trained at 32x32: {generate} generate tensors resampled to 48x48" in "".join(
        messages
    )
    finetune = next(message for message in messages if "fine-tuning from" in message)
    assert "2 freshly initialised (head/bias, head/kernel)" in finetune
    losses = [r["train_loss"] for r in read_metrics(str(tmp_path)) if "train_loss" in r]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
