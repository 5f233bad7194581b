"""show_source: the notebooks show the package's real code, highlighted, with its place."""

import inspect
import re
from html import unescape

import pytest

from helpers.attention import AdditiveAttention, masked_softmax
from helpers.source import show_source


def test_the_listing_is_the_real_source_with_its_file_and_lines():
    listing = show_source(masked_softmax)
    lines, _ = inspect.getsourcelines(masked_softmax)
    header, *code = repr(listing).splitlines()
    assert header == "# helpers/attention.py: masked_softmax"
    assert "\n".join(code) == "".join(lines).rstrip()


def test_several_objects_come_in_order_and_inherited_methods_where_defined():
    listing = show_source(AdditiveAttention, AdditiveAttention.forward)
    headers = [line for line in repr(listing).splitlines() if line.startswith("# helpers/")]
    # forward is inherited: the listing names the base class that defines it.
    assert [h.rsplit(": ", 1)[1] for h in headers] == ["AdditiveAttention", "Attention.forward"]


def test_jupyter_gets_highlighted_html_of_the_same_code():
    html = show_source(masked_softmax)._repr_html_()
    assert "<span" in html and "masked_softmax" in html
    assert "helpers/attention.py" in html
    # With the highlighting's tags taken out, the page reads the whole source, every line.
    text = unescape(re.sub(r"<[^>]+>", "", html))
    assert inspect.getsource(masked_softmax).rstrip() in text
    # colours inline: the page has no Pygments stylesheet, so CSS classes would show plain
    assert 'style="color: #' in html and 'class="k"' not in html


def test_objects_without_source_are_refused_clearly():
    with pytest.raises(TypeError, match="no Python source"):
        show_source(len)
    with pytest.raises(ValueError, match="at least one"):
        show_source()
