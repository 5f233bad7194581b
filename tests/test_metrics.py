"""The scores every notebook reports: multi-reference BLEU and chrF through sacreBLEU,
alignment accuracy against gold spans, and the paired bootstrap's seed."""

import math
import os

import pytest
import torch
from sacrebleu.metrics import BLEU, CHRF

from helpers.metrics import (
    alignment_accuracy,
    corpus_scores,
    mean_attention_entropy,
    paired_bootstrap,
    references_as_streams,
)

HYPOTHESES = ["Das ist gut.", "Ich bin hier.", "Er hat einen Hund gesehen."]
REFERENCES = [
    ["Das ist schlecht.", "Das ist gut."],  # the hypothesis is the *second* reference
    ["Ich bin hier."],
    ["Er sah einen Hund.", "Er hat einen Hund gesehen.", "Er hat den Hund gesehen."],
]


def test_references_become_one_stream_per_slot_with_none_in_the_spare_slots():
    assert references_as_streams(REFERENCES) == [
        ["Das ist schlecht.", "Ich bin hier.", "Er sah einen Hund."],
        ["Das ist gut.", None, "Er hat einen Hund gesehen."],
        [None, None, "Er hat den Hund gesehen."],
    ]


def test_a_hypothesis_that_matches_any_one_reference_is_perfect():
    scores = corpus_scores(HYPOTHESES, REFERENCES)
    assert scores.bleu == pytest.approx(100.0) and scores.chrf == pytest.approx(100.0)
    assert "nrefs:var" in scores.bleu_signature and "nrefs:var" in scores.chrf_signature
    assert "case:mixed" in scores.bleu_signature and "tok:13a" in scores.bleu_signature
    # The same sentences against the first reference only: far from perfect.
    first_only = corpus_scores(HYPOTHESES, [refs[:1] for refs in REFERENCES])
    assert first_only.bleu < 70 and "nrefs:1" in first_only.bleu_signature


def test_the_scores_are_sacrebleus_own_on_the_same_streams():
    hypotheses = ["Das ist nicht gut.", "Ich bin da.", "Er hat einen Hund."]
    scores = corpus_scores(hypotheses, REFERENCES)
    streams = references_as_streams(REFERENCES)
    assert scores.bleu == BLEU().corpus_score(hypotheses, streams).score
    assert scores.chrf == CHRF().corpus_score(hypotheses, streams).score
    assert 0 < scores.bleu < 100 and 0 < scores.chrf < 100
    assert str(scores).startswith(f"BLEU = {scores.bleu:.1f}")


@pytest.mark.parametrize(
    ("hypotheses", "references", "message"),
    [
        (HYPOTHESES[:2], REFERENCES, "2 hypotheses but 3 reference lists"),
        ([], [], "empty corpus"),
        (HYPOTHESES, [*REFERENCES[:2], []], "at least one reference"),
    ],
)
def test_scoring_refuses_what_it_cannot_score(hypotheses, references, message):
    with pytest.raises(ValueError, match=message):
        corpus_scores(hypotheses, references)


@pytest.mark.parametrize(
    ("references", "error", "message"),
    [
        (["Das ist gut.", "Ich bin hier.", "Er sah einen Hund."], TypeError, r"references\[0\] is a str"),
        ([["Das ist gut."], None, ["Er sah."]], TypeError, r"references\[1\] is a NoneType"),
        ([["Das ist gut."], ["Ich bin hier."], ["Er", None]], TypeError, r"references\[2\] holds"),
    ],
)  # fmt: skip
def test_references_given_as_plain_strings_are_refused_not_read_letter_by_letter(
    references, error, message
):
    """A flat list of strings, one per sentence, is the likeliest slip: sacreBLEU would read
    each string as one reference per character and score it (BLEU 16 for a perfect
    output) without a word of warning."""
    with pytest.raises(error, match=message):
        corpus_scores(HYPOTHESES, references)
    with pytest.raises(error, match=message):
        paired_bootstrap(("a", HYPOTHESES), [("b", HYPOTHESES[::-1])], references, samples=5)
    with pytest.raises(ValueError, match="no references"):
        references_as_streams([])
    assert corpus_scores(HYPOTHESES, [tuple(refs) for refs in REFERENCES]).bleu == pytest.approx(
        100
    )
    import numpy as np

    as_arrays = [np.array(refs) for refs in REFERENCES]  # e.g. from a DataFrame
    assert corpus_scores(HYPOTHESES, as_arrays).bleu == pytest.approx(100)


