"""Checkpoints: round trip, refusal of another config or vocabulary, atomic writes."""

import pickle

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


def test_a_checkpoint_of_another_vocabulary_is_refused(tmp_path):
    path = save_checkpoint(make_model(tokens=("a", "b", "c")), tmp_path / "model.pt")
    same_size_other_tokens = make_model(tokens=("a", "b", "z")).source_vocab
    with pytest.raises(CheckpointMismatchError, match="another source vocabulary"):
        load_checkpoint(path, source_vocab=same_size_other_tokens)


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
    def __reduce__(self):
        return (print, ("this code ran while loading",))


def test_loading_never_runs_code_from_the_file(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as stream:
        pickle.dump({"format": 1, "payload": _RunsCodeWhenUnpickled()}, stream)
    with pytest.raises(CheckpointMismatchError, match="not a readable checkpoint"):
        load_checkpoint(path)


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
