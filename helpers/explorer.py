"""An interactive attention explorer for notebooks: pick or type a sentence, see where the
model looked while translating it.

    >>> explorer = AttentionExplorer({"luong": luong, "bahdanau": bahdanau}, test_sentences)
    >>> explorer            # the last line of a cell: shows the widgets

Everything is a standard ipywidget, stacked in one ``VBox`` (``explorer.widget``, DOM class
``attention-explorer``). Each part is an attribute, has a ``description`` (the label
ipywidgets shows on its left) and a DOM class of its own:

* ``sentence_picker`` — ``Dropdown``, description "sentence", class
  ``attention-explorer-sentence``: the test sentences. Picking one clears the text box and
  translates it. It shows a blank (value ``None``) while typed text is translated, so that
  any sentence, even the one picked before, counts as a new pick.
* ``text_box`` — ``Text``, description "your text", class ``attention-explorer-text``,
  placeholder "type English, then press Enter". ``continuous_update`` is off: Enter (or
  leaving the box) submits the text.
* ``model_picker`` — ``ToggleButtons``, description "model", class
  ``attention-explorer-model``: one button per model, labelled with the dict's keys.
* ``beam_slider`` — ``IntSlider``, description "beam size", class
  ``attention-explorer-beam``: 1 (greedy) to ``max_beam_size``; translates on release.
* ``translation_line`` — ``HTML``, description "translation", class
  ``attention-explorer-translation``: "→ <the German translation>", as text.
* ``message_line`` — ``HTML``, no description, class ``attention-explorer-message``: one
  ``<div>`` per note or problem (unknown words, ``<unk>`` replaced, empty input, input too
  long); empty when there is nothing to say.
* ``heatmap`` — ``Output``, no description, class ``attention-explorer-heatmap``: the
  attention heatmap as one ``image/png`` output (in JupyterLab an
  ``.widget-output .jp-RenderedImage img``), replaced by a new image on every change. The
  title names the model and the beam, so even an unchanged translation gives a new image.

The last input used wins: a dropdown pick translates the picked sentence, a submitted text
translates the text; changing the model or the beam translates the same input again. Bad
input never raises: an empty box, a sentence longer than the model accepts or any error in
translating shows a one-line message in ``message_line`` and clears the translation and the
heatmap. Words the model never saw are counted and named; every ``<unk>`` the model writes
is replaced by the source word it attended to most (Luong et al. 2015), with a note.

Without a browser (tests, scripts): set the widgets' ``value`` and read ``explorer.view``
(an :class:`ExplorerView`), ``translation_text``, ``messages``, ``figure`` and
``heatmap_png``. :meth:`AttentionExplorer.plot_view` draws a view as a plain matplotlib
figure, for pages read without a kernel.
"""

from __future__ import annotations

import base64
import html
import io
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import ipywidgets as widgets
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from .checks import whole_number
from .data import get_tokenizer
from .decoding import (
    Translation,
    translate,
    unknown_source_tokens,
    with_unknown_tokens_replaced,
)
from .models import Seq2Seq
from .viz import attention_figure_size, plot_attention

PLACEHOLDER = "type English, then press Enter"
HEATMAP_DPI = 100  # the inline backend's: the explorer's image matches the notebook's figures
EMPTY_INPUT_MESSAGE = (
    "Nothing to translate: type an English sentence and press Enter, or pick one from the list."
)