def test_alignment_accuracy_counts_half_open_gold_spans_and_skips_unaligned_outputs():
    # Rows are output positions; each row's argmax is the attended source position.
    attention = torch.tensor(
        [
            [0.1, 0.8, 0.1, 0.0],  # -> 1, gold [1, 3): hit
            [0.0, 0.1, 0.2, 0.7],  # -> 3, gold [1, 3): miss (the end is exclusive)
            [0.9, 0.1, 0.0, 0.0],  # -> 0, gold None: not scored
            [0.0, 0.0, 0.1, 0.9],  # -> 3, beyond the gold list: not scored
        ]
    )
    spans = [(1, 3), (1, 3), None]
    assert alignment_accuracy([attention], [spans]) == pytest.approx(1 / 2)
    # Over two sentences the hits and the scored positions add up (not a mean of means).
    other = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert alignment_accuracy([attention, other], [spans, [(1, 2), (0, 1), (0, 1)]]) == (
        pytest.approx(3 / 5)
    )
    with pytest.raises(ValueError, match="no output position"):
        alignment_accuracy([attention], [[None, None]])
    with pytest.raises(ValueError, match="shorter"):
        alignment_accuracy([attention, other], [spans])  # one span list short


def test_mean_entropy_in_nats_and_normalised_by_log_s():
    half = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    uniform = torch.full((1, 4), 0.25)
    assert mean_attention_entropy([half, uniform]) == pytest.approx((math.log(2) + math.log(4)) / 2)
    assert mean_attention_entropy([half, uniform], normalise=True) == pytest.approx(0.75)
    # Two source tokens: log S = log 2, so an even split is 1 and a one-hot row 0.
    two = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    assert mean_attention_entropy([two], normalise=True) == pytest.approx(0.5)


@pytest.mark.parametrize("shape", [(1, 3, 4), (1, 1, 4), (4,)])
def test_entropy_wants_one_matrix_per_sentence_not_a_batch_or_a_row(shape):
    """A batched ``(B, T, S)`` map, such as a ``Seq2SeqOutput``'s, would be normalised by
    log T instead of log S (1.26 for uniform rows, or "no attention" with T = 1)."""
    uniform = torch.full(shape, 1 / shape[-1])
    with pytest.raises(ValueError, match=r"has shape .*one \(T, S\) matrix per sentence"):
        mean_attention_entropy([uniform], normalise=True)
    assert mean_attention_entropy(list(uniform.view(-1, 1, shape[-1])), normalise=True) == (
        pytest.approx(1.0)
    )


def test_the_paired_bootstrap_uses_its_seed_and_leaves_the_environment_alone(monkeypatch):
    import sacrebleu.significance

    references = [[f"Satz Nummer {index} ist hier."] for index in range(40)]
    good = [refs[0] for refs in references]
    worse = [
        f"Satz {index} ist da." if index % 3 else refs[0] for index, refs in enumerate(references)
    ]
    seen_seeds = []  # what sacreBLEU's resampler reads when the test runs
    real_paired_test = sacrebleu.significance.PairedTest

    class RecordingPairedTest(real_paired_test):
        def __call__(self):
            seen_seeds.append(os.environ.get("SACREBLEU_SEED"))
            return super().__call__()

    monkeypatch.setattr(sacrebleu.significance, "PairedTest", RecordingPairedTest)
    monkeypatch.delenv("SACREBLEU_SEED", raising=False)
    first = paired_bootstrap(("good", good), [("worse", worse)], references, samples=200, seed=7)
    again = paired_bootstrap(("good", good), [("worse", worse)], references, samples=200, seed=7)
    assert seen_seeds == ["7", "7"] and first == again
    assert "SACREBLEU_SEED" not in os.environ
    (row,) = first
    assert row["baseline_bleu"] == pytest.approx(100.0)
    assert row["difference"] == pytest.approx(row["bleu"] - 100.0) and row["difference"] < 0
    assert 0 <= row["p_value"] <= 0.05
    monkeypatch.setenv("SACREBLEU_SEED", "99")
    paired_bootstrap(("good", good), [("worse", worse)], references, samples=50)
    assert seen_seeds[-1] == "12345" and os.environ["SACREBLEU_SEED"] == "99"
    with pytest.raises(ValueError, match="nothing to compare"):
        paired_bootstrap(("good", good), [], references)
    for samples in (0, -5, 2.5, True):  # sacreBLEU would quietly take 1,000 for 0
        with pytest.raises(ValueError, match="samples must be a whole number"):
            paired_bootstrap(("good", good), [("worse", worse)], references, samples=samples)


def test_a_system_identical_to_the_baseline_is_not_significantly_different():
    """sacreBLEU counts resampled differences strictly above the real one, so for two
    identical outputs it reports its smallest p-value, 1 / (samples + 1): "significant".
    There is nothing to test, and the wrapper says p = 1; a different system beside it
    keeps sacreBLEU's own p-value."""
    references = [[f"Satz Nummer {index} ist hier."] for index in range(40)]
    good = [refs[0] for refs in references]
    worse = [f"Satz {index} ist da." if index % 3 else good[index] for index in range(40)]
    import numpy as np

    same, different = paired_bootstrap(
        ("good", good), [("same", list(good)), ("worse", worse)], references, samples=np.int64(50)
    )
    assert same["difference"] == 0.0 and same["p_value"] == 1.0
    assert different["p_value"] == pytest.approx(1 / 51)


