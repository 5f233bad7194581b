"""Figures: attention heatmaps and training curves (matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .training import TrainingHistory


def _as_array(matrix) -> np.ndarray:
    if isinstance(matrix, torch.Tensor):
        return matrix.detach().float().cpu().numpy()
    return np.asarray(matrix, dtype=float)


def plot_attention(
    attention,
    source_tokens: Sequence[str],
    output_tokens: Sequence[str],
    ax: Axes | None = None,
    title: str | None = None,
    gold=None,
    colorbar: bool = True,
    cmap: str = "viridis",
) -> Axes:
    """Heatmap of one attention matrix: source tokens on x, output tokens on y.

    Args:
        attention: ``(len(output_tokens), len(source_tokens))`` weights.
        gold: optional 0/1 matrix of the same shape; gold cells are outlined in red.

    Every tick is labelled: a heatmap without its words cannot be read.
    """
    weights = _as_array(attention)
    if weights.shape != (len(output_tokens), len(source_tokens)):
        raise ValueError(
            f"attention has shape {weights.shape} but there are {len(output_tokens)} output "
            f"and {len(source_tokens)} source tokens"
        )
    if ax is None:
        width = max(3.0, 0.45 * len(source_tokens) + 1.5)
        height = max(2.5, 0.4 * len(output_tokens) + 1.0)
        _, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(weights, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(source_tokens)), labels=list(source_tokens), rotation=60, ha="right")
    ax.set_yticks(range(len(output_tokens)), labels=list(output_tokens))
    ax.tick_params(axis="x", labelsize=9)
    ax.tick_params(axis="y", labelsize=9)
    ax.set_xlabel("source token (attended to)")
    ax.set_ylabel("output token (being produced)")
    if gold is not None:
        gold_cells = np.argwhere(_as_array(gold) > 0)
        for row, column in gold_cells:
            ax.add_patch(
                plt.Rectangle(
                    (column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.2
                )
            )
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    return ax


def plot_attention_grid(
    items: Sequence[tuple],
    columns: int = 2,
    titles: Sequence[str] | None = None,
    cell_size: tuple[float, float] = (4.2, 3.4),
) -> Figure:
    """Several heatmaps side by side; ``items`` are ``(attention, source_tokens, output_tokens)``
    or ``(attention, source_tokens, output_tokens, gold)``."""
    if not items:
        raise ValueError("nothing to plot")
    rows = -(-len(items) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(cell_size[0] * columns, cell_size[1] * rows), squeeze=False
    )
    for index, ax in enumerate(axes.flat):
        if index >= len(items):
            ax.axis("off")
            continue
        attention, source_tokens, output_tokens, *gold = items[index]
        plot_attention(
            attention,
            source_tokens,
            output_tokens,
            ax=ax,
            title=titles[index] if titles else None,
            gold=gold[0] if gold else None,
            colorbar=False,
        )
    figure.tight_layout()
    return figure


def plot_loss_curves(histories: dict[str, TrainingHistory], ax: Axes | None = None) -> Axes:
    """Training and validation loss per epoch, one colour per model."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for (name, history), color in zip(
        histories.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False
    ):
        frame = history.to_frame()
        ax.plot(frame.index, frame["train_loss"], "--", color=color, label=f"{name} train")
        ax.plot(frame.index, frame["valid_loss"], "-o", color=color, label=f"{name} validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy per target token (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax
