"""Figures: attention heatmaps and training curves (matplotlib)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .checks import whole_number
from .training import TrainingHistory

# The inline backend draws at 100 dpi and a notebook's output area is about 1,000 px wide:
# a wider figure is scaled down to fit, and its 9 pt labels shrink to a few pixels with it.
# So a heatmap grows with its sentence only up to these sizes (inches).
MAX_FIGURE_WIDTH = 10.0
MAX_FIGURE_HEIGHT = 9.0
LABEL_POINTS = 9.0  # tick label size whenever the labels have room
MIN_LABEL_POINTS = 7.0  # below this a label cannot be read: label fewer ticks instead
# Room one label needs along its axis, as a multiple of its font size: the text's own
# height (about 1.17 × the size for DejaVu Sans, descenders included) plus a small gap.
LABEL_SPACING = 1.3
# Share of the axes' current length that labels may count on: a later tight_layout() can
# shrink the axes a little to make room for long rotated labels.
LAYOUT_MARGIN = 0.9


def _as_array(matrix) -> np.ndarray:
    if isinstance(matrix, torch.Tensor):
        return matrix.detach().float().cpu().numpy()
    return np.asarray(matrix, dtype=float)


def attention_figure_size(source_length: int, output_length: int) -> tuple[float, float]:
    """``(width, height)`` in inches for one heatmap of ``output_length × source_length``.

    About half an inch per token, with a floor for tiny sentences and a cap
    (:data:`MAX_FIGURE_WIDTH` × :data:`MAX_FIGURE_HEIGHT`) so that a long sentence is not
    drawn wider than the notebook shows it.
    """
    width = min(MAX_FIGURE_WIDTH, max(3.0, 0.45 * source_length + 1.5))
    height = min(MAX_FIGURE_HEIGHT, max(2.5, 0.4 * output_length + 1.0))
    return width, height


def tick_label_plan(
    count: int, room_points: float, footprint: float = LABEL_SPACING
) -> tuple[int, float]:
    """How to label ``count`` evenly spaced ticks on ``room_points`` of axis.

    Returns ``(step, font_size)``: label every ``step``-th tick at ``font_size`` points.
    Every tick gets a :data:`LABEL_POINTS` label when there is room; then the labels shrink,
    but never below :data:`MIN_LABEL_POINTS`; past that, only every ``step``-th tick is
    labelled, at the largest size (≤ :data:`LABEL_POINTS`) the wider spacing allows.
    ``footprint`` is the room one label needs, in multiples of its font size.
    """
    if count <= 0:
        return 1, LABEL_POINTS
    pitch = room_points / count  # points between neighbouring ticks
    if pitch >= LABEL_POINTS * footprint:
        return 1, LABEL_POINTS
    step = max(1, math.ceil(MIN_LABEL_POINTS * footprint / pitch))
    return step, min(LABEL_POINTS, step * pitch / footprint)


def _ordinal(number: int) -> str:
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(number % 10 if number % 100 not in (11, 12, 13) else 0)
    return f"{number}{suffix or 'th'}"


def _axes_size_points(ax: Axes) -> tuple[float, float]:
    """The axes' current width and height in points (72 per inch)."""
    box = ax.get_position()
    width, height = ax.figure.get_size_inches()
    return box.width * width * 72, box.height * height * 72


#: What the two axes of an attention map are, unless a caller names them otherwise.
CROSS_ATTENTION_AXES = ("source token (attended to)", "output token (being produced)")
#: Self-attention's axes: every token is both a query (a row) and a key (a column).
SELF_ATTENTION_AXES = ("key token (attended to)", "query token (attending)")


