"""Figures for notebooks: mixing matrices, branch weights, training curves (needs matplotlib).

Each function returns a ``matplotlib.figure.Figure`` and draws nothing else, so notebooks show
it and scripts can ``savefig`` it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from dynamixer_jax.analysis.mixing_maps import BRANCHES, LayerMixing


def _pyplot():
    import matplotlib.pyplot as plt  # noqa: PLC0415 (an optional dependency)

    return plt


def plot_mixing_matrices(
    layers: Sequence[LayerMixing],
    *,
    segments: Iterable[int] = (0, 1, 2, 3),
    position: int | None = None,
    image: np.ndarray | None = None,
):
    """Heatmaps of the column and row mixing matrices of ``layers`` (e.g. an early and a late
    one) for a few ``segments``, at the middle column/row (or column/row ``position``). ``image``
    (H, W, 3, values in 0..1) is shown beside them."""
    plt = _pyplot()
    segments = list(segments)
    extra = 1 if image is not None else 0
    rows = 2 * len(layers)
    fig, axes = plt.subplots(
        rows,
        len(segments) + extra,
        squeeze=False,
        figsize=(2.2 * (len(segments) + extra), 2.2 * rows),
        constrained_layout=True,
    )
    for index, layer in enumerate(layers):
        for kind, matrices in (("column", layer.columns), ("row", layer.rows)):
            row = 2 * index + (kind == "row")
            where = matrices.shape[0] // 2 if position is None else int(position)
            shown = None
            present = [segment for segment in segments if segment < layer.num_segments]
            vmax = (
                max(float(matrices[where, segment].max()) for segment in present) if present else 1
            )
            for col, segment in enumerate(segments):
                ax = axes[row, col + extra]
                ax.set_xticks([])
                ax.set_yticks([])
                if segment >= layer.num_segments:
                    ax.axis("off")
                    continue
                shown = ax.imshow(matrices[where, segment], cmap="magma", vmin=0.0, vmax=vmax)
                ax.set_title(f"segment {segment}", fontsize=8)
                if col == 0:
                    ax.set_ylabel(f"{layer.name}\n{kind} {where}\nout token", fontsize=8)
                ax.set_xlabel("in token", fontsize=7)
            if shown is not None:
                fig.colorbar(shown, ax=axes[row, extra:].tolist(), shrink=0.8)
            if extra:
                axes[row, 0].axis("off")
    if image is not None:
        axes[0, 0].imshow(np.clip(image, 0, 1))
        axes[0, 0].set_title("input", fontsize=8)
    fig.suptitle("DynaMixer mixing matrices (rows: output tokens, sum to 1)", fontsize=10)
    return fig


def plot_branch_weights(layers: Sequence[LayerMixing]):
    """Per layer, each channel's weights of the column, row and channel branches (stacked)."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(layers), 1, squeeze=False, figsize=(9, 1.6 * len(layers)), constrained_layout=True
    )
    for ax, layer in zip(axes[:, 0], layers):
        weights = layer.branch_weights
        order = np.argsort(weights[:, 0] - weights[:, 1])  # column-heavy channels to one side
        bottom = np.zeros(len(weights))
        for branch, name in enumerate(BRANCHES):
            ax.bar(
                np.arange(len(weights)),
                weights[order, branch],
                bottom=bottom,
                width=1.0,
                label=name,
            )
            bottom += weights[order, branch]
        ax.set_xlim(-0.5, len(weights) - 0.5)
        ax.set_ylim(0, 1)
        ax.set_ylabel(layer.name, fontsize=8)
        ax.set_xticks([])
    axes[0, 0].legend(loc="upper right", ncol=3, fontsize=8)
    axes[-1, 0].set_xlabel("channels (sorted by column minus row weight)")
    fig.suptitle("Branch weights of the reweighting, per channel", fontsize=10)
    return fig


def plot_training_curves(records: Sequence[dict]):
    """Training loss and eval top-1 (raw and EMA) against the step, from ``metrics.jsonl``
    records (``dynamixer_jax.train.reporting.read_metrics``)."""
    plt = _pyplot()
    fig, (loss_ax, top1_ax) = plt.subplots(1, 2, figsize=(10, 3.5), constrained_layout=True)
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    if train:
        loss_ax.plot(*zip(*train))
    loss_ax.set(xlabel="step", ylabel="training loss", title="training loss")
    for key, label in (("eval_top1", "raw"), ("ema_eval_top1", "EMA")):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            top1_ax.plot(*zip(*points), marker="o", label=label)
    top1_ax.set(xlabel="step", ylabel="top-1", title="eval top-1", ylim=(0, 1))
    if top1_ax.get_legend_handles_labels()[0]:
        top1_ax.legend()
    return fig
