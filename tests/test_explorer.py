"""The attention explorer (helpers.explorer) driven as a reader drives it, without a browser:
set the widgets' values, read what the widgets show. Plus unk replacement and the readable
heatmap of a long sentence (helpers.viz)."""

from __future__ import annotations

import base64
import math

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from helpers.decoding import (  # noqa: E402
    replace_unknown_tokens,
    translate,
    unknown_source_tokens,
    with_unknown_tokens_replaced,
)
from helpers.explorer import EMPTY_INPUT_MESSAGE, AttentionExplorer  # noqa: E402
from helpers.models import Seq2Seq  # noqa: E402
from helpers.tasks import dates_task  # noqa: E402
from helpers.viz import (  # noqa: E402
    LABEL_POINTS,
    LABEL_SPACING,
    LAYOUT_MARGIN,
    MAX_FIGURE_HEIGHT,
    MAX_FIGURE_WIDTH,
    MIN_LABEL_POINTS,
    SELF_ATTENTION_AXES,
    _axes_size_points,
    _ordinal,
    attention_figure_size,
    plot_attention,
    plot_attention_grid,
    plot_loss_curves,
    tick_label_plan,
)
from helpers.vocab import UNK_INDEX, UNK_TOKEN  # noqa: E402

MAX_SOURCE_LENGTH = 40  # characters: the dates task reads one character per token
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def task():
    return dates_task(train_size=300, valid_size=20, test_size=20, seed=0)


def small_model(task, decoder: str, seed: int = 0, max_source_length: int = MAX_SOURCE_LENGTH):
    """A real, untrained Seq2Seq on the dates task: it writes nonsense dates, but through
    exactly the code paths a trained model uses."""
    torch.manual_seed(seed)
    config = task.model_config(
        embedding_size=8,
        hidden_size=16,
        dropout=0.0,
        decoder=decoder,
        attention="additive" if decoder == "bahdanau" else "general",
        max_source_length=max_source_length,
        max_target_length=12,
    )
    return Seq2Seq(config).attach_vocabularies(task.source_vocab, task.target_vocab).eval()


@pytest.fixture(scope="module")
def models(task):
    return {"luong": small_model(task, "luong"), "bahdanau": small_model(task, "bahdanau", 1)}


@pytest.fixture
def explorer(models, task):
    return AttentionExplorer(models, task.test_sources[:6], beam_size=3)


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert png.startswith(PNG_MAGIC)
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def shown_png(explorer: AttentionExplorer) -> bytes:
    """The image the heatmap Output widget holds, decoded, as the front end gets it."""
    (output,) = explorer.heatmap.outputs
    assert output["output_type"] == "display_data"
    return base64.b64decode(output["data"]["image/png"])


def expected_text(model, sentence: str, beam_size: int) -> str:
    return with_unknown_tokens_replaced(model, translate(model, sentence, beam_size)).text


# --- what a reader sees first -----------------------------------------------------------


def test_first_view_shows_the_translation_as_text_and_a_heatmap(explorer, models, task):
    first = task.test_sources[0]
    assert explorer.sentence_picker.value == first and explorer.text_box.value == ""
    text = expected_text(models["luong"], first, 3)
    assert explorer.translation_text == f"→ {text}"
    assert "→" in explorer.translation_line.value and explorer.translation_line.value.strip()
    assert explorer.messages == [] and explorer.message_line.value == ""
    width, height = png_size(shown_png(explorer))
    assert 200 <= width <= MAX_FIGURE_WIDTH * 100 and 150 <= height <= MAX_FIGURE_HEIGHT * 100
    assert explorer.heatmap_png == shown_png(explorer)
    # Where images are not shown, the text says the image's size.
    (output,) = explorer.heatmap.outputs
    assert output["data"]["text/plain"] == f"<attention heatmap, {width}×{height} px>"


def test_controls_are_standard_widgets_with_clear_descriptions(explorer):
    """The browser test finds the parts by widget class and description."""
    assert explorer.sentence_picker.description == "sentence"
    assert explorer.text_box.description == "your text"
    assert explorer.model_picker.description == "model"
    assert explorer.beam_slider.description == "beam size"
    assert explorer.translation_line.description == "translation"
    assert list(explorer.model_picker.options) == ["luong", "bahdanau"]
    # Enter (or leaving the box) submits: no on_submit, no value change per keystroke.
    assert explorer.text_box.continuous_update is False
    # The placeholder must fit: at most ~0.6 em per character in a box of 34 em, less the
    # 80 px (about 6 em) description.
    assert explorer.text_box.layout.width == "34em"
    assert len(explorer.text_box.placeholder) * 0.6 <= 34 - 6
    assert explorer.text_box.placeholder.endswith("press Enter")
    # The slider translates once, on release, not at every beam size it passes.
    assert explorer.beam_slider.continuous_update is False