@dataclass
class ExplorerView:
    """Everything one state of the explorer shows.

    Attributes:
        sentence: the English input (``None`` when nothing is selected).
        model_name, beam_size: the settings it was translated with.
        model_output: the model's own translation, ``<unk>`` included; its ``attention`` is
            ``(len(output_tokens), len(source_tokens))``. ``None`` when there is a problem.
        translation: ``model_output`` after ``<unk>`` replacement (the same when nothing
            was replaced); this is the text the reader sees.
        unknown_words: source tokens outside the model's vocabulary (never seen in
            training, or too rarely), once per occurrence.
        replaced: ``(output row, source word)`` for every ``<unk>`` that was replaced.
        problem: a one-line reason there is no translation, or ``None``.
    """

    sentence: str | None
    model_name: str
    beam_size: int
    model_output: Translation | None = None
    translation: Translation | None = None
    unknown_words: list[str] = field(default_factory=list)
    replaced: list[tuple[int, str]] = field(default_factory=list)
    problem: str | None = None

    @property
    def notes(self) -> list[str]:
        """One line per thing the reader should know about this translation."""
        notes = []
        if self.unknown_words:
            count = len(self.unknown_words)
            distinct = list(dict.fromkeys(self.unknown_words))
            shown = ", ".join(f"'{word}'" for word in distinct[:8])
            more = f" and {len(distinct) - 8} more" if len(distinct) > 8 else ""
            notes.append(
                f"{count} unknown word{'s' if count > 1 else ''} (never seen in training, "
                f"read as <unk>): {shown}{more}"
            )
        if self.replaced:
            words = ", ".join(f"'{word}'" for _, word in self.replaced)
            notes.append(
                f"<unk> in the output replaced by the source word it attended to most: {words}"
            )
        return notes

    @property
    def messages(self) -> list[str]:
        """What the message line shows: the problem, or else the notes."""
        return [self.problem] if self.problem else self.notes

    def output_labels(self) -> list[str]:
        """Row labels for the heatmap: the model's tokens, ``<unk>→word`` where replaced."""
        if self.model_output is None:
            return []
        labels = list(self.model_output.output_tokens)
        for row, word in self.replaced:
            labels[row] = f"{labels[row]}→{word}"
        return labels


