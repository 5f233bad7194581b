"""What a reader sees: the notebooks run in JupyterLab, in a real browser, show their figures.

`make lab` once exported MPLBACKEND=Agg into JupyterLab and no figure rendered anywhere; the
kernels ran fine and nbval (which only reads outputs) saw nothing wrong. These tests start
JupyterLab through `make lab` itself, run notebooks from its Run menu in Chromium, and look
at the page: every cell that calls ``plt.show()`` must show an image, notebook 05's explorer
must answer a reader's input, and no error may appear anywhere.

Run them alone with ``.venv/bin/pytest tests/ui`` (needs a system Chromium:
``apt-get install chromium``); ``make test`` runs them last. Screenshots of every step are
left in test-artifacts/ui/<test>/ (or $PAYING_ATTENTION_ARTIFACTS/<test>/).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest

# Bounded waits, in seconds (the machine may be slow and busy; nothing waits forever).
KERNEL_START = 240
QUICK_NOTEBOOK_RUN = 1800  # 02 loads the model its nbval run kept (trains it, 15 s+, when missing)
VISUALIZATION_RUN = 2400  # 05 loads 04's models (trains them, minutes, when they are missing)
WIDGET_UPDATE = 240
POLL = 1.0
SHOW = "plt.show()"
CODE_CELLS = ".jp-NotebookPanel .jp-Notebook .jp-Cell.jp-CodeCell"

NOTEBOOK_STATE = """
() => {
  const panel = [...document.querySelectorAll('.jp-NotebookPanel')]
    .find((p) => !p.classList.contains('lm-mod-hidden'));
  if (!panel) return null;
  const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  const cells = [...panel.querySelectorAll('.jp-Notebook .jp-Cell.jp-CodeCell')];
  return {
    status: indicator ? indicator.getAttribute('data-status') : null,
    prompts: cells.map((c) => {
      const prompt = c.querySelector('.jp-InputArea-prompt');
      return prompt ? prompt.textContent.trim() : '';
    }),
  };
}
"""

# Errors a reader would see: tracebacks (error outputs render as stderr), anything on stderr
# that names an error, and the front end's own "could not render this" messages.
PAGE_ERRORS = r"""
() => {
  const found = [];
  for (const output of document.querySelectorAll('.jp-OutputArea-output')) {
    const text = output.textContent || '';
    const mime = output.getAttribute('data-mime-type') || '';
    if (mime === 'application/vnd.jupyter.stderr' && /Traceback|Error/.test(text)) {
      found.push(text.slice(0, 3000));
    } else if (/Error displaying widget|Error rendering|No renderer could be found|Javascript Error/
        .test(text)) {
      found.push(text.slice(0, 3000));
    }
  }
  for (const dialog of document.querySelectorAll('.jp-Dialog')) {
    if (/error|failed/i.test(dialog.textContent || '')) found.push(dialog.textContent.slice(0, 3000));
  }
  return found;
}
"""

# The images each code cell shows, in order: how many and whether they decoded.
CELL_IMAGES = """
() => {
  const panel = [...document.querySelectorAll('.jp-NotebookPanel')]
    .find((p) => !p.classList.contains('lm-mod-hidden'));
  const cells = [...panel.querySelectorAll('.jp-Notebook .jp-Cell.jp-CodeCell')];
  return cells.map((c) => [...c.querySelectorAll('.jp-OutputArea .jp-RenderedImage img')]
    .map((img) => ({loaded: img.complete && img.naturalWidth > 0, width: img.naturalWidth,
                    src: (img.getAttribute('src') || '').slice(0, 40)})));
}
"""


class Steps:
    """Numbered full-page screenshots: the visual record of one test."""

    def __init__(self, page, folder: Path):
        self.page, self.folder, self.count = page, folder, 0

    def shot(self, name: str, element=None) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        # Let the browser paint first: after a long scroll, cells JupyterLab renders lazily
        # (content-visibility) can otherwise come out blank.
        self.page.evaluate(
            "() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))"
        )
        self.page.wait_for_timeout(500)
        if element is not None:
            element.screenshot(path=str(path), timeout=60_000)
        else:
            self.page.screenshot(path=str(path), full_page=True, timeout=60_000)
        return path


def code_sources(notebook: Path) -> list[str]:
    cells = json.loads(notebook.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def wait_for(condition, timeout: float, describe, poll: float = POLL):
    """Call ``condition()`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s: {describe()}")
        time.sleep(poll)


def assert_no_errors(page):
    errors = page.evaluate(PAGE_ERRORS)
    assert not errors, "errors on the page:\n\n" + "\n\n".join(errors)


def dismiss_notifications(page) -> None:
    """Answer JupyterLab's "get notified about official Jupyter news?" toast, if shown."""
    no = page.locator(
        ".jp-Notification-Toast-default .jp-toast-button", has_text=re.compile("^No$")
    )
    if no.count():
        no.first.click(timeout=10_000)


def kernel_idle(page, lab, name: str) -> bool:
    """Idle for the server (the kernel's own status messages) and for the notebook's
    toolbar indicator alike."""
    state = page.evaluate(NOTEBOOK_STATE) or {}
    return state.get("status") == "idle" and lab.kernel_state(name) == "idle"


def open_notebook(page, lab, name: str, steps: Steps):
    """Open ``name`` in a fresh, empty workspace and wait until it shows all its code cells
    and its kernel is idle."""
    workspace = f"ui-{uuid.uuid4().hex[:8]}"
    page.goto(
        f"{lab.url}/lab/workspaces/{workspace}/tree/{name}?token={lab.token}",
        timeout=120_000,
    )
    expected = len(code_sources(lab.notebook_dir / name))
    wait_for(
        lambda: (
            len((page.evaluate(NOTEBOOK_STATE) or {}).get("prompts", [])) == expected
            and kernel_idle(page, lab, name)
        ),
        KERNEL_START,
        lambda: (
            f"{name} not open with an idle kernel: page {page.evaluate(NOTEBOOK_STATE)}, "
            f"server {lab.kernel_state(name)!r}"
        ),
    )
    dismiss_notifications(page)
    steps.shot("opened")


def figure_cells(lab, name: str) -> list[int]:
    """Indices (among code cells) of the cells whose source calls plt.show()."""
    return [i for i, source in enumerate(code_sources(lab.notebook_dir / name)) if SHOW in source]


def blank_figures(page, cells: list[int]) -> list[int]:
    """The cells among ``cells`` that have run (a number in their prompt) but show no image."""
    prompts = (page.evaluate(NOTEBOOK_STATE) or {}).get("prompts", [])
    images = page.evaluate(CELL_IMAGES)
    return [
        i
        for i in cells
        if i < len(prompts) and re.fullmatch(r"\[\d+\]:", prompts[i]) and not images[i]
    ]


def run_all_cells(page, lab, name: str, timeout: float, steps: Steps) -> None:
    """Run ▸ Run All Cells, as a reader does, and wait until every code cell has run.

    Fails at once on an error output, and as soon as a plt.show() cell has finished without
    an image (its outputs arrive before its execution count): no need to wait for the rest.
    """
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^\s*Run\s*$")).click()
    item = page.locator(".lm-Menu-item:not(.lm-mod-disabled)").filter(
        has=page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^\s*Run All Cells\s*$"))
    )
    item.wait_for(timeout=30_000)
    steps.shot("run-menu")
    item.click()
    started = time.monotonic()
    expected_figures = figure_cells(lab, name)
    sources = code_sources(lab.notebook_dir / name)
    settled = {"count": 0, "blank": {}}

    def finished():
        state = page.evaluate(NOTEBOOK_STATE)
        errors = page.evaluate(PAGE_ERRORS)
        if errors:  # Run All stops at an error: no point waiting for the rest
            steps.shot("error")
            pytest.fail(f"{name}: error while running:\n\n" + "\n\n".join(errors))
        blank = settled["blank"]
        for index in blank_figures(page, expected_figures):
            blank[index] = blank.get(index, 0) + 1
            if blank[index] >= 10:  # ~10 s after the cell ended: no image is coming
                page.locator(CODE_CELLS).nth(index).scroll_into_view_if_needed(timeout=30_000)
                steps.shot(f"blank-figure-cell-{index}")
                pytest.fail(
                    f"{name}: code cell {index} called plt.show() and ran, but shows no image "
                    "(an MPLBACKEND=Agg leaking into the kernel blanks every figure)"
                )
        done = (
            state is not None
            and len(state["prompts"]) == len(sources)
            and all(
                re.fullmatch(r"\[\d+\]:", prompt)
                for prompt, source in zip(state["prompts"], sources, strict=True)
                if source.strip()  # JupyterLab does not run (or number) an empty cell
            )
            and kernel_idle(page, lab, name)
        )
        settled["count"] = settled["count"] + 1 if done else 0
        return settled["count"] >= 3  # idle and complete on three polls in a row

    wait_for(
        finished,
        timeout,
        lambda: f"{name} still running: {page.evaluate(NOTEBOOK_STATE)}",
    )
    print(f"{name}: Run All Cells took {time.monotonic() - started:.0f} s")
    steps.shot("ran")


def assert_figures_rendered(page, lab, name: str, steps: Steps) -> None:
    """Every code cell whose source calls plt.show() shows at least one decoded image."""
    sources = code_sources(lab.notebook_dir / name)
    expected = figure_cells(lab, name)
    assert expected, f"{name} has no plt.show() cell: the wrong notebook for this test"

    def all_loaded():
        images = page.evaluate(CELL_IMAGES)
        assert len(images) == len(sources), (len(images), len(sources))
        return all(images[i] and all(img["loaded"] for img in images[i]) for i in expected)

    wait_for(
        all_loaded,
        60,
        lambda: (
            f"{name}: cells {expected} should show images; page has "
            f"{[len(cell) for cell in page.evaluate(CELL_IMAGES)]} images per code cell "
            "(MPLBACKEND=Agg leaking into the kernel blanks every figure)"
        ),
    )
    cells = page.locator(CODE_CELLS)
    for index in expected:
        cell = cells.nth(index)
        cell.locator(".jp-RenderedImage img").first.scroll_into_view_if_needed(timeout=30_000)
        # The figure's own output area only: a full-page shot per figure (the page as a
        # whole is in "ran") cost about a second each and showed nothing more.
        steps.shot(f"figure-cell-{index}", element=cell.locator(".jp-OutputArea").first)


def shutdown_kernels(lab) -> None:
    for kernel in lab.api("/api/kernels") or []:
        lab.api(f"/api/kernels/{kernel['id']}", method="DELETE", timeout=30)


# --- a quick notebook: figures render at all ------------------------------------------------


def run_and_check_figures(page, lab, name: str, timeout: float, steps: Steps) -> None:
    """Open ``name``, run all its cells, and check every plt.show() drew an image and no
    cell shows an error: what a reader does first with any notebook."""
    open_notebook(page, lab, name, steps)
    run_all_cells(page, lab, name, timeout, steps)
    assert_figures_rendered(page, lab, name, steps)
    assert_no_errors(page)


def test_figures_render_in_a_quick_notebook(lab, page, artifacts):
    """Notebook 02 (the quickest with figures: one small model on synthetic dates) run from
    JupyterLab's Run menu shows an image under each of its plt.show() cells."""
    name = "02_bahdanau_attention.ipynb"
    steps = Steps(page, artifacts)
    try:
        run_and_check_figures(page, lab, name, QUICK_NOTEBOOK_RUN, steps)
    finally:
        shutdown_kernels(lab)


# --- notebook 05: figures and the interactive explorer --------------------------------------

# The explorer (helpers.explorer.AttentionExplorer) is made of standard ipywidgets, each with a
# DOM class of its own (attention-explorer-*). Each part is found by that class first, then by
# widget type and description label, so that small changes of layout do not break the test.
EXPLORER_PARTS = r"""
(root) => {
  const part = (cls, widget, label) => root.querySelector('.' + cls)
    || [...root.querySelectorAll(widget)].find((w) => {
      const description = w.querySelector('.widget-label');
      return label.test(description ? description.textContent.trim() : '');
    })
    || null;
  return {
    translation: part('attention-explorer-translation', '.widget-html', /translation/i),
    message: part('attention-explorer-message', '.widget-html', /^$/),
    heatmap: part('attention-explorer-heatmap', '.widget-output', /^$/),
    beam: part('attention-explorer-beam', '.widget-slider, .widget-hslider', /beam/i),
    model: part('attention-explorer-model', '.widget-toggle-buttons', /model/i),
    text: part('attention-explorer-text', '.widget-text', /text/i),
    sentence: part('attention-explorer-sentence', '.widget-dropdown', /sentence/i),
  };
}
"""

EXPLORER_STATE = (
    "(root) => { const parts = ("
    + EXPLORER_PARTS.strip()
    + r""")(root);
  const content = (el) => el
    ? (el.querySelector('.widget-html-content') || el).textContent.trim() : '';
  const images = parts.heatmap
    ? [...parts.heatmap.querySelectorAll('.jp-RenderedImage img')] : [];
  const fresh = images.filter((img) => !img.hasAttribute('data-ui-test-seen'));
  const pick = fresh.length ? fresh[fresh.length - 1] : images[images.length - 1];
  const readout = parts.beam && parts.beam.querySelector('.widget-readout');
  const active = parts.model
    ? [...parts.model.querySelectorAll('button.mod-active')].map((b) => b.textContent.trim())
    : [];
  const box = parts.text && parts.text.querySelector('input');
  const select = parts.sentence && parts.sentence.querySelector('select');
  return {
    found: Object.keys(parts).filter((k) => parts[k]),
    images: images.length,
    fresh: fresh.length,
    src: pick ? pick.getAttribute('src') || '' : '',
    loaded: !!pick && pick.complete && pick.naturalWidth > 0,
    visible: !!pick && pick.getClientRects().length > 0,
    text: content(parts.translation),
    message: content(parts.message),
    beam: readout ? readout.textContent.trim() : null,
    model: active.join(','),
    typed: box ? box.value : null,
    picked: select ? select.value : null,
  };
}"""
)

MARK_SEEN = """
(root) => root.querySelectorAll('.jp-RenderedImage img').forEach(
  (img) => img.setAttribute('data-ui-test-seen', '1'))
"""

# What the explorer's message line says when it could not translate.
PROBLEM = re.compile(r"cannot translate|too long|nothing to translate|error", re.IGNORECASE)


class Explorer:
    """Notebook 05's explorer, seen and driven from the page."""

    def __init__(self, page, lab, name: str, steps: Steps):
        self.page, self.lab, self.name, self.steps = page, lab, name, steps
        panel = page.locator(".jp-NotebookPanel .jp-Notebook")
        root = panel.locator(".attention-explorer")
        if root.count() != 1:  # no class of its own: the output of the cell with its controls
            root = (
                panel.locator(".jp-Cell.jp-CodeCell")
                .filter(has=page.locator(".widget-toggle-buttons"))
                .filter(has=page.locator(".widget-slider, .widget-hslider"))
                .locator(".jp-Cell-outputWrapper")
            )
        assert root.count() == 1, f"{name} should show exactly one explorer, found {root.count()}"
        self.root = root.first

    def state(self) -> dict:
        return self.root.evaluate(EXPLORER_STATE)

    def part(self, css_class: str, widget: str, description: str):
        """One of the explorer's widgets: by its own class, else by type and description."""
        own = self.root.locator(f".{css_class}")
        if own.count():
            return own.first
        return (
            self.root.locator(widget)
            .filter(
                has=self.page.locator(
                    ".widget-label", has_text=re.compile(description, re.IGNORECASE)
                )
            )
            .first
        )

    def shot(self, what: str) -> None:
        self.root.scroll_into_view_if_needed(timeout=30_000)
        slug = re.sub(r"\W+", "-", what).strip("-")
        self.steps.shot(slug, element=self.root)

    def act(self, what: str, action, timeout: float = WIDGET_UPDATE) -> tuple[dict, dict]:
        """Do ``action``, wait until the explorer shows a newly rendered, decoded heatmap, the
        kernel is idle and the view holds still; return the states before and after."""
        before = self.state()
        self.root.evaluate(MARK_SEEN)
        action()
        settled = {"count": 0, "state": None}

        def redrawn():
            state = self.state()
            done = (
                state["fresh"] > 0
                and state["loaded"]
                and kernel_idle(self.page, self.lab, self.name)
            )
            same = done and state == settled["state"]
            settled["count"], settled["state"] = (
                (settled["count"] + 1 if same else int(done)),
                state,
            )
            return settled["count"] >= 3 and state  # the same settled view on three polls

        after = wait_for(
            redrawn,
            timeout,
            lambda: (
                f"the explorer did not redraw after {what}: before {summary(before)}, "
                f"now {summary(self.state())}"
            ),
        )
        self.shot(what)
        assert_no_errors(self.page)
        assert after["text"], f"no translation shown after {what}: {summary(after)}"
        assert not PROBLEM.search(after["message"]), f"after {what}: {after['message']}"
        return before, after

    def set_beam(self, value: int) -> None:
        """Move the beam slider as a reader can: focus its handle and use the arrow keys,
        falling back to typing into its readout."""
        slider = self.part("attention-explorer-beam", ".widget-slider, .widget-hslider", "beam")
        handle = slider.locator(".noUi-handle").first
        readout = slider.locator(".widget-readout").first
        current = int(readout.text_content().strip())
        handle.focus()
        key = "ArrowRight" if value > current else "ArrowLeft"
        for _ in range(abs(value - current)):
            handle.press(key)
        if readout.text_content().strip() != str(value):
            readout.click()
            self.page.keyboard.press("Control+A")
            self.page.keyboard.type(str(value))
            self.page.keyboard.press("Enter")


def summary(state: dict) -> dict:
    return {**state, "src": f"{state['src'][:30]}…({len(state['src'])} chars)"}


def test_visualization_notebook_and_its_explorer(lab, page, artifacts):
    """Notebook 05 shows every figure, and its explorer answers a reader's input: a typed
    sentence, the other model, another beam width, a sentence from the list."""
    name = "05_visualization.ipynb"
    steps = Steps(page, artifacts)
    try:
        run_and_check_figures(page, lab, name, VISUALIZATION_RUN, steps)

        explorer = Explorer(page, lab, name, steps)
        initial = wait_for(
            lambda: (lambda s: s if s["loaded"] and s["text"] else None)(explorer.state()),
            WIDGET_UPDATE,
            lambda: f"the explorer shows no translation and heatmap: {summary(explorer.state())}",
        )
        explorer.shot("explorer")
        assert initial["visible"], f"the explorer's heatmap is not visible: {summary(initial)}"
        assert not PROBLEM.search(initial["message"]), initial["message"]

        # 1. a sentence typed into the text box and submitted with Enter
        box = explorer.part("attention-explorer-text", ".widget-text", "text").locator("input")
        sentence = "I like to read books."

        def type_sentence():
            box.click()
            box.fill(sentence)
            box.press("Enter")

        before, typed = explorer.act("typed sentence", type_sentence)
        assert typed["src"] != before["src"], "the heatmap did not change for a new sentence"
        assert typed["text"] != before["text"], ("translation unchanged", before["text"])

        # 2. the other model
        models = explorer.part("attention-explorer-model", ".widget-toggle-buttons", "model")
        other = next(m for m in ("bahdanau", "luong") if m != typed["model"])
        button = models.locator("button", has_text=re.compile(rf"^\s*{other}\s*$", re.I)).first
        before, switched = explorer.act(f"model {other}", button.click)
        assert switched["model"] == other, switched["model"]
        assert switched["src"] != before["src"], "the heatmap did not change with the model"
        assert switched["typed"] == sentence, "the typed sentence should stay"

        # 3. another beam width
        target = 1 if int(switched["beam"]) != 1 else 3
        before, beamed = explorer.act(f"beam {target}", lambda: explorer.set_beam(target))
        assert beamed["beam"] == str(target), beamed["beam"]
        assert beamed["src"] != before["src"], "the heatmap did not change with the beam"

        # 4. a sentence from the list: it wins over the typed one
        dropdown = explorer.part("attention-explorer-sentence", ".widget-dropdown", "sentence")
        select = dropdown.locator("select")
        before, picked = explorer.act("picked sentence", lambda: select.select_option(index=1))
        assert picked["text"] != before["text"], ("translation unchanged", before["text"])
        assert picked["src"] != before["src"], "the heatmap did not change for a new sentence"
        assert not picked["typed"], "picking a sentence should clear the text box"

        assert_no_errors(page)
        steps.shot("end")
    finally:
        shutdown_kernels(lab)