def test_maps_without_any_attention_weight_are_not_scored():
    """The plain decoder's stand-in maps are zeros: their entropy read as 0 ("perfectly
    sharp") and their argmax, position 0, as an alignment; a (T, 0) map gave an
    IndexError from argmax."""
    from helpers.metrics import alignment_accuracy, mean_attention_entropy

    real = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    assert alignment_accuracy([real], [[(0, 1), (1, 2)]]) == 1.0
    for stand_in in (torch.zeros(2, 2), torch.zeros(2, 0), torch.tensor([[1.0, 0.0], [0.0, 0.0]])):
        with pytest.raises(ValueError, match=r"attentions\[1\] has an output position with no"):
            alignment_accuracy([real, stand_in], [[(0, 1), (1, 2)], [(0, 1), (1, 2)]])
        with pytest.raises(ValueError, match=r"attentions\[1\] has an output position with no"):
            mean_attention_entropy([real, stand_in])
    # An empty translation (no output position) is still fine: there is nothing to score.
    assert mean_attention_entropy([real, torch.zeros(0, 2)]) == pytest.approx(
        mean_attention_entropy([real])
    )


def test_scores_passed_for_attention_weights_are_refused():
    """Rows with negative entries, or summing above 1 (scores before the softmax), gave a
    negative "entropy" and an argmax that meant nothing; rows summing below 1 (local-p)
    and a bf16 map's rounding stay fine."""
    from helpers.metrics import alignment_accuracy, mean_attention_entropy

    real = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    for scores in (torch.tensor([[2.0, -1.0], [0.5, 0.5]]), torch.tensor([[0.9, 0.9], [0.2, 0.8]])):
        with pytest.raises(ValueError, match=r"attentions\[1\] is not attention weights"):
            mean_attention_entropy([real, scores])
        with pytest.raises(ValueError, match=r"attentions\[1\] is not attention weights"):
            alignment_accuracy([real, scores], [[(0, 1), (1, 2)], [(0, 1), (1, 2)]])
    partial = torch.tensor([[0.5, 0.3], [0.1, 0.6]])  # local-p: a Gaussian times the weights
    assert mean_attention_entropy([partial]) > 0
    rounded = torch.softmax(torch.randn(4, 7, generator=torch.Generator().manual_seed(0)), -1)
    assert mean_attention_entropy([rounded.bfloat16()]) > 0


def test_a_str_is_no_list_of_hypotheses():
    """sacreBLEU iterates over whatever it is given: one str was scored letter by letter,
    BLEU 0.0 and no error, and so was a system's output in the bootstrap."""
    from helpers.metrics import paired_bootstrap

    letters = [["a"], ["b"], ["c"]]
    with pytest.raises(TypeError, match=r"hypotheses is a str \('abc'\): give a list"):
        corpus_scores("abc", letters)
    with pytest.raises(TypeError, match=r"hypotheses\[1\] is a list, not a str"):
        corpus_scores(["a", ["b"], "c"], letters)
    with pytest.raises(TypeError, match=r"'b''s hypotheses is a str"):
        paired_bootstrap(("a", ["a", "b", "c"]), [("b", "xyz")], letters, samples=5)


def test_nan_maps_and_maps_of_the_wrong_kind_are_refused():
    """A NaN map scored a perfect alignment (its argmax is 0) and a NaN entropy; a NumPy
    map, a row, or one span per sentence met bare errors inside the loop."""
    import numpy as np

    from helpers.metrics import alignment_accuracy, mean_attention_entropy

    real = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    spans = [[(0, 1), (1, 2)], [(0, 1), (1, 2)]]
    for broken in (
        torch.full((2, 2), float("nan")),
        torch.tensor([[float("inf"), 0.0], [0.5, 0.5]]),
    ):
        with pytest.raises(ValueError, match=r"attentions\[1\] holds NaN or infinite weights"):
            alignment_accuracy([real, broken], spans)
        with pytest.raises(ValueError, match=r"attentions\[1\] holds NaN or infinite weights"):
            mean_attention_entropy([real, broken])
    with pytest.raises(TypeError, match=r"attentions\[1\] must be a torch.Tensor, got a ndarray"):
        alignment_accuracy([real, real.numpy()], spans)
    with pytest.raises(ValueError, match=r"attentions\[0\] has shape \(2,\)"):
        alignment_accuracy([real[0]], [[(0, 1)]])
    with pytest.raises(ValueError, match=r"gold_spans\[0\] must hold one \(start, end\) span"):
        alignment_accuracy([real], [(0, 1)])
    assert alignment_accuracy([real, real], spans) == 1.0
    assert np.isfinite(mean_attention_entropy([real]))


def test_the_bootstrap_wants_a_whole_number_seed():
    """sacreBLEU reads the str "None" as no seed: p-values that never repeat."""
    from helpers.metrics import paired_bootstrap

    for seed in (None, 1.5, -1):
        with pytest.raises(ValueError, match="seed must be a whole number >= 0"):
            paired_bootstrap(("a", HYPOTHESES), [("b", HYPOTHESES[::-1])], REFERENCES, 5, seed)
