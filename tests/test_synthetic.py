"""The dates task: every output digit comes from the gold source span."""

import datetime as dt

import pytest

from helpers.synthetic import MONTHS, dates_splits, generate_dates, render_date


def test_each_gold_span_holds_the_field_it_claims():
    for example in generate_dates(500, seed=1):
        year, month, day = (int(part) for part in example.target.split("-"))
        pieces = {}
        for position, span in enumerate(example.gold_spans):
            if span is None:
                assert example.target[position] == "-"
                continue
            pieces.setdefault(span, []).append(position)
        assert len(pieces) == 3
        for span, positions in pieces.items():
            text = example.source[span[0] : span[1]]
            output = "".join(example.target[p] for p in positions)
            if positions[0] < 4:
                assert text == str(year) == output
            elif positions[0] < 7:
                assert int(output) == month
                assert (
                    text.isdigit()
                    and int(text) == month
                    or text.lower() in {m.lower() for m in MONTHS} | {m[:3].lower() for m in MONTHS}
                )
                if not text.isdigit():
                    assert MONTHS[month - 1].lower().startswith(text.lower())
            else:
                assert int(text) == day == int(output)


def test_known_example_and_gold_matrix():
    example = render_date(dt.date(2026, 11, 24), 1)
    assert example.source == "Tue, Nov 24 2026"
    assert example.target == "2026-11-24"
    matrix = example.gold_matrix()
    assert len(matrix) == 10 and all(len(row) == len(example.source) for row in matrix)
    assert [i for i, v in enumerate(matrix[0]) if v] == [12, 13, 14, 15]  # year
    assert [i for i, v in enumerate(matrix[5]) if v] == [5, 6, 7]  # "Nov"
    assert [i for i, v in enumerate(matrix[8]) if v] == [9, 10]  # "24"
    assert sum(matrix[4]) == 0  # a separator has no gold


def test_generation_is_deterministic_and_splits_are_disjoint():
    assert generate_dates(50, seed=4) == generate_dates(50, seed=4)
    train, valid, test = dates_splits(2000, 200, 200, seed=0)
    sources = [e.source for e in train + valid + test]
    assert len(set(sources)) == len(sources) == 2400
    with pytest.raises(ValueError):
        generate_dates(0)