class AttentionExplorer:
    """Pick or type a sentence, choose a model and a beam width, see the translation and
    its attention heatmap. See the module's docstring for the widgets.

    Args:
        models: display name → trained :class:`Seq2Seq` (with vocabularies).
        sentences: the dropdown's sentences (duplicates dropped); the first one is shown
            first.
        model: the model selected first (default: the first of ``models``).
        beam_size: the beam width selected first; max_beam_size: the slider's maximum.
        replace_unknown: replace every output ``<unk>`` by its most attended source word.
    """

    def __init__(
        self,
        models: Mapping[str, Seq2Seq],
        sentences: Sequence[str],
        model: str | None = None,
        beam_size: int = 5,
        max_beam_size: int = 8,
        replace_unknown: bool = True,
    ) -> None:
        if not isinstance(models, Mapping):
            raise TypeError(f"models must be a dict {{name: model}}, got a {type(models).__name__}")
        if not models:
            raise ValueError("the explorer needs at least one model")
        if isinstance(sentences, str):  # its letters became the dropdown's sentences
            raise TypeError(f"sentences is a str ({sentences[:30]!r}): give a list of sentences")
        sentences = list(dict.fromkeys(sentences))
        if not sentences:
            raise ValueError("the explorer needs at least one sentence for its dropdown")
        model = model if model is not None else next(iter(models))
        if model not in models:
            raise ValueError(f"unknown model {model!r}; the models are {list(models)}")
        max_beam_size = whole_number("max_beam_size", max_beam_size)
        if not 1 <= whole_number("beam_size", beam_size) <= max_beam_size:  # 2.5 became 2
            raise ValueError(f"beam_size must be between 1 and max_beam_size={max_beam_size}")
        self.models = dict(models)
        self.replace_unknown = replace_unknown
        self._input = "list"  # which input the reader used last: "list" or "typed"
        self._quiet = False  # True while the explorer itself changes a widget

        wide = widgets.Layout(width="34em")
        self.sentence_picker = widgets.Dropdown(
            options=sentences, value=sentences[0], description="sentence", layout=wide
        )
        self.text_box = widgets.Text(
            value="",
            placeholder=PLACEHOLDER,
            description="your text",
            continuous_update=False,  # submit on Enter or on leaving the box
            layout=wide,
        )
        self.model_picker = widgets.ToggleButtons(
            options=list(self.models), value=model, description="model"
        )
        self.beam_slider = widgets.IntSlider(
            value=beam_size,
            min=1,
            max=max_beam_size,
            description="beam size",
            continuous_update=False,  # one translation per release, not one per step
        )
        self.translation_line = widgets.HTML(description="translation")
        self.message_line = widgets.HTML()
        self.heatmap = widgets.Output()
        wrap = widgets.Layout(flex_flow="row wrap")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.sentence_picker, self.text_box], layout=wrap),
                widgets.HBox([self.model_picker, self.beam_slider], layout=wrap),
                self.translation_line,
                self.message_line,
                self.heatmap,
            ]
        )
        for part, name in [
            (self.widget, "attention-explorer"),
            (self.sentence_picker, "attention-explorer-sentence"),
            (self.text_box, "attention-explorer-text"),
            (self.model_picker, "attention-explorer-model"),
            (self.beam_slider, "attention-explorer-beam"),
            (self.translation_line, "attention-explorer-translation"),
            (self.message_line, "attention-explorer-message"),
            (self.heatmap, "attention-explorer-heatmap"),
        ]:
            part.add_class(name)

        self.view: ExplorerView
        self.figure: Figure | None = None  # the heatmap's figure (not pyplot's): for tests
        self.heatmap_png: bytes | None = None
        self.sentence_picker.observe(self._on_sentence_picked, names="value")
        self.text_box.observe(self._on_text_submitted, names="value")
        self.model_picker.observe(self._on_setting_changed, names="value")
        self.beam_slider.observe(self._on_setting_changed, names="value")
        self.refresh()

    # ---------------------------------------------------------------- reading the inputs

    @property
    def sentence(self) -> str | None:
        """The input the reader used last: the submitted text, or the picked sentence."""
        return self.text_box.value if self._input == "typed" else self.sentence_picker.value

    @contextmanager
    def _changing_widgets_quietly(self) -> Iterator[None]:
        """Change widgets without their observers taking it for the reader's input."""
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    def _on_sentence_picked(self, change: dict) -> None:
        if self._quiet or change["new"] is None:
            return
        self._input = "list"
        with self._changing_widgets_quietly():
            self.text_box.value = ""  # the pick wins: no stale text left in the box
        self.refresh()

    def _on_text_submitted(self, change: dict) -> None:
        if self._quiet:
            return
        self._input = "typed"
        with self._changing_widgets_quietly():
            self.sentence_picker.value = None  # so a later pick of any sentence is a change
        self.refresh()

    def _on_setting_changed(self, change: dict) -> None:
        if not self._quiet:
            self.refresh()

    # -------------------------------------------------------------------- translating

    def explain(
        self, sentence: str | None, model: str | None = None, beam_size: int | None = None
    ) -> ExplorerView:
        """Translate ``sentence`` and collect what the explorer would show; never raises
        for bad input (``view.problem`` says what is wrong). Touches no widget.

        ``model`` and ``beam_size`` default to the widgets' current settings.
        """
        model_name = model if model is not None else self.model_picker.value
        beam = beam_size if beam_size is not None else self.beam_slider.value
        view = ExplorerView(sentence=sentence, model_name=model_name, beam_size=beam)
        if sentence is None or not sentence.strip():
            view.problem = EMPTY_INPUT_MESSAGE
            return view
        seq2seq = self.models[model_name]
        try:
            length = len(get_tokenizer(seq2seq.config.source_tokenizer)(sentence))
            limit = seq2seq.config.max_source_length
            if length > limit:
                view.problem = (
                    f"Too long: {length} tokens, and the {model_name} model reads at most "
                    f"{limit}. Please shorten the sentence."
                )
                return view
            output = translate(seq2seq, sentence, beam_size=beam)
            view.model_output = view.translation = output
            view.unknown_words = unknown_source_tokens(seq2seq, output.source_tokens)
            if self.replace_unknown:
                view.translation = with_unknown_tokens_replaced(seq2seq, output)
                view.replaced = [
                    (row, new)
                    for row, (old, new) in enumerate(
                        zip(output.output_tokens, view.translation.output_tokens, strict=True)
                    )
                    if old != new
                ]
        except Exception as error:  # a reader's input must never end in a traceback
            view.model_output = view.translation = None
            view.problem = _one_line(f"Cannot translate this: {error}")
        return view

    def refresh(self) -> ExplorerView:
        """Translate the current input with the current settings and update every widget."""
        self.view = self.explain(self.sentence)
        translation = self.view.translation
        self.translation_line.value = (
            "" if translation is None else f"→ <b>{html.escape(translation.text)}</b>"
        )
        colour = _PROBLEM_COLOUR if self.view.problem else _NOTE_COLOUR
        self.message_line.value = "".join(
            f'<div style="color: {colour}">{html.escape(message)}</div>'
            for message in self.view.messages
        )
        self._show_heatmap()
        return self.view

    # ---------------------------------------------------------------------- drawing

    def _draw(self, figure: Figure, view: ExplorerView, title: str) -> None:
        output = view.model_output
        assert output is not None
        ax = figure.subplots()
        plot_attention(output.attention, output.source_tokens, view.output_labels(), ax=ax)
        ax.set_title(title, fontsize=10)
        figure.tight_layout()

    def _show_heatmap(self) -> None:
        view = self.view
        if view.model_output is None:
            self.figure, self.heatmap_png = None, None
            self.heatmap.outputs = ()
            return
        size = attention_figure_size(
            len(view.model_output.source_tokens), len(view.model_output.output_tokens)
        )
        # A Figure of its own, not pyplot's: nothing for the inline backend to show twice
        # at the end of a cell, and no pyplot state shared with the reader's own figures.
        figure = Figure(figsize=size, dpi=HEATMAP_DPI)
        # The model and beam in the title: every change gives a new image, even when the
        # translation stays the same, so the reader sees that it was redone.
        self._draw(figure, view, f"{view.model_name}, beam {view.beam_size}")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=HEATMAP_DPI)
        self.figure, self.heatmap_png = figure, buffer.getvalue()
        width, height = (round(inches * HEATMAP_DPI) for inches in figure.get_size_inches())
        self.heatmap.outputs = (
            {
                "output_type": "display_data",
                "data": {
                    "image/png": base64.b64encode(self.heatmap_png).decode("ascii"),
                    "text/plain": f"<attention heatmap, {width}×{height} px>",
                },
                "metadata": {},
            },
        )

    def plot_view(self, view: ExplorerView | str | None = None) -> Figure:
        """A view as one pyplot figure (show it with ``plt.show()``): the model, the beam,
        the sentence and its translation as the title, the notes below it, the heatmap. For
        pages read without a kernel, where the widgets cannot run.

        Args:
            view: an :class:`ExplorerView`, a sentence to explain with the current settings,
                or ``None`` for what the explorer shows now.

        Raises:
            ValueError: the view has no translation (its ``problem`` says why).
        """
        if view is None:
            view = self.view
        elif isinstance(view, str):
            view = self.explain(view)
        if view.model_output is None or view.translation is None:
            raise ValueError(f"nothing to draw: {view.problem}")
        width, height = attention_figure_size(
            len(view.model_output.source_tokens), len(view.model_output.output_tokens)
        )
        heading = (
            f"{view.model_name}, beam {view.beam_size}:  {view.sentence}  →  "
            f"{view.translation.text}"
        )
        lines = textwrap.wrap(heading, int(width * 11))
        lines += [textwrap.shorten(note, int(width * 11)) for note in view.notes]
        figure = plt.figure(figsize=(width, height + 0.2 * len(lines)))
        self._draw(figure, view, "\n".join(lines))
        return figure

    # ---------------------------------------------------------------- for readers and tests

    @property
    def translation_text(self) -> str:
        """The translation line as plain text ("→ …"), "" when there is none."""
        translation = self.view.translation
        return "" if translation is None else f"→ {translation.text}"

    @property
    def messages(self) -> list[str]:
        """The message line's lines, as plain text."""
        return self.view.messages

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


# Theme colours of JupyterLab, with fallbacks for other front ends.
_PROBLEM_COLOUR = "var(--jp-error-color1, #c62828)"
_NOTE_COLOUR = "var(--jp-ui-font-color2, #616161)"


def _one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    return textwrap.shorten(" ".join(text.split()), limit, placeholder=" …")