def _label_ticks(
    ax: Axes,
    source_tokens: Sequence[str],
    output_tokens: Sequence[str],
    axis_labels: tuple[str, str] = CROSS_ATTENTION_AXES,
) -> None:
    """Tick labels that stay readable however long the sentence.

    Short sentences: every token labelled at 9 pt, source labels slanted at 60°. Long ones:
    source labels turn vertical (they then need only their height of room), shrink to no
    less than 7 pt, and past that only every k-th token is labelled — the others keep a
    small tick, so the rows and columns can still be counted.
    """
    width_points, height_points = _axes_size_points(ax)
    slanted = LABEL_SPACING / math.sin(math.radians(60))  # room a label slanted at 60° needs
    x_step, x_size = tick_label_plan(len(source_tokens), width_points * LAYOUT_MARGIN, slanted)
    rotation, alignment = 60, "right"
    if x_step > 1 or x_size < LABEL_POINTS:
        x_step, x_size = tick_label_plan(len(source_tokens), width_points * LAYOUT_MARGIN)
        rotation, alignment = 90, "center"
    y_step, y_size = tick_label_plan(len(output_tokens), height_points * LAYOUT_MARGIN)

    x_positions = range(0, len(source_tokens), x_step)
    y_positions = range(0, len(output_tokens), y_step)
    ax.set_xticks(
        list(x_positions),
        labels=[source_tokens[i] for i in x_positions],
        rotation=rotation,
        ha=alignment,
    )
    ax.set_yticks(list(y_positions), labels=[output_tokens[i] for i in y_positions])
    if x_step > 1:
        ax.set_xticks(range(len(source_tokens)), minor=True)
    if y_step > 1:
        ax.set_yticks(range(len(output_tokens)), minor=True)
    ax.tick_params(axis="x", labelsize=x_size)
    ax.tick_params(axis="y", labelsize=y_size)
    x_label, y_label = axis_labels
    if x_step > 1:
        x_label += f"; every {_ordinal(x_step)} labelled"
    if y_step > 1:
        y_label += f"; every {_ordinal(y_step)} labelled"
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)


def plot_attention(
    attention,
    source_tokens: Sequence[str],
    output_tokens: Sequence[str],
    ax: Axes | None = None,
    title: str | None = None,
    gold=None,
    colorbar: bool = True,
    cmap: str = "viridis",
    vmax: float | None = 1.0,
    axis_labels: tuple[str, str] = CROSS_ATTENTION_AXES,
) -> Axes:
    """Heatmap of one attention matrix: source tokens on x, output tokens on y.

    Args:
        attention: ``(len(output_tokens), len(source_tokens))`` weights.
        axis_labels: ``(x, y)`` axis titles; :data:`SELF_ATTENTION_AXES` for a sequence
            attending to itself, where the rows are queries and the columns keys.
        gold: optional 0/1 matrix of the same shape; gold cells are outlined in red.
        vmax: the weight drawn brightest. 1.0 (the default) puts every map on one scale,
            so maps can be compared; ``None`` uses this map's own largest weight, which
            shows the pattern of a diffuse map that the shared scale leaves all dark.

    A heatmap without its words cannot be read, so every tick is labelled while the labels
    have room (9 pt). A new figure grows with the sentence up to
    :func:`attention_figure_size`'s cap; in it (or in a small ``ax``) a long sentence gets
    vertical source labels, then smaller ones (never below 7 pt), then a label on every
    k-th token only — the axis title says so.
    """
    weights = _as_array(attention)
    if weights.shape != (len(output_tokens), len(source_tokens)):
        raise ValueError(
            f"attention has shape {weights.shape} but there are {len(output_tokens)} output "
            f"and {len(source_tokens)} source tokens"
        )
    if weights.size == 0:
        raise ValueError(
            f"attention is empty, shape {weights.shape}: nothing to draw (a model without "
            "attention, the plain decoder, has no map)"
        )
    if ax is None:
        _, ax = plt.subplots(figsize=attention_figure_size(len(source_tokens), len(output_tokens)))
    top = float(weights.max()) if vmax is None else vmax
    image = ax.imshow(weights, cmap=cmap, vmin=0.0, vmax=top if top > 0 else 1.0, aspect="auto")
    if gold is not None:
        gold_matrix = _as_array(gold)
        # Fewer rows are fine (an output longer than the reference has no gold there);
        # other columns, or more rows, would put boxes on the wrong cells or off the map.
        if (
            gold_matrix.ndim != 2
            or gold_matrix.shape[1] != weights.shape[1]
            or (gold_matrix.shape[0] > weights.shape[0])
        ):
            raise ValueError(
                f"gold has shape {gold_matrix.shape} but attention has {weights.shape}: give "
                "a 0/1 matrix with the same columns and at most as many rows (a "
                "DateExample's gold_matrix() turns spans into one)"
            )
        gold_cells = np.argwhere(gold_matrix > 0)
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
    # Last: the colorbar takes its room from the axes, and the labels must fit what is left.
    _label_ticks(ax, source_tokens, output_tokens, axis_labels)
    return ax


