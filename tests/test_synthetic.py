"""The dates task: every output digit comes from the gold source span."""

import datetime as dt
import hashlib

import pytest

from helpers.batching import collate_batch
from helpers.synthetic import (
    MONTHS,
    copy_sequences,
    dates_splits,
    generate_dates,
    render_date,
)


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
    assert {value for row in matrix for value in row} == {0, 1}


def test_generation_is_deterministic_and_splits_are_disjoint():
    assert generate_dates(50, seed=4) == generate_dates(50, seed=4)
    train, valid, test = dates_splits(2000, 200, 200, seed=0)
    sources = [e.source for e in train + valid + test]
    assert len(set(sources)) == len(sources) == 2400
    with pytest.raises(ValueError):
        generate_dates(0)
    (single,) = generate_dates(1, seed=4)
    assert single == generate_dates(50, seed=4)[0]


def test_both_ends_of_the_date_range_are_drawn():
    start = dt.date(2000, 2, 28)
    drawn = {
        int(example.target.split("-")[2])
        for example in generate_dates(200, start=start, end=start + dt.timedelta(days=1))
    }
    assert drawn == {28, 29}


def digest(lines):
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def test_the_default_synthetic_data_never_changes_silently():
    """The dates and copy tasks' cache keys name only their settings (sizes, lengths,
    seed), not the data (``helpers.tasks``), so models cached or committed for them assume
    exactly this data.
    If you change a generator on purpose, bump ``helpers.recipes.CACHE_VERSION`` and these
    digests together. The default dates split needs a second round of draws (the first
    9,000 dates repeat 127 sources), so the seed step between rounds is pinned too."""
    train, valid, test = dates_splits()
    assert len(generate_dates(9000, seed=0)) - len({e.source for e in generate_dates(9000)}) == 127
    assert digest(f"{e.source}\t{e.target}" for e in train + valid + test) == (
        "0e757dee3b6f7a59079fe4cc1ba3cbe7a93c05fcaafd8609fb94229ec7097ff8"
    )
    assert digest(copy_sequences(6800, 3, 30, seed=0)) == (
        "e225fd6c161825d1b578d89e0e14579537b04e0fdd59f96a8d540da6a79f71eb"
    )


def test_copy_sequences_span_the_lengths_asked_for():
    lengths = {len(text) for text in copy_sequences(300, 2, 4, seed=1)}
    assert lengths == {2, 3, 4}
    assert copy_sequences(3, 1, 1, alphabet="x") == ["x", "x", "x"]
    for low, high in ((0, 3), (4, 3), (-1, 0)):
        with pytest.raises(ValueError, match="min_length <= max_length"):
            copy_sequences(3, low, high)


def test_the_copy_task_is_three_consecutive_slices_of_one_draw():
    from helpers.tasks import copy_task

    task = copy_task(train_size=50, test_size=7, min_length=2, max_length=5, seed=3)
    drawn = copy_sequences(64, 2, 5, seed=3)
    assert len(task.train) == 50 and len(task.valid) == 7
    trained = [task.source_vocab.decode(task.train[i][0].tolist()) for i in range(50)]
    assert trained == [list(text) for text in drawn[:50]]
    assert task.test_sources == drawn[57:] and len(task.test_sources) == 7
    assert task.test_references == [[text] for text in drawn[57:]]
    for (source, target), text in zip([task.valid[i] for i in range(7)], drawn[50:57], strict=True):
        assert task.source_vocab.decode(source.tolist()) == list(text)
        assert target.tolist()[1:-1] == source.tolist()  # <sos> text <eos>: output = input
    # the gold alignment of output i is input i
    assert task.test_gold_spans[0] == tuple((i, i + 1) for i in range(len(drawn[57])))


def test_the_dates_task_keeps_the_split_and_its_gold_spans():
    from helpers.tasks import dates_task

    task = dates_task(train_size=40, valid_size=6, test_size=5, seed=2)
    train, valid, test = dates_splits(40, 6, 5, seed=2)
    assert (len(task.train), len(task.valid)) == (40, 6)
    assert task.test_sources == [example.source for example in test]
    assert task.test_references == [[example.target] for example in test]
    assert task.test_gold_spans == [example.gold_spans for example in test]
    source, _ = task.valid[0]
    assert "".join(task.source_vocab.decode(source.tolist())) == valid[0].source


def test_task_loaders_shuffle_training_by_seed_and_keep_validation_fixed():
    from helpers.tasks import dates_task

    task = dates_task(train_size=200, valid_size=70, test_size=5, seed=2)

    def order(loader):
        return [batch.source.tolist() for batch in loader]

    def sentences(loader):  # each source sentence once, padding cut off
        return sorted(
            str(row[:length].tolist())
            for batch in loader
            for row, length in zip(batch.source, batch.source_lengths, strict=True)
        )

    def collate_all(dataset):
        return collate_batch([dataset[index] for index in range(len(dataset))])

    train_one, valid_one = task.loaders(batch_size=8, seed=1)
    train_two, valid_two = task.loaders(batch_size=8, seed=2)
    assert order(train_one) != order(train_two)  # a shuffled training loader follows its seed
    assert sentences(train_one) == sentences(train_two) == sentences([collate_all(task.train)])
    assert order(valid_one) == order(valid_two)  # validation is the same batches every time,
    assert order(valid_one) == order(valid_one)  # in every epoch too
    assert order(train_one) != order(train_one)  # while training is reshuffled each epoch
    assert [len(batch.source) for batch in valid_one] == [32, 32, 6]  # 4 × the batch size


def test_impossible_split_sizes_are_refused():
    """A negative size sliced from the end: ``train_size=-5`` gave 990 examples."""
    from helpers.synthetic import dates_splits

    for kwargs, message in [
        ({"train_size": -5}, "train_size must be a whole number >= 1, got -5"),
        ({"train_size": 0}, "train_size must be a whole number >= 1, got 0"),
        ({"valid_size": -1}, "valid_size must be a whole number >= 0"),
        ({"test_size": 2.5}, "test_size must be a whole number >= 0, got 2.5"),
    ]:
        with pytest.raises(ValueError, match=message):
            dates_splits(**{"train_size": 10, "valid_size": 2, "test_size": 2, **kwargs})
    import numpy as np

    train, valid, test = dates_splits(np.int64(10), 0, 3)  # numpy integers are integers
    assert (len(train), len(valid), len(test)) == (10, 0, 3)