# --- the last input used wins -----------------------------------------------------------


def test_typed_text_is_translated_and_the_dropdown_lets_go(explorer, models):
    typed = "Mar 3 2001"
    explorer.text_box.value = typed
    assert explorer.view.sentence == typed
    assert explorer.translation_text == f"→ {expected_text(models['luong'], typed, 3)}"
    assert explorer.sentence_picker.value is None  # nothing picked while typed text shows


def test_a_dropdown_pick_clears_the_text_box_and_is_translated(explorer, models, task):
    explorer.text_box.value = "Mar 3 2001"
    picked = task.test_sources[2]
    explorer.sentence_picker.value = picked
    assert explorer.text_box.value == ""
    assert explorer.view.sentence == picked
    assert explorer.translation_text == f"→ {expected_text(models['luong'], picked, 3)}"
    assert explorer.messages == []


def test_picking_the_sentence_shown_before_typing_counts_as_a_pick(explorer, task):
    first = task.test_sources[0]
    explorer.text_box.value = "Mar 3 2001"
    explorer.sentence_picker.value = first  # the same sentence as at the start
    assert explorer.view.sentence == first and explorer.text_box.value == ""


def test_model_and_beam_changes_translate_the_same_input_again(explorer, models):
    typed = "1 May 1999"
    explorer.text_box.value = typed
    images = [shown_png(explorer)]
    explorer.model_picker.value = "bahdanau"
    assert explorer.view.sentence == typed and explorer.view.model_name == "bahdanau"
    assert explorer.translation_text == f"→ {expected_text(models['bahdanau'], typed, 3)}"
    images.append(shown_png(explorer))
    explorer.beam_slider.value = 1
    assert explorer.view.sentence == typed and explorer.view.beam_size == 1
    assert explorer.translation_text == f"→ {expected_text(models['bahdanau'], typed, 1)}"
    images.append(shown_png(explorer))
    assert len(set(images)) == 3  # a new image each time: the reader sees it was redone


# --- bad input: a message, never a traceback or a silent fallback ---------------------------


@pytest.mark.parametrize("text", ["", "   ", "\t \n"])
def test_empty_input_shows_a_message(explorer, text):
    explorer.text_box.value = "Mar 3 2001"
    explorer.text_box.value = text
    assert explorer.messages == [EMPTY_INPUT_MESSAGE]
    assert "Nothing to translate" in explorer.message_line.value
    assert explorer.translation_text == "" and explorer.translation_line.value == ""
    assert explorer.heatmap.outputs == () and explorer.figure is None
    # ...and it does not fall back to the dropdown's sentence
    assert explorer.sentence_picker.value is None
    explorer.model_picker.value = "bahdanau"  # still nothing to translate
    assert explorer.messages == [EMPTY_INPUT_MESSAGE]


def test_too_long_input_gives_a_one_line_message(explorer):
    explorer.text_box.value = "1" * (MAX_SOURCE_LENGTH + 5)
    (message,) = explorer.messages
    assert message.startswith("Too long: 45 tokens")
    assert f"at most {MAX_SOURCE_LENGTH}" in message
    assert "\n" not in message and "Traceback" not in message
    assert explorer.message_line.value.count("<div") == 1
    assert explorer.translation_text == "" and explorer.heatmap.outputs == ()
    # one token fewer than the limit is fine again
    explorer.text_box.value = "1" * MAX_SOURCE_LENGTH
    assert explorer.view.problem is None and explorer.translation_text