def plot_attention_grid(
    items: Sequence[tuple],
    columns: int = 2,
    titles: Sequence[str] | None = None,
    cell_size: tuple[float, float] = (4.2, 3.4),
    per_panel_scale: bool = False,
    axis_labels: tuple[str, str] = CROSS_ATTENTION_AXES,
) -> Figure:
    """Several heatmaps side by side; ``items`` are ``(attention, source_tokens, output_tokens)``
    or ``(attention, source_tokens, output_tokens, gold)``; ``axis_labels`` as in
    :func:`plot_attention`.

    One colour bar, labelled, serves every panel on the shared 0–1 scale. With
    ``per_panel_scale=True`` each panel runs from 0 to its own largest weight instead
    (its title gives that maximum), and each panel gets its own colour bar: diffuse maps
    show their pattern, but colours no longer compare across panels.
    """
    if not items:
        raise ValueError("nothing to plot")
    columns = whole_number("columns", columns)
    if titles is not None and len(titles) != len(items):
        raise ValueError(f"{len(titles)} titles for {len(items)} maps")
    for index, item in enumerate(items):
        if len(item) not in (3, 4):
            raise ValueError(
                f"items[{index}] has {len(item)} members: give (attention, source_tokens, "
                "output_tokens) or (attention, source_tokens, output_tokens, gold)"
            )
    rows = -(-len(items) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(cell_size[0] * columns, cell_size[1] * rows), squeeze=False
    )
    for index, ax in enumerate(axes.flat):
        if index >= len(items):
            ax.axis("off")
            continue
        attention, source_tokens, output_tokens, *gold = items[index]
        title = titles[index] if titles else None
        if per_panel_scale:
            top = float(_as_array(attention).max(initial=0.0))  # plot_attention names empty maps
            title = f"{title}\n(scale 0–{top:.2f})" if title else f"scale 0–{top:.2f}"
        plot_attention(
            attention,
            source_tokens,
            output_tokens,
            ax=ax,
            title=title,
            gold=gold[0] if gold else None,
            colorbar=per_panel_scale,
            vmax=None if per_panel_scale else 1.0,
            axis_labels=axis_labels,
        )
    figure.tight_layout()
    if not per_panel_scale:
        # After the layout, so the shared bar takes its room from every panel alike.
        image = axes.flat[0].images[0]
        figure.colorbar(
            image, ax=axes.ravel().tolist(), fraction=0.02, pad=0.02, label="attention weight"
        )
    return figure


def plot_loss_curves(histories: dict[str, TrainingHistory], ax: Axes | None = None) -> Axes:
    """Training and validation loss per epoch, one colour per model (the colour cycle's,
    or evenly spread over a colour map when there are more models than it has colours)."""
    if not isinstance(histories, dict):
        raise TypeError(
            f"histories must be a dict {{name: TrainingHistory}}, got a "
            f"{type(histories).__name__}; for one run: plot_loss_curves({{'model': history}})"
        )
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for name, history in histories.items():
        if not history.epochs:
            raise ValueError(f"{name!r} has no epochs to plot")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(histories) > len(colors):  # zip() over the cycle dropped every model past the 10th
        colors = list(plt.colormaps["turbo"](np.linspace(0.05, 0.95, len(histories))))
    for (name, history), color in zip(histories.items(), colors, strict=False):
        frame = history.to_frame()
        ax.plot(frame.index, frame["train_loss"], "--", color=color, label=f"{name} train")
        ax.plot(frame.index, frame["valid_loss"], "-o", color=color, label=f"{name} validation")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 1.5" ticks
    ax.set_ylabel("cross-entropy per target token (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax
