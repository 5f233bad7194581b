"""Checkpoints: round trip, refusal of another config or vocabulary, atomic writes."""

import pickle
from pathlib import Path

import pytest
import torch

from helpers.checkpoints import CheckpointMismatchError, load_checkpoint, save_checkpoint
from helpers.models import ModelConfig, Seq2Seq
from helpers.vocab import Vocabulary


def make_model(hidden_size=16, tokens=("a", "b", "c")):
    torch.manual_seed(0)
    source_vocab = Vocabulary.build([list(tokens)])
    target_vocab = Vocabulary.build([["x", "y"]])
    config = ModelConfig(
        len(source_vocab), len(target_vocab), embedding_size=8, hidden_size=hidden_size
    )
    return Seq2Seq(config).attach_vocabularies(source_vocab, target_vocab).eval()


def test_round_trip_gives_identical_outputs(tmp_path):
    model = make_model()
    path = save_checkpoint(model, tmp_path / "model.pt", extra={"bleu": 41.5})
    loaded, extra = load_checkpoint(
        path, expected_config=model.config, source_vocab=model.source_vocab
    )
    assert extra == {"bleu": 41.5}
    assert loaded.source_vocab == model.source_vocab and loaded.target_vocab == model.target_vocab
    source = torch.tensor([[4, 5, 6]])
    decoder_input = torch.tensor([[1, 4, 5]])
    torch.testing.assert_close(
        loaded(source, torch.tensor([3]), decoder_input).logits,
        model(source, torch.tensor([3]), decoder_input).logits,
        rtol=0,
        atol=0,
    )


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    path = save_checkpoint(make_model(hidden_size=16), tmp_path / "model.pt")
    other = make_model(hidden_size=32).config
    with pytest.raises(
        CheckpointMismatchError, match="hidden_size: expected 32, checkpoint has 16"
    ):
        load_checkpoint(path, expected_config=other)


def test_arguments_of_the_wrong_kind_are_named(tmp_path):
    """A vocabulary's token list said "trained with another source vocabulary (7 tokens in
    the checkpoint, 7 given)" of the very same tokens; a config's dict an AttributeError."""
    model = make_model()
    path = tmp_path / "m.pt"
    save_checkpoint(model, path)
    for kwargs, message in [
        ({"source_vocab": model.source_vocab.itos}, "source_vocab must be a Vocabulary .*got list"),
        ({"target_vocab": "abc"}, "target_vocab must be a Vocabulary .*got str"),
        ({"expected_config": model.config.to_dict()}, "expected_config must be a ModelConfig .*got dict"),
    ]:  # fmt: skip
        with pytest.raises(TypeError, match=message):
            load_checkpoint(path, **kwargs)
    load_checkpoint(path, expected_config=model.config, source_vocab=model.source_vocab)


def test_a_checkpoint_of_another_vocabulary_is_refused(tmp_path):
    """On either side: ``--resume`` passes both vocabularies."""
    model = make_model(tokens=("a", "b", "c"))
    path = save_checkpoint(model, tmp_path / "model.pt")
    same_size_other_tokens = make_model(tokens=("a", "b", "z")).source_vocab
    with pytest.raises(CheckpointMismatchError, match="another source vocabulary"):
        load_checkpoint(path, source_vocab=same_size_other_tokens)
    other_target = Vocabulary.build([["x", "w"]])  # the same size as the model's x, y
    assert len(other_target) == len(model.target_vocab) and other_target != model.target_vocab
    with pytest.raises(CheckpointMismatchError, match="another target vocabulary"):
        load_checkpoint(path, source_vocab=model.source_vocab, target_vocab=other_target)
    loaded, _ = load_checkpoint(
        path, source_vocab=model.source_vocab, target_vocab=model.target_vocab
    )
    assert loaded.target_vocab == model.target_vocab


