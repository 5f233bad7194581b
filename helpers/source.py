"""The real source of a ``helpers`` class or function, shown in a notebook.

The notebooks teach each layer with the code that the rest of the series runs, not a
copy of it: a cell calls :func:`show_source`, which reads the code from the installed
package. JupyterLab shows it highlighted, headed by the file it comes from; the
plain-text form is the same code, so a notebook cell marked ``# NBVAL_CHECK_OUTPUT``
fails ``make test`` when that code changes and the notebook was not re-executed. (No line
numbers in the heading: an edit elsewhere in the file would fail the check for nothing.)
"""

from __future__ import annotations

import html
import inspect
from pathlib import Path

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class SourceListing:
    """One or more source excerpts: plain text for ``repr``, highlighted HTML for Jupyter."""

    def __init__(self, excerpts: list[tuple[str, str]]) -> None:
        self.excerpts = excerpts  # (where, code)

    @property
    def text(self) -> str:
        return "\n".join(f"# {where}\n{code}" for where, code in self.excerpts)

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        formatter = HtmlFormatter(noclasses=True, nobackground=True)
        parts = [
            f"<div><code>{html.escape(where)}</code>{highlight(code, PythonLexer(), formatter)}</div>"
            for where, code in self.excerpts
        ]
        return "".join(parts)


def show_source(*objects: object) -> SourceListing:
    """The source of each class, function or method in ``objects``, with where it lives.

    ``show_source(AdditiveAttention)`` shows the whole class;
    ``show_source(LuongDecoder.forward_parallel)`` one method. Each excerpt is headed by
    its file, relative to the repository, and its qualified name.

    Raises:
        TypeError: for an object without Python source (a built-in, an instance).
    """
    if not objects:
        raise ValueError("show_source needs at least one class, function or method")
    excerpts = []
    for item in objects:
        try:
            lines, _ = inspect.getsourcelines(item)
            path = Path(inspect.getsourcefile(item) or "?").resolve()
        except (TypeError, OSError) as error:
            raise TypeError(
                f"no Python source for {item!r}: pass a class, function or method"
            ) from error
        try:
            where = path.relative_to(_PACKAGE_ROOT).as_posix()
        except ValueError:
            where = path.name
        name = getattr(item, "__qualname__", repr(item))
        excerpts.append((f"{where}: {name}", "".join(lines).rstrip()))
    return SourceListing(excerpts)