def test_an_error_while_translating_becomes_a_one_line_message(explorer, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the model broke\nwith a second line")

    monkeypatch.setattr("helpers.explorer.translate", broken)
    explorer.text_box.value = "Mar 3 2001"
    (message,) = explorer.messages
    assert message == "Cannot translate this: the model broke with a second line"
    assert explorer.translation_text == "" and explorer.heatmap.outputs == ()


def test_unknown_words_are_counted_and_named(explorer, task):
    for character in "@#":
        assert character not in task.source_vocab
    explorer.text_box.value = "3 @ May # 2001 @"
    assert explorer.view.unknown_words == ["@", "#", "@"]
    assert explorer.messages[0].startswith("3 unknown words (never seen in training")
    assert "'@', '#'" in explorer.messages[0]
    assert "&lt;unk&gt;" in explorer.message_line.value  # escaped, so it shows
    assert explorer.translation_text  # still translated
    explorer.text_box.value = "3 May 2001"
    assert explorer.messages == []


# --- <unk> replacement --------------------------------------------------------------------


def test_replace_unknown_tokens_picks_the_most_attended_source_word():
    source = ["My", "name", "is", "Zorblax", "."]
    output = ["Ich", "heiße", UNK_TOKEN, ".", "<eos>"]
    attention = torch.tensor(
        [
            [0.7, 0.1, 0.1, 0.05, 0.05],
            [0.1, 0.6, 0.2, 0.05, 0.05],
            [0.05, 0.1, 0.15, 0.6, 0.1],  # the <unk> row looks at "Zorblax"
            [0.0, 0.0, 0.1, 0.1, 0.8],
            [0.4, 0.1, 0.1, 0.1, 0.3],
        ]
    )
    assert replace_unknown_tokens(output, source, attention) == [
        "Ich",
        "heiße",
        "Zorblax",
        ".",
        "<eos>",
    ]
    # the argmax, not the first or the last source word
    attention[2] = torch.tensor([0.1, 0.5, 0.2, 0.1, 0.1])
    assert replace_unknown_tokens(output, source, attention)[2] == "name"
    assert output[2] == UNK_TOKEN  # the input list is left alone


def test_replace_unknown_tokens_keeps_unk_without_attention_and_checks_shapes():
    source, output = ["a", "b"], [UNK_TOKEN, "x"]
    assert replace_unknown_tokens(output, source, [[0.0, 0.0], [0.5, 0.5]]) == output
    with pytest.raises(ValueError, match="shape"):
        replace_unknown_tokens(output, source, [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    with pytest.raises(TypeError, match="source_tokens is a str"):  # letters, else
        replace_unknown_tokens(output, "ab", [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(TypeError, match="output_tokens is a str"):
        replace_unknown_tokens("xy", source, [[0.5, 0.5], [0.5, 0.5]])


def test_unknown_source_tokens_counts_every_occurrence(models):
    model = models["luong"]
    assert unknown_source_tokens(model, list("1 @ 2 @ ~")) == ["@", "@", "~"]
    assert unknown_source_tokens(model, list("3 May 2001")) == []
    bare = Seq2Seq(model.config)  # weights only: no vocabulary to look words up in
    with pytest.raises(ValueError, match="no source vocabulary"):
        unknown_source_tokens(bare, ["3"])
    with pytest.raises(TypeError, match="source_tokens is a str"):
        unknown_source_tokens(model, "1 @ 2")


@pytest.fixture
def unk_writer(task):
    """A model that writes nothing but <unk>: every output row is replaced."""
    model = small_model(task, "luong", seed=2)
    with torch.no_grad():
        model.decoder.W_s.bias[UNK_INDEX] = 1e4
    return model


def test_the_explorer_replaces_unk_and_says_so(unk_writer, task):
    explorer = AttentionExplorer({"luong": unk_writer}, task.test_sources[:3], beam_size=1)
    explorer.text_box.value = "3 May 2001"
    view = explorer.view
    raw = view.model_output
    assert raw.output_tokens.count(UNK_TOKEN) == len(raw.output_tokens) > 0
    expected = [raw.source_tokens[int(row.argmax())] for row in raw.attention]
    assert view.translation.output_tokens == expected
    assert [word for _, word in view.replaced] == expected
    assert UNK_TOKEN not in explorer.translation_text
    assert explorer.translation_text == "→ " + "".join(expected)
    assert any(m.startswith("<unk> in the output replaced") for m in explorer.messages)
    labels = [label.get_text() for label in explorer.figure.axes[0].get_yticklabels()]
    assert labels[0] == f"{UNK_TOKEN}→{expected[0]}"  # the heatmap still shows what the model did


def test_without_replacement_unk_is_shown_escaped(unk_writer, task):
    explorer = AttentionExplorer(
        {"luong": unk_writer}, task.test_sources[:3], beam_size=1, replace_unknown=False
    )
    assert UNK_TOKEN in explorer.translation_text
    assert "&lt;unk&gt;" in explorer.translation_line.value  # escaped, or the browser hides it
    assert not any("replaced" in m for m in explorer.messages)


# --- long sentences: a bounded figure with readable labels --------------------------------


def label_report(ax):
    """Font sizes and overlaps of the visible tick labels, after a real draw."""
    figure = ax.figure
    canvas = figure.canvas
    if not isinstance(canvas, FigureCanvasAgg):  # the explorer's figure is not pyplot's
        canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    report = {}
    for axis, labels in [("x", ax.get_xticklabels()), ("y", ax.get_yticklabels())]:
        visible = [label for label in labels if label.get_text() and label.get_visible()]
        boxes = sorted(
            (label.get_window_extent(renderer) for label in visible),
            key=lambda box: box.x0 if axis == "x" else box.y0,
        )
        overlaps = sum(
            (left.x1 > right.x0) if axis == "x" else (left.y1 > right.y0)
            for left, right in zip(boxes, boxes[1:], strict=False)
        )
        report[axis] = {
            "count": len(visible),
            "smallest": min(label.get_fontsize() for label in visible),
            "overlaps": overlaps,
            "rotation": visible[0].get_rotation(),
        }
    return report


def random_attention(rows: int, columns: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(rows, columns, generator=generator).softmax(-1)


def test_a_60_token_heatmap_stays_bounded_and_readable():
    source = [f"word{i}" for i in range(60)]
    output = [f"Wort{i}" for i in range(66)]
    attention = random_attention(66, 60)
    ax = plot_attention(attention, source, output, title="60 tokens")
    ax.figure.tight_layout()
    width, height = ax.figure.get_size_inches()
    assert width <= MAX_FIGURE_WIDTH and height <= MAX_FIGURE_HEIGHT
    report = label_report(ax)
    for axis, count in [("x", 60), ("y", 66)]:
        assert report[axis]["smallest"] >= MIN_LABEL_POINTS, report
        assert report[axis]["overlaps"] == 0, report
        assert count / 4 <= report[axis]["count"] < count, report  # thinned, not gutted
    assert report["x"]["rotation"] == 90
    assert "every 2nd labelled" in ax.get_xlabel()
    # the heatmap itself keeps every cell, in place: row t, column s is weight (t, s)
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), attention.numpy())
    plt.close(ax.figure)


def test_a_short_heatmap_labels_every_token_as_before():
    source, output = ["She", "kissed", "him", "."], ["Sie", "küsste", "ihn", ".", "<eos>"]
    ax = plot_attention(random_attention(5, 4), source, output)
    report = label_report(ax)
    assert report["x"]["count"] == 4 and report["y"]["count"] == 5
    assert report["x"]["smallest"] == report["y"]["smallest"] == 9
    assert report["x"]["rotation"] == 60
    assert ax.get_xlabel() == "source token (attended to)"
    # Every token labelled: no unlabelled minor ticks in between or on top.
    assert list(ax.get_xticks(minor=True)) == [] and list(ax.get_yticks(minor=True)) == []
    plt.close(ax.figure)


def test_grid_cells_get_readable_labels_too():
    """plot_attention_grid draws into small axes: the same rules apply there."""

    source = [f"w{i}" for i in range(45)]
    output = [f"W{i}" for i in range(50)]
    items = [(random_attention(50, 45), source, output)] * 2
    figure = plot_attention_grid(items, columns=2, cell_size=(5.2, 4.0))
    for ax in figure.axes:
        if ax.get_label() == "<colorbar>":
            continue
        report = label_report(ax)
        assert report["y"]["smallest"] >= MIN_LABEL_POINTS and report["y"]["overlaps"] == 0
        assert report["x"]["smallest"] >= MIN_LABEL_POINTS and report["x"]["overlaps"] == 0
    plt.close(figure)


def test_the_grid_has_one_labelled_colour_bar_or_a_scale_per_panel():
    """One shared 0–1 scale with one labelled bar; or each panel on its own maximum."""

    diffuse = torch.full((3, 4), 0.25)
    sharp = torch.eye(3, 4)
    items = [(diffuse, list("abcd"), list("xyz")), (sharp, list("abcd"), list("xyz"))]
    shared = plot_attention_grid(items, columns=2, titles=["diffuse", "sharp"])
    bars = [ax for ax in shared.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "attention weight"
    panels = [ax for ax in shared.axes if ax.get_label() != "<colorbar>"]
    assert [ax.images[0].get_clim() for ax in panels] == [(0.0, 1.0), (0.0, 1.0)]
    plt.close(shared)
    own = plot_attention_grid(items, columns=2, titles=["diffuse", "sharp"], per_panel_scale=True)
    panels = [ax for ax in own.axes if ax.get_label() != "<colorbar>"]
    assert [ax.images[0].get_clim()[1] for ax in panels] == [0.25, 1.0]
    assert panels[0].get_title() == "diffuse\n(scale 0–0.25)"
    assert sum(ax.get_label() == "<colorbar>" for ax in own.axes) == 2
    plt.close(own)


def test_self_attention_maps_name_their_axes_query_and_key():
    """Self-attention has no source and output: rows are queries, columns keys."""

    tokens = ["I", "did", "n't", "."]
    items = [(torch.eye(4), tokens, tokens)] * 2
    figure = plot_attention_grid(items, columns=2, axis_labels=SELF_ATTENTION_AXES)
    panels = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in panels] == [SELF_ATTENTION_AXES] * 2
    assert "query" in SELF_ATTENTION_AXES[1] and "key" in SELF_ATTENTION_AXES[0]
    plt.close(figure)
    ax = plot_attention(torch.eye(4), tokens, tokens)  # the default: cross-attention
    assert ax.get_ylabel() == "output token (being produced)"
    plt.close(ax.figure)


def test_loss_curves_tick_whole_epochs_only():
    from helpers.training import EpochRecord, TrainingHistory

    history = TrainingHistory()
    for epoch in (1, 2, 3):
        history.epochs.append(EpochRecord(epoch, 3.0 / epoch, 2.5 / epoch, 12.0, 1.0, 1000.0))
    ax = plot_loss_curves({"toy": history})
    ax.figure.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    plt.close(ax.figure)


@pytest.mark.parametrize("models", [3, 12])
def test_loss_curves_draw_every_model_in_its_own_colour(models):
    """zip() over the 10-colour cycle dropped every model past the 10th, silently."""
    from helpers.training import EpochRecord, TrainingHistory

    histories = {}
    for index in range(models):
        history = TrainingHistory()
        history.epochs.append(EpochRecord(1, 3.0 + index, 2.5 + index, 12.0, 1.0, 1000.0))
        history.epochs.append(EpochRecord(2, 2.0 + index, 2.0 + index, 12.0, 1.0, 1000.0))
        histories[f"model {index}"] = history
    ax = plot_loss_curves(histories)
    assert len(ax.get_lines()) == 2 * models
    lines = ax.get_lines()  # each model's train line, then its validation line
    for index, history in enumerate(histories.values()):
        frame = history.to_frame()
        pair = lines[2 * index : 2 * index + 2]
        for line, column in zip(pair, ("train_loss", "valid_loss"), strict=True):
            assert list(line.get_xdata()) == list(frame.index) == [1, 2]
            assert list(line.get_ydata()) == list(frame[column])
    assert ax.get_legend_handles_labels()[1][-1] == f"model {models - 1} validation"
    colours = {tuple(matplotlib.colors.to_rgba(line.get_color())) for line in ax.get_lines()}
    assert len(colours) == models
    plt.close(ax.figure)


def test_the_explorer_draws_a_long_sentence_readably(task):
    model = small_model(task, "luong", max_source_length=80)
    explorer = AttentionExplorer({"luong": model}, task.test_sources[:2], beam_size=1)
    sentence = ("Tuesday 24 November 2026, " * 3)[:60]
    explorer.text_box.value = sentence
    assert len(explorer.view.model_output.source_tokens) == 60
    width, height = explorer.figure.get_size_inches()
    assert width <= MAX_FIGURE_WIDTH and height <= MAX_FIGURE_HEIGHT
    png_width, png_height = png_size(shown_png(explorer))
    assert png_width <= MAX_FIGURE_WIDTH * 100 and png_height <= MAX_FIGURE_HEIGHT * 100
    report = label_report(explorer.figure.axes[0])
    assert report["x"]["smallest"] >= MIN_LABEL_POINTS and report["x"]["overlaps"] == 0


# --- a static view for pages read without a kernel ------------------------------------------


def test_plot_view_draws_the_current_view_with_its_translation(explorer, task):
    figure = explorer.plot_view()
    title = figure.axes[0].get_title()
    assert task.test_sources[0] in title and explorer.view.translation.text in title
    assert figure in map(plt.figure, plt.get_fignums())  # a pyplot figure: plt.show() shows it
    plt.close(figure)
    explorer.text_box.value = " "
    with pytest.raises(ValueError, match="Nothing to translate"):
        explorer.plot_view()
    other = explorer.plot_view("3 May 2001")  # any sentence, with the current settings
    assert "3 May 2001" in other.axes[0].get_title()
    plt.close(other)


def test_the_explorer_refuses_bad_settings_early(models, task):
    with pytest.raises(ValueError, match="sentence"):
        AttentionExplorer(models, [])
    with pytest.raises(ValueError, match="unknown model"):
        AttentionExplorer(models, task.test_sources[:2], model="transformer")
    for beam_size in (0, 9):
        with pytest.raises(ValueError, match="beam_size"):
            AttentionExplorer(models, task.test_sources[:2], beam_size=beam_size)
    # 2.5 became a beam of 2; a str of sentences offered its letters; a list of models
    # met a bare error on .keys()
    with pytest.raises(ValueError, match="beam_size must be a whole number >= 1, got 2.5"):
        AttentionExplorer(models, task.test_sources[:2], beam_size=2.5)
    with pytest.raises(TypeError, match=r"sentences is a str \('abc'\)"):
        AttentionExplorer(models, "abc")
    with pytest.raises(TypeError, match="models must be a dict {name: model}, got a list"):
        AttentionExplorer(list(models.values()), task.test_sources[:2])
    widest = AttentionExplorer(models, task.test_sources[:2], beam_size=8)  # the maximum
    assert widest.beam_slider.value == widest.beam_slider.max == widest.view.beam_size == 8
    assert math.isfinite(AttentionExplorer(models, ["1 May 1999"] * 3).view.model_output.score)


def test_a_blank_dropdown_translates_nothing_new(explorer, task):
    """The dropdown shows a blank while typed text is translated; a blank set by code (or
    a cleared selection) is not a pick, so the view stays as it was."""
    before = explorer.view
    explorer.sentence_picker.value = None
    assert explorer.view is before and explorer.view.sentence == task.test_sources[0]


def test_many_unknown_words_are_named_up_to_eight_then_counted():
    from helpers.explorer import ExplorerView

    def note(words):
        [line] = ExplorerView("a sentence", "m", 1, unknown_words=words).notes
        return line

    ten = [f"w{i}" for i in range(10)]
    assert note([*ten, "w0"]).startswith("11 unknown words (never seen in training")
    assert note([*ten, "w0"]).endswith("'w0', 'w1', 'w2', 'w3', 'w4', 'w5', 'w6', 'w7' and 2 more")
    assert note(ten[:8]).endswith("'w6', 'w7'")  # all eight named, nothing more to count
    assert note(["w0"]).startswith("1 unknown word (")


def test_plot_view_wraps_its_title_to_the_figure_and_grows_by_its_lines(models, task):
    """The static view's title is the model, beam, sentence and translation, wrapped at
    11 characters per inch of figure, with each note shortened to one such line; the
    figure is the heatmap's size plus 0.2 inch per title line."""

    name = "Luong (general attention), trained for five epochs on the dates task"
    explorer = AttentionExplorer({name: models["luong"]}, task.test_sources[:2], beam_size=2)
    sentence = "ÄÖÜ€ß½ 2001"  # six characters the model never saw; a 6.45-inch figure
    view = explorer.explain(sentence)
    figure = explorer.plot_view(view)
    lines = figure.axes[0].get_title().split("\n")
    output = view.model_output
    width, height = attention_figure_size(len(output.source_tokens), len(output.output_tokens))
    characters = int(width * 11)
    assert len(lines) == 3  # the heading on two lines, then the unknown-words note
    assert all(len(line) <= characters for line in lines)
    heading = f"{name}, beam 2:  {sentence}  →  {view.translation.text}"
    assert len(heading) > characters
    assert " ".join(lines[:2]).split() == heading.split()  # every word, in order
    assert len(view.notes[0]) > characters and lines[2].endswith("[...]")
    assert figure.get_size_inches() == pytest.approx((width, height + 0.2 * 3))
    plt.close(figure)


def test_the_tick_plan_labels_every_tick_while_there_is_room_then_thins_them():

    assert tick_label_plan(0, 100.0) == (1, LABEL_POINTS)  # nothing to label
    room_each = LABEL_POINTS * LABEL_SPACING  # 11.7 points: a 9-point label fits
    assert tick_label_plan(10, 10 * room_each) == (1, LABEL_POINTS)
    step, size = tick_label_plan(10, 10 * 10.0)  # shrunk, not thinned
    assert step == 1 and size == pytest.approx(10.0 / LABEL_SPACING)
    assert MIN_LABEL_POINTS <= size < LABEL_POINTS
    step, size = tick_label_plan(10, 10 * 5.0)  # 5 points a tick: every 2nd, at 7.7 points
    assert step == 2 and size == pytest.approx(2 * 5.0 / LABEL_SPACING)


@pytest.mark.parametrize(
    ("points_per_token", "rotation"), [(14.0, 60), (13.55, 60), (13.45, 90), (12.0, 90)]
)
def test_source_labels_slant_only_where_a_slanted_label_has_room(points_per_token, rotation):
    """A label slanted at 60° needs 1/sin 60° ≈ 1.15 times the room of an upright one
    (13.51 points at 9 pt, against 11.7): with less per token the labels stand upright
    at full size rather than slant at a smaller one."""
    from matplotlib.figure import Figure

    tokens = [f"w{i}" for i in range(20)]
    width_points = 20 * points_per_token / LAYOUT_MARGIN
    figure = Figure(figsize=(width_points / 72, 3))
    ax = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    plot_attention(random_attention(3, 20), tokens, ["a", "b", "c"], ax=ax, colorbar=False)
    report = label_report(ax)
    assert report["x"]["rotation"] == rotation
    assert report["x"]["count"] == 20 and report["x"]["smallest"] == 9


def test_gold_cells_are_outlined_and_only_with_gold():
    from matplotlib.patches import Rectangle

    gold = torch.zeros(3, 4)
    gold[0, 1] = gold[2, 3] = 1
    outlined = plot_attention(random_attention(3, 4), list("abcd"), list("xyz"), gold=gold)
    boxes = [patch for patch in outlined.patches if isinstance(patch, Rectangle)]
    assert sorted(box.get_xy() for box in boxes) == [(0.5, -0.5), (2.5, 1.5)]
    assert {(box.get_width(), box.get_height(), box.get_fill()) for box in boxes} == {
        (1, 1, False)  # exactly one cell, outlined: the weight under it stays visible
    }
    plain = plot_attention(random_attention(3, 4), list("abcd"), list("xyz"))
    assert [patch for patch in plain.patches if isinstance(patch, Rectangle)] == []
    # In a grid, an item's optional fourth member is its gold matrix.
    grid = plot_attention_grid(
        [(random_attention(3, 4), list("abcd"), list("xyz"), gold)] * 2, columns=2
    )
    panels = [ax for ax in grid.axes if ax.get_label() != "<colorbar>"]
    assert [sum(isinstance(p, Rectangle) for p in ax.patches) for ax in panels] == [2, 2]
    plt.close("all")


def test_a_thinned_axis_keeps_a_minor_tick_per_token_and_says_which_are_labelled():
    """At 5 points a token a 7-point label fits every 2nd token only (the tick plan
    above): on both axes every token keeps a small tick, and each axis title says which
    are labelled."""
    from matplotlib.figure import Figure

    tokens = [f"w{i}" for i in range(20)]
    side = 20 * 5.0 / LAYOUT_MARGIN / 72  # inches
    figure = Figure(figsize=(side, side))
    ax = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    plot_attention(random_attention(20, 20), tokens, tokens, ax=ax, colorbar=False)
    assert list(ax.get_xticks()) == list(ax.get_yticks()) == list(range(0, 20, 2))
    # The unlabelled tokens' small ticks (matplotlib hides a minor tick under a major one).
    assert (
        list(ax.get_xticks(minor=True)) == list(ax.get_yticks(minor=True)) == list(range(1, 20, 2))
    )
    assert ax.get_xlabel() == "source token (attended to); every 2nd labelled"
    assert ax.get_ylabel() == "output token (being produced); every 2nd labelled"


@pytest.mark.parametrize(
    ("number", "ordinal"),
    [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"), (13, "13th")]
    + [(21, "21st"), (22, "22nd"), (23, "23rd"), (111, "111th"), (112, "112th")],
)
def test_axis_titles_name_the_labelled_ticks_in_english_ordinals(number, ordinal):

    assert _ordinal(number) == ordinal


def test_a_new_heatmap_grows_half_an_inch_a_token_between_its_floor_and_its_cap():

    assert attention_figure_size(1, 1) == (3.0, 2.5)  # a one-word sentence stays legible
    assert attention_figure_size(10, 10) == pytest.approx((0.45 * 10 + 1.5, 0.4 * 10 + 1.0))
    assert attention_figure_size(200, 200) == (MAX_FIGURE_WIDTH, MAX_FIGURE_HEIGHT)


def test_the_axes_room_is_measured_in_points_at_72_per_inch():
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.0, 4.0))
    ax = figure.add_axes((0.1, 0.2, 0.5, 0.25))
    assert _axes_size_points(ax) == pytest.approx((0.5 * 5.0 * 72, 0.25 * 4.0 * 72))


def test_a_grid_with_an_odd_number_of_maps_leaves_the_last_panel_blank():

    items = [(torch.eye(3), list("abc"), list("xyz"))] * 3
    figure = plot_attention_grid(items, columns=2, cell_size=(4.0, 3.0))
    panels = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert [len(ax.images) for ax in panels] == [1, 1, 1, 0]
    assert not panels[3].axison
    assert tuple(figure.get_size_inches()) == (2 * 4.0, 2 * 3.0)  # one cell per panel
    plt.close(figure)


def test_a_grid_of_one_map_is_a_grid_too():

    figure = plot_attention_grid([(torch.eye(3), list("abc"), list("xyz"))], columns=1)
    panels = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert [len(ax.images) for ax in panels] == [1]
    plt.close(figure)


def test_an_all_zero_map_on_its_own_scale_still_gets_a_valid_colour_range():
    """``vmax=None`` scales to the map's largest weight; a map of zeros (a fully masked
    row block, say) would give the range 0–0, so it falls back to 0–1."""
    ax = plot_attention(torch.zeros(2, 3), list("abc"), list("xy"), vmax=None)
    assert ax.images[0].get_clim() == (0.0, 1.0)
    plt.close(ax.figure)
    ax = plot_attention(torch.full((2, 3), 0.5), list("abc"), list("xy"), vmax=None)
    assert ax.images[0].get_clim() == (0.0, 0.5)
    plt.close(ax.figure)


def test_figures_say_what_is_wrong_with_their_input():
    """Bare IndexError, ZeroDivisionError or a pandas KeyError before; a gold matrix of
    the wrong shape was drawn clipped or misplaced without a word."""
    item = (torch.full((2, 3), 1 / 3), ["a", "b", "c"], ["x", "y"])
    for kwargs, message in [
        ({"titles": ["one"]}, "1 titles for 3 maps"),
        ({"columns": 0}, "columns must be a whole number >= 1, got 0"),
        ({"columns": 1.5}, "columns must be a whole number >= 1, got 1.5"),
    ]:
        with pytest.raises(ValueError, match=message):
            plot_attention_grid([item, item, item], **kwargs)
    with pytest.raises(ValueError, match=r"items\[1\] has 2 members"):
        plot_attention_grid([item, item[:2]])
    for gold in ([[1, 0], [0, 1], [0, 0]], [[1, 0, 0]] * 3, [1, 0, 0]):
        with pytest.raises(ValueError, match=r"gold has shape .* but attention has \(2, 3\)"):
            plot_attention(*item, gold=gold)
    # Fewer rows: an output longer than its reference has no gold past its end.
    ax = plot_attention(*item, gold=[[0, 1, 0]], colorbar=False)
    assert [(patch.get_x(), patch.get_y()) for patch in ax.patches] == [(0.5, -0.5)]
    plt.close("all")
    for per_panel_scale in (False, True):
        with pytest.raises(ValueError, match=r"attention is empty, shape \(0, 3\)"):
            plot_attention_grid(
                [(torch.zeros(0, 3), ["a", "b", "c"], []), item], per_panel_scale=per_panel_scale
            )
    plt.close("all")
    from helpers.training import TrainingHistory

    with pytest.raises(ValueError, match="'unfinished' has no epochs to plot"):
        plot_loss_curves({"unfinished": TrainingHistory()})
    # One history, or a list of them, is not a {name: history} dict (an AttributeError
    # about .items before).
    for not_a_dict in (TrainingHistory(), [TrainingHistory()]):
        with pytest.raises(
            TypeError, match=r"for one run: plot_loss_curves\(\{'model': history\}\)"
        ):
            plot_loss_curves(not_a_dict)