def test_files_that_are_not_checkpoints_are_refused_clearly(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointMismatchError, match="not a readable checkpoint"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointMismatchError, match="not a Paying Attention checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


class _RunsCodeWhenUnpickled:
    """Unpickling calls ``open(marker, "w")``: the file appears if the code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_loading_never_runs_code_from_the_file(tmp_path, writer):
    path, marker = tmp_path / "evil.pt", tmp_path / "the-code-ran"
    payload = {"format": 1, "payload": _RunsCodeWhenUnpickled(marker)}
    if writer == "pickle":
        with open(path, "wb") as stream:
            pickle.dump(payload, stream)
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointMismatchError, match=str(path)) as error:
        load_checkpoint(path)
    assert not marker.exists(), "loading the checkpoint ran code from it"
    assert "weights_only=False" not in str(error.value)
    if writer == "torch.save":
        assert "holds io.open (not a tensor" in str(error.value)  # says what it found instead


def test_a_failed_save_leaves_the_old_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    model = make_model()
    path = save_checkpoint(model, tmp_path / "model.pt", extra={"version": 1})
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, path, extra={"version": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_saving_needs_vocabularies(tmp_path):
    model = Seq2Seq(ModelConfig(10, 10, embedding_size=4, hidden_size=8))
    with pytest.raises(ValueError, match="vocabularies"):
        save_checkpoint(model, tmp_path / "model.pt")


def test_extra_that_a_safe_load_cannot_read_is_refused_before_writing(tmp_path):
    import numpy as np

    model = make_model()
    path = save_checkpoint(model, tmp_path / "model.pt", extra={"best_loss": 0.7})
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"extra\['history'\]\['best_loss'\] is a numpy.float64"):
        save_checkpoint(model, path, extra={"history": {"best_loss": np.float64(0.5)}})
    with pytest.raises(TypeError, match=r"extra key .* is a numpy.int64"):
        save_checkpoint(model, path, extra={np.int64(1): "one"})
    with pytest.raises(TypeError, match="extra must be a dict"):
        save_checkpoint(model, path, extra=[1, 2])
    assert path.read_bytes() == before  # the good checkpoint is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    # Everything a weights_only load accepts goes through and comes back.
    extra = {
        "none": None,
        "flag": True,
        "n": 3,
        "x": 0.5,
        "s": "é",
        "t": torch.ones(2),
        "l": [1, (2, 3)],
        "weights": model.state_dict(),  # an OrderedDict
    }
    save_checkpoint(model, path, extra=extra)
    _, loaded = load_checkpoint(path)
    assert loaded["l"] == [1, (2, 3)] and torch.equal(loaded["t"], torch.ones(2))
    assert list(loaded["weights"]) == list(model.state_dict())


def test_load_errors_name_the_file_and_never_advise_an_unsafe_load(tmp_path):
    import numpy as np

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": 1, "extra": {"loss": np.float64(0.5)}}, unsafe)
    with pytest.raises(CheckpointMismatchError, match=str(unsafe)) as error:
        load_checkpoint(unsafe)
    assert "weights_only=False" not in str(error.value) and error.value.__cause__ is None

    incomplete = tmp_path / "incomplete.pt"
    torch.save({"format": 1, "config": {}}, incomplete)
    with pytest.raises(CheckpointMismatchError, match=f"{incomplete} is incomplete: .*state_dict"):
        load_checkpoint(incomplete)

    newer = tmp_path / "newer.pt"
    torch.save({"format": 99}, newer)
    with pytest.raises(CheckpointMismatchError, match="newer version .* format 99"):
        load_checkpoint(newer)

    # Fields of the wrong kind: still our error, naming the file, never a bare one.
    good = torch.load(save_checkpoint(make_model(), tmp_path / "good.pt"), weights_only=True)
    for field, value, message in (
        ("source_vocab", ["a", "b"], "vocabularies cannot be read"),
        ("target_vocab", 5, "vocabularies cannot be read"),
        ("state_dict", [1, 2], "weights do not fit"),
        ("extra", [1, 2], "extra data is a list"),
    ):
        broken = tmp_path / f"broken-{field}.pt"
        torch.save({**good, field: value}, broken)
        with pytest.raises(CheckpointMismatchError, match=f"{broken}: .*{message}"):
            load_checkpoint(broken)


def test_saved_files_are_flushed_readable_by_others_and_leave_no_stale_temporaries(
    tmp_path, monkeypatch
):
    import os
    import time

    from helpers.files import STALE_SECONDS, atomic_write_bytes

    path = tmp_path / "model.pt"
    stale = tmp_path / ".model.pt.killed.tmp"  # what a kill -9 during a save leaves
    stale.write_bytes(b"half a checkpoint")
    old = time.time() - STALE_SECONDS - 60
    os.utime(stale, (old, old))
    live = tmp_path / ".model.pt.writing.tmp"  # another save, still being written
    live.write_bytes(b"in progress")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    previous_umask = os.umask(0o022)
    try:
        save_checkpoint(make_model(), path)
        atomic_write_bytes(tmp_path / "table.csv", b"a,b\n")
    finally:
        os.umask(previous_umask)
    assert len(synced) == 2, "each file is fsynced before its rename"
    assert (path.stat().st_mode & 0o777) == 0o644
    assert ((tmp_path / "table.csv").stat().st_mode & 0o777) == 0o644
    assert not stale.exists() and live.exists()


def test_an_atomic_write_makes_the_folders_it_needs(tmp_path):
    from helpers.files import atomic_write_bytes

    nested = tmp_path / "runs" / "today" / "table.csv"
    atomic_write_bytes(nested, b"a,b\n")
    assert nested.read_bytes() == b"a,b\n"


def test_checkpoints_live_in_the_repository_or_where_the_setting_says(tmp_path, monkeypatch):
    import helpers
    from helpers.files import checkpoint_path

    monkeypatch.delenv("PAYING_ATTENTION_CHECKPOINTS", raising=False)
    repository = Path(helpers.__file__).resolve().parent.parent
    assert checkpoint_path("04_luong.pt") == repository / "checkpoints" / "04_luong.pt"
    monkeypatch.setenv("PAYING_ATTENTION_CHECKPOINTS", str(tmp_path / "elsewhere"))
    assert checkpoint_path("04_luong.pt") == tmp_path / "elsewhere" / "04_luong.pt"


def test_an_unknown_device_is_refused_before_the_file_is_read(tmp_path, monkeypatch):
    """``device="gpu"`` gave torch's "Expected one of cpu, cuda, ..." after the whole
    file (hundreds of MB for a large model) had been read."""
    path = save_checkpoint(make_model(), tmp_path / "model.pt")
    reads = []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: reads.append(args))
    with pytest.raises(ValueError, match="unknown device 'gpu': use cpu, cuda or cuda:<index>"):
        load_checkpoint(path, device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # torch's AssertionError
    with pytest.raises(ValueError, match="'cuda' was asked for, but torch.cuda.is_available"):
        load_checkpoint(path, device="cuda")
    assert reads == []


def test_nan_weights_are_not_saved_over_a_good_checkpoint(tmp_path):
    model = make_model()
    path = save_checkpoint(model, tmp_path / "model.pt")
    good = path.read_bytes()
    with torch.no_grad():
        model.decoder.embedding.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"decoder.embedding.weight holds NaN or infinite .*keeps"):
        save_checkpoint(model, path)
    assert path.read_bytes() == good


def test_vocabularies_that_disagree_with_the_config_name_the_file(tmp_path):
    """A plain ValueError from attach_vocabularies named no file, and was no
    CheckpointMismatchError, which the command line's --resume reports."""
    path = save_checkpoint(make_model(), tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    payload["source_vocab"] = [*payload["source_vocab"], "extra"]
    torch.save(payload, path)
    with pytest.raises(CheckpointMismatchError, match=f"{path}: vocabulary sizes 8/6 do not match"):
        load_checkpoint(path)
