"""A synthetic translation task with a known alignment: human-readable dates → ISO dates.

``"Tue, Nov 24 2026"`` → ``"2026-11-24"``. Source and target are read character by
character. Every digit of the output comes from a known span of the input (the year,
the month name or number, the day), so we can check whether attention looks where it
should. The ``-`` separators come from no input span; they carry no gold alignment and
the alignment score leaves them out.

The task needs no download and a small model learns it in seconds on a CPU.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .checks import whole_number

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

# Each format is a list of pieces: a literal string or a field name. Fields are
# rendered from the date and remembered with their character span.
_FORMATS: tuple[tuple[str, ...], ...] = (
    ("day", " ", "month_name", " ", "year"),  # 24 November 2026
    ("weekday_abbr", ", ", "month_abbr", " ", "day", " ", "year"),  # Tue, Nov 24 2026
    ("month_name", " ", "day", ", ", "year"),  # November 24, 2026
    ("weekday_name", " ", "day", " ", "month_name", " ", "year"),  # Tuesday 24 November 2026
    ("day2", "/", "month2", "/", "year"),  # 24/11/2026
    ("day", ".", "month", ".", "year"),  # 24.11.2026
    ("month_abbr", " ", "day", " ", "year"),  # Nov 24 2026
    ("day", " ", "month_abbr_lower", " ", "year"),  # 24 nov 2026
)
_FIELD_OF = {  # which ISO field each rendered piece carries
    "day": "day",
    "day2": "day",
    "month_name": "month",
    "month_abbr": "month",
    "month_abbr_lower": "month",
    "month": "month",
    "month2": "month",
    "year": "year",
}


def _render(piece: str, date: dt.date) -> str:
    return {
        "day": str(date.day),
        "day2": f"{date.day:02d}",
        "month": str(date.month),
        "month2": f"{date.month:02d}",
        "month_name": MONTHS[date.month - 1],
        "month_abbr": MONTHS[date.month - 1][:3],
        "month_abbr_lower": MONTHS[date.month - 1][:3].lower(),
        "year": str(date.year),
        "weekday_name": WEEKDAYS[date.weekday()],
        "weekday_abbr": WEEKDAYS[date.weekday()][:3],
    }.get(piece, piece)


@dataclass(frozen=True)
class DateExample:
    """One example of the dates task.

    Attributes:
        source: the human-readable date, e.g. ``"Nov 24 2026"``.
        target: the ISO date, ``"2026-11-24"``.
        gold_spans: for each target character, the ``(start, end)`` source character
            span (end exclusive) it comes from, or ``None`` for a separator.
    """

    source: str
    target: str
    gold_spans: tuple[tuple[int, int] | None, ...]

    def gold_matrix(self) -> list[list[int]]:
        """``(len(target), len(source))`` 0/1 matrix: 1 where the gold alignment is."""
        rows = []
        for span in self.gold_spans:
            row = [0] * len(self.source)
            if span is not None:
                for position in range(*span):
                    row[position] = 1
            rows.append(row)
        return rows


def render_date(date: dt.date, format_index: int) -> DateExample:
    """Render ``date`` in format ``format_index`` and record where each field sits."""
    pieces = _FORMATS[format_index]
    source_parts: list[str] = []
    spans: dict[str, tuple[int, int]] = {}
    offset = 0
    for piece in pieces:
        text = _render(piece, date)
        if piece in _FIELD_OF:
            spans[_FIELD_OF[piece]] = (offset, offset + len(text))
        source_parts.append(text)
        offset += len(text)
    target = f"{date.year:04d}-{date.month:02d}-{date.day:02d}"
    gold = [spans["year"]] * 4 + [None] + [spans["month"]] * 2 + [None] + [spans["day"]] * 2
    return DateExample("".join(source_parts), target, tuple(gold))


def generate_dates(
    count: int,
    seed: int = 0,
    start: dt.date = dt.date(1950, 1, 1),
    end: dt.date = dt.date(2049, 12, 31),
) -> list[DateExample]:
    """``count`` random dates between ``start`` and ``end`` in random formats, from ``seed``."""
    if count < 1:
        raise ValueError("count must be at least 1")
    generator = random.Random(seed)
    span_days = (end - start).days
    return [
        render_date(
            start + dt.timedelta(days=generator.randrange(span_days + 1)),
            generator.randrange(len(_FORMATS)),
        )
        for _ in range(count)
    ]


def dates_splits(
    train_size: int = 8000, valid_size: int = 500, test_size: int = 500, seed: int = 0
) -> tuple[list[DateExample], list[DateExample], list[DateExample]]:
    """Disjoint train/valid/test sets of the dates task (no source string repeats)."""
    # A negative size would slice from the end: -5 gave 990 training examples.
    train_size = whole_number("train_size", train_size)
    valid_size = whole_number("valid_size", valid_size, least=0)
    test_size = whole_number("test_size", test_size, least=0)
    examples: list[DateExample] = []
    seen: set[str] = set()
    batch_seed = seed
    wanted = train_size + valid_size + test_size
    while len(examples) < wanted:
        for example in generate_dates(wanted, seed=batch_seed):
            if example.source not in seen:
                seen.add(example.source)
                examples.append(example)
        batch_seed += 1_000_003
    examples = examples[:wanted]
    return (
        examples[:train_size],
        examples[train_size : train_size + valid_size],
        examples[train_size + valid_size :],
    )


def character_lists(examples: Sequence[DateExample]) -> tuple[list[list[str]], list[list[str]]]:
    """The sources and targets of ``examples`` as lists of characters."""
    return [list(example.source) for example in examples], [
        list(example.target) for example in examples
    ]


def copy_sequences(
    count: int, min_length: int, max_length: int, seed: int = 0, alphabet: str = "0123456789"
) -> list[str]:
    """Random strings for the copy task (output = input): the simplest task whose
    difficulty grows with length, used to show the fixed-context bottleneck."""
    if not 1 <= min_length <= max_length:
        raise ValueError("need 1 <= min_length <= max_length")
    generator = random.Random(seed)
    return [
        "".join(
            generator.choice(alphabet) for _ in range(generator.randint(min_length, max_length))
        )
        for _ in range(count)
    ]
