"""The attention layers: shapes, masking, padding invariance, agreement with torch, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from helpers.attention import (
    AdditiveAttention,
    ConcatAttention,
    DotAttention,
    GeneralAttention,
    LocalAttention,
    MultiHeadAttention,
    ScaledDotAttention,
    attention_entropy,
    build_attention,
    masked_softmax,
)

D = 8
LAYERS = {
    "dot": lambda: DotAttention(D),
    "scaled_dot": lambda: ScaledDotAttention(D),
    "general": lambda: GeneralAttention(D),
    "concat": lambda: ConcatAttention(D),
    "additive": lambda: AdditiveAttention(D, D, 6),
    "local-m": lambda: LocalAttention(GeneralAttention(D), window=1, predictive=False),
    "local-p": lambda: LocalAttention(GeneralAttention(D), window=2, predictive=True, query_size=D),
}


def make_inputs(batch=3, steps=4, length=6, lengths=(6, 4, 2), seed=0):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, steps, D, generator=generator)
    keys = torch.randn(batch, length, D, generator=generator)
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    keys = keys * mask.unsqueeze(-1)  # padded encoder states are zero, as after pad_packed
    return query, keys, mask


@pytest.fixture(params=sorted(LAYERS))
def layer(request):
    torch.manual_seed(0)
    return LAYERS[request.param]()


def test_shapes_for_many_steps_and_one_step(layer):
    query, keys, mask = make_inputs()
    context, weights = layer(query, keys, keys, mask)
    assert context.shape == (3, 4, D) and weights.shape == (3, 4, 6)
    one_context, one_weights = layer(query[:, 0], keys, keys, mask, positions=0)
    assert one_context.shape == (3, D) and one_weights.shape == (3, 6)
    torch.testing.assert_close(one_weights, weights[:, 0])


def test_weights_are_a_distribution_with_exact_zeros_on_padding(layer):
    query, keys, mask = make_inputs()
    _, weights = layer(query, keys, keys, mask)
    assert bool((weights >= 0).all())
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4))
    padding = ~mask.unsqueeze(1).expand_as(weights)
    assert bool((weights[padding] == 0).all()), "padded positions must get exactly 0"


def test_extra_padding_changes_no_output(layer):
    query, keys, mask = make_inputs()
    context, weights = layer(query, keys, keys, mask)
    padded_keys = torch.cat([keys, torch.zeros(3, 5, D)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], dim=1)
    padded_context, padded_weights = layer(query, padded_keys, padded_keys, padded_mask)
    torch.testing.assert_close(padded_context, context, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(padded_weights[..., :6], weights, atol=1e-6, rtol=1e-5)
    assert bool((padded_weights[..., 6:] == 0).all())


def test_gradient_reaches_every_parameter_and_the_inputs(layer):
    query, keys, mask = make_inputs()
    query.requires_grad_(True)
    keys.requires_grad_(True)
    context, _ = layer(query, keys, keys, mask)
    context.pow(2).sum().backward()
    assert query.grad is not None and query.grad.abs().sum() > 0
    assert keys.grad is not None and keys.grad.abs().sum() > 0
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, (
            f"no gradient for {name}"
        )


def test_context_is_the_weighted_sum_of_values(layer):
    query, keys, mask = make_inputs()
    values = torch.randn(3, 6, 5)
    context, weights = layer(query, keys, values, mask)
    torch.testing.assert_close(context, torch.einsum("bts,bsv->btv", weights, values))


def test_scores_match_the_paper_formulas():
    torch.manual_seed(1)
    query, keys, _ = make_inputs()
    q, k = query[0, 0], keys[0, 1]
    general = GeneralAttention(D)
    expected_general = q @ general.W_a.weight @ k  # q^T W_a k
    assert torch.isclose(
        general.score(query, general.project_keys(keys))[0, 0, 1], expected_general, atol=1e-5
    )
    additive = AdditiveAttention(D, D, 5)
    expected_additive = additive.v_a.weight[0] @ torch.tanh(
        additive.W_a.weight @ q + additive.U_a.weight @ k
    )
    assert torch.isclose(
        additive.score(query, additive.project_keys(keys))[0, 0, 1], expected_additive, atol=1e-5
    )
    concat = ConcatAttention(D, D, 5)
    expected_concat = concat.v_a.weight[0] @ torch.tanh(concat.W_a.weight @ torch.cat([q, k]))
    assert torch.isclose(
        concat.score(query, concat.project_keys(keys))[0, 0, 1], expected_concat, atol=1e-5
    )
    torch.testing.assert_close(
        concat.score(query, concat.project_keys(keys)), concat.score_by_concatenation(query, keys)
    )
    scaled = ScaledDotAttention(D)
    assert torch.isclose(scaled.score(query, keys)[0, 0, 1], q @ k / math.sqrt(D))


def test_general_with_identity_matrix_is_dot():
    query, keys, mask = make_inputs()
    general = GeneralAttention(D)
    with torch.no_grad():
        general.W_a.weight.copy_(torch.eye(D))
    torch.testing.assert_close(
        general(query, keys, keys, mask), DotAttention(D)(query, keys, keys, mask)
    )


def test_scaled_dot_agrees_with_torch_sdpa():
    query, keys, mask = make_inputs()
    values = torch.randn(3, 6, D)
    context, _ = ScaledDotAttention(D)(query, keys, values, mask)
    expected = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask[:, None, :])
    torch.testing.assert_close(context, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("need_weights", [True, False])
def test_multi_head_agrees_with_torch_multihead_attention(need_weights):
    torch.manual_seed(0)
    reference = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ours = MultiHeadAttention(16, 4).load_from_torch(reference).eval()
    query, keys = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 3, 1])[:, None]
    expected, expected_weights = reference(query, keys, keys, key_padding_mask=~mask)
    context, weights = ours(query, keys, keys, mask, need_weights=need_weights)
    torch.testing.assert_close(context, expected, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(weights, expected_weights, atol=1e-5, rtol=1e-5)
    else:
        assert weights is None


def test_multi_head_takes_a_causal_mask_like_torch():
    torch.manual_seed(0)
    reference = torch.nn.MultiheadAttention(16, 2, batch_first=True).eval()
    ours = MultiHeadAttention(16, 2).load_from_torch(reference).eval()
    states = torch.randn(2, 5, 16)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    expected, _ = reference(states, states, states, attn_mask=~causal)
    context, weights = ours(states, states, states, causal.expand(2, 5, 5))
    torch.testing.assert_close(context, expected, atol=1e-5, rtol=1e-5)
    assert bool((weights.triu(1) == 0).all())
    per_head = ours(states, states, states, causal.expand(2, 5, 5), average_heads=False)[1]
    assert per_head.shape == (2, 2, 5, 5)
    sdpa = F.scaled_dot_product_attention(states, states, states, is_causal=True)
    assert sdpa.shape == states.shape  # sanity on torch's own kernel the notebooks compare to


@pytest.mark.parametrize("window", [1, 2])
def test_local_m_window_is_centred_on_the_step(window):
    """Luong et al.'s local-m: at step t the window is [t - D, t + D] (its centre clamped
    to the sentence's last real position), and inside it the weights are the softmax of
    the scores over the real positions of the window, by hand. Steps past a short
    sentence's end (lengths 4 and 2 at steps 0-4) check the clamp; a window that leans to
    one side would put weight 0 where the hand-built one has weight."""
    steps = 5
    query, keys, mask = make_inputs(steps=steps)
    layer = LocalAttention(DotAttention(D), window=window, predictive=False)
    _, weights = layer(query, keys, keys, mask)
    last = mask.sum(-1, keepdim=True) - 1  # (B, 1)
    centres = torch.minimum(torch.arange(steps)[None, :], last)  # (B, T)
    distance = torch.arange(6)[None, None, :] - centres[..., None]  # (B, T, S)
    in_window = (distance.abs() <= window) & mask[:, None, :]
    expected = masked_softmax(query @ keys.transpose(1, 2), in_window)
    torch.testing.assert_close(weights, expected)
    assert bool((weights[in_window] > 0).all()) and bool((weights[~in_window] == 0).all())
    assert bool((in_window.sum(-1) == 2 * window + 1).any())  # some windows are whole


@pytest.mark.parametrize("window", [2, 3])
def test_local_p_predicts_a_centre_inside_the_sentence_and_applies_the_gaussian(window):
    torch.manual_seed(0)
    query, keys, mask = make_inputs()
    layer = LocalAttention(
        DotAttention(D), window=window, predictive=True, query_size=D, renormalize=False
    )
    lengths = mask.sum(-1)
    # Luong et al.'s eq. 10 by hand, p_t = S * sigmoid(v_p^T tanh(W_p h_t)), with no bias
    # terms, and the last real index S - 1 in place of S since our positions count from 0.
    gate = torch.sigmoid(torch.tanh(query @ layer.W_p.weight.T) @ layer.v_p.weight.T)
    centres = (lengths - 1)[:, None] * gate.squeeze(-1)
    torch.testing.assert_close(layer.aligned_positions(query, lengths), centres)
    assert bool((centres >= 0).all()) and bool((centres <= (lengths - 1)[:, None]).all())
    _, weights = layer(query, keys, keys, mask)
    # Without renormalisation: the paper's a_t(s) = align(h_t, h_s) * exp(-(s-p_t)^2 / (2 sigma^2))
    # with sigma = D/2 (eq. 11); D = 3 makes sigma = 1.5, so sigma^2 is not sigma.
    sigma = window / 2
    distance = torch.arange(6)[None, None, :] - centres[..., None]
    in_window = (distance.abs() <= window) & mask[:, None, :]
    align = masked_softmax(layer.score(query, keys), in_window)
    torch.testing.assert_close(weights, align * torch.exp(-(distance**2) / (2 * sigma**2)))
    assert bool((weights.sum(-1) <= 1 + 1e-6).all())


def test_local_attention_without_a_mask_treats_every_position_as_real():
    """No mask means every key is real: the same as an all-True mask, for a batch whose
    size differs from its source length."""
    torch.manual_seed(0)
    query, keys, _ = make_inputs(batch=3, steps=4, length=6, lengths=(6, 6, 6))
    everything = torch.ones(3, 6, dtype=torch.bool)
    for predictive in (False, True):
        layer = LocalAttention(GeneralAttention(D), window=2, predictive=predictive, query_size=D)
        context, weights = layer(query, keys, keys)
        masked_context, masked_weights = layer(query, keys, keys, everything)
        torch.testing.assert_close(context, masked_context, rtol=0, atol=0)
        torch.testing.assert_close(weights, masked_weights, rtol=0, atol=0)


def test_entropy_is_zero_for_one_hot_and_log_n_for_uniform():
    one_hot = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    uniform = torch.full((1, 4), 0.25)
    assert attention_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_entropy(uniform).item() == pytest.approx(math.log(4))


def test_masked_softmax_gives_padding_zero_and_wants_a_bool_mask():
    scores = torch.tensor([[2.0, 1.0, 5.0], [0.0, 3.0, -1.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    weights = masked_softmax(scores, mask)
    torch.testing.assert_close(weights[0], torch.cat([scores[0, :2].softmax(-1), torch.zeros(1)]))
    torch.testing.assert_close(weights[1], scores[1].softmax(-1))
    torch.testing.assert_close(masked_softmax(scores, None), scores.softmax(-1))
    # A 0/1 mask of another dtype is refused with a message that says what a mask is
    # (torch's own errors speak of bitwise_not, or of masked_fill).
    for dtype in (torch.float32, torch.int64, torch.uint8):
        with pytest.raises(TypeError, match=f"mask must be bool.*got {dtype}"):
            masked_softmax(scores, mask.to(dtype))


def test_entropy_ignores_whatever_the_mask_hides():
    """Padding contributes nothing: the masked entropy of a row is that of its real part,
    whatever (even a non-distribution) sits in the padding. 3-D weights, each row with
    its own mask."""
    weights = torch.tensor([[[0.5, 0.25, 0.25, 0.7, 0.3]], [[0.5, 0.5, 0.9, 0.9, 0.9]]])
    mask = torch.tensor([[[True, True, True, False, False]], [[True, True, False, False, False]]])
    real = torch.tensor([0.5, 0.25, 0.25])
    expected = torch.stack([-(real * real.log()).sum(), torch.tensor(math.log(2))]).view(2, 1)
    entropies = attention_entropy(weights, mask)
    assert entropies.shape == (2, 1)
    torch.testing.assert_close(entropies, expected)
    unpadded = torch.tensor([[0.5, 0.25, 0.25, 0.0, 0.0]])
    assert attention_entropy(unpadded).item() == pytest.approx(expected[0].item())


def test_entropy_refuses_a_mask_with_fewer_axes_than_the_weights():
    """A (B, S) mask over (B, T, S) weights lined B up with T: a wrong entropy when
    B == T (no error at all), torch's size error otherwise. As masked_softmax says."""
    weights = torch.softmax(torch.randn(2, 2, 4), dim=-1)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    with pytest.raises(ValueError, match=r"mask \(2, 4\) has fewer axes than weights \(2, 2, 4\)"):
        attention_entropy(weights, mask)
    per_sentence = attention_entropy(weights, mask[:, None, :])
    for sentence in range(2):
        real = weights[sentence][:, mask[sentence]]
        torch.testing.assert_close(per_sentence[sentence], attention_entropy(real))


def test_normalised_row_entropies_lie_between_zero_and_one():
    from helpers.metrics import attention_row_entropies, mean_attention_entropy

    sharp = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    uniform = torch.full((1, 5), 0.2)
    single = torch.ones(2, 1)  # one source token: log S = 0, skipped when normalising
    rows = attention_row_entropies([sharp, uniform, single], normalise=True)
    assert rows.tolist() == pytest.approx([0.0, 0.0, 1.0], abs=1e-6)
    assert mean_attention_entropy([uniform]) == pytest.approx(math.log(5))
    with pytest.raises(ValueError, match="no attention"):
        mean_attention_entropy([single], normalise=True)


@pytest.mark.parametrize(
    ("make_call", "message"),
    [
        (lambda layer, q, k, m: layer(q, k[:2], k[:2], m[:2]), "batch sizes differ"),
        (
            lambda layer, q, k, m: layer(q, torch.randn(3, 6, D + 1), torch.randn(3, 6, D + 1), m),
            "d_k",
        ),
        (lambda layer, q, k, m: layer(q, k, k, m[:, :5]), "mask has shape"),
        (lambda layer, q, k, m: layer(q, k, k, m.float()), "bool"),
        (lambda layer, q, k, m: layer(q, k, k, torch.zeros_like(m)), "no real position"),
        (lambda layer, q, k, m: layer(q[0], k, k, m), "batch sizes differ"),
        (lambda layer, q, k, m: layer(q.unsqueeze(0), k, k, m), "query must be"),
        (lambda layer, q, k, m: layer(q, k, torch.randn(3, 5, D), m), "same src_len"),
        (lambda layer, q, k, m: layer(q, k, k[0], m), "keys and values must be"),
        (lambda layer, q, k, m: layer(q, k, torch.randn(2, 6, D), m), "batch sizes differ"),
        (lambda layer, q, k, m: layer(q, k[:, :0], k[:, :0], None), "nothing to attend to"),
        (lambda layer, q, k, m: layer(q[..., :5], k, k, m), "d_q = 8"),
        # local-m has no W_p: it takes d_q from the score it wraps
        (
            lambda layer, q, k, m: LocalAttention(layer, predictive=False)(q[..., :5], k, k, m),
            "d_q = 8",
        ),
    ],
)
def test_bad_input_raises_a_clear_value_error(make_call, message):
    query, keys, mask = make_inputs()
    with pytest.raises(ValueError, match=message):
        make_call(GeneralAttention(D), query, keys, mask)


@pytest.mark.parametrize(
    ("name", "kind", "predictive"),
    [
        ("dot", DotAttention, None),
        ("scaled_dot", ScaledDotAttention, None),
        ("general", GeneralAttention, None),
        ("concat", ConcatAttention, None),
        ("additive", AdditiveAttention, None),
        ("local-m", LocalAttention, False),
        ("local-p", LocalAttention, True),
    ],
)
def test_build_attention_builds_the_layer_it_is_named_after(name, kind, predictive):
    key_size = D if name in ("dot", "scaled_dot") else 5  # d_q != d_k where a layer allows it
    layer = build_attention(name, D, key_size, attention_size=6, window=3)
    assert type(layer) is kind
    assert (layer.query_size, layer.key_size) == (D, key_size)
    if name in ("concat", "additive"):
        assert layer.v_a.in_features == 6  # the attention size reaches the layer
    if predictive is not None:
        assert layer.predictive is predictive and layer.window == 3
        assert type(layer.score_layer) is GeneralAttention  # Luong's best local models


def test_dot_attention_refuses_mismatched_sizes_and_local_m_needs_a_step():
    query, keys, mask = make_inputs()
    with pytest.raises(ValueError, match="d_q == d_k"):
        DotAttention()(query[..., :4], keys, keys, mask)
    with pytest.raises(ValueError, match="positions"):
        LocalAttention(DotAttention(D), predictive=False)(query[:, 0], keys, keys, mask)
    with pytest.raises(ValueError, match="unknown attention"):
        build_attention("cosine", D, D)
    with pytest.raises(ValueError, match="divide"):
        MultiHeadAttention(10, 3)


@pytest.mark.parametrize("predictive", [False, True])
def test_local_attention_with_a_per_step_mask_is_each_steps_own_mask(predictive):
    """A ``(B, T, S)`` mask may give each decoder step its own real length; the window
    and its clamp must use that step's length (not step 0's), exactly as a 2-D mask
    given to each step alone does."""
    torch.manual_seed(0)
    layer = LocalAttention(GeneralAttention(D), window=1, predictive=predictive, query_size=D)
    query, keys, _ = make_inputs(steps=4, length=6, lengths=(6, 6, 6))
    step_lengths = torch.tensor([[6, 5, 3, 2], [4, 4, 4, 4], [2, 3, 5, 6]])  # (B, T)
    per_step = torch.arange(6)[None, None, :] < step_lengths[:, :, None]  # (B, T, S)
    context, weights = layer(query, keys, keys, per_step)
    for step in range(4):
        alone, alone_weights = layer(query[:, step], keys, keys, per_step[:, step], positions=step)
        torch.testing.assert_close(context[:, step], alone, rtol=0, atol=0)
        torch.testing.assert_close(weights[:, step], alone_weights, rtol=0, atol=0)
    assert not bool(weights.masked_select(~per_step).any()), "a masked key got weight"


def test_local_m_refuses_a_negative_decoder_step():
    layer = LocalAttention(GeneralAttention(D), window=1, predictive=False)
    query, keys, mask = make_inputs()
    with pytest.raises(ValueError, match="decoder step >= 0, got -1"):
        layer(query[:, 0], keys, keys, mask, positions=-1)
    with pytest.raises(ValueError, match="decoder steps >= 0"):
        layer(query, keys, keys, mask, positions=torch.tensor([0, 1, -2, 3]))


@pytest.mark.parametrize("num_heads", [1, 4])
def test_a_2d_query_is_a_one_step_query_without_its_step_axis(num_heads):
    """A 2-D query ``(B, d_model)`` (one decoder step) gives what a ``(B, 1, d_model)``
    query gives, without the step axis, per head and averaged; one head is allowed."""
    torch.manual_seed(0)
    layer = MultiHeadAttention(16, num_heads).eval()
    query, keys = torch.randn(3, 16), torch.randn(3, 7, 16)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 3, 1])[:, None]
    for average_heads in (True, False):
        context, weights = layer(query, keys, keys, mask, average_heads=average_heads)
        stepped, stepped_weights = layer(
            query.unsqueeze(1), keys, keys, mask, average_heads=average_heads
        )
        torch.testing.assert_close(context, stepped.squeeze(1), rtol=0, atol=0)
        torch.testing.assert_close(weights, stepped_weights.squeeze(-2), rtol=0, atol=0)
        assert weights.shape == ((3, 7) if average_heads else (3, num_heads, 7))
    context, weights = layer(query, keys, keys, mask, need_weights=False)
    assert context.shape == (3, 16) and weights is None


def test_loading_from_a_torch_layer_of_another_shape_is_refused():
    for reference in (
        torch.nn.MultiheadAttention(16, 2, batch_first=True),
        torch.nn.MultiheadAttention(8, 4, batch_first=True),
    ):
        with pytest.raises(ValueError, match="must match the reference"):
            MultiHeadAttention(16, 4).load_from_torch(reference)


def test_multi_head_attention_refuses_zero_heads():
    from helpers.attention import MultiHeadAttention

    with pytest.raises(ValueError, match="at least 1"):
        MultiHeadAttention(8, 0)
    with pytest.raises(ValueError, match="must divide"):
        MultiHeadAttention(8, 3)


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_garbage_in_the_padding_never_reaches_multi_head_attention(need_weights, causal):
    """The explicit path and the fused one (``scaled_dot_product_attention``), with a
    padding mask (cross-attention) or padding and causal masks (``(B, T, S)``, as the
    Transformer's decoder self-attention): NaN or inf in the padded keys and values
    must leave the context as it is with clean padding."""
    torch.manual_seed(0)
    layer = MultiHeadAttention(D, 2).eval()
    _, keys, mask = make_inputs(steps=6)
    query = keys.clone()
    full_mask = mask
    if causal:
        full_mask = mask[:, None, :] & torch.ones(6, 6, dtype=torch.bool).tril()
    context, weights = layer(query, keys, keys, full_mask, need_weights=need_weights)
    for garbage in (float("nan"), float("inf")):
        dirty = keys.masked_fill(~mask.unsqueeze(-1), garbage)
        dirty_context, dirty_weights = layer(
            query, dirty, dirty, full_mask, need_weights=need_weights
        )
        assert bool(torch.isfinite(dirty_context).all()), f"{garbage} leaked into the context"
        torch.testing.assert_close(dirty_context, context)
        if need_weights:
            torch.testing.assert_close(dirty_weights, weights)


def test_garbage_in_the_padding_never_reaches_the_context(layer):
    query, keys, mask = make_inputs()
    context, weights = layer(query, keys, keys, mask)
    for garbage in (float("nan"), float("inf")):
        dirty = keys.masked_fill(~mask.unsqueeze(-1), garbage)  # keys and values alike
        dirty_context, dirty_weights = layer(query, dirty, dirty, mask)
        assert bool(torch.isfinite(dirty_context).all()), f"{garbage} leaked into the context"
        torch.testing.assert_close(dirty_context, context)
        torch.testing.assert_close(dirty_weights, weights)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_inputs_of_another_dtype_get_a_clear_error(name):
    """``torch.from_numpy`` gives float64: torch's own message ("expected m1 and m2 to
    have the same dtype", "expected scalar type Double but found Float") named neither
    input nor fix. Under autocast the products cast for themselves, so mixed dtypes pass."""
    layer = LAYERS[name]()
    query, keys, mask = make_inputs()
    positions = 2 if name == "local-m" else None
    with pytest.raises(ValueError, match="share one dtype, got torch.float64, torch.float32"):
        layer(query.double(), keys, keys, mask, positions=positions)
    with pytest.raises(ValueError, match="must hold floating-point numbers, got torch.int64"):
        layer(query, keys.long(), keys.long(), mask, positions=positions)
    doubles = (query.double(), keys.double(), keys.double(), mask)
    if any(True for _ in layer.parameters()):
        with pytest.raises(ValueError, match="inputs are torch.float64 but this layer's weights"):
            layer(*doubles, positions=positions)
    else:  # nothing to disagree with: float64 throughout is fine
        assert layer(*doubles, positions=positions)[0].dtype == torch.float64
    assert layer.double()(*doubles, positions=positions)[0].dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer.float()(query.bfloat16(), keys, keys, mask, positions=positions)
    # The meta device has no autocast to ask about, and needs none.
    on_meta = [tensor.to("meta") for tensor in (query, keys, keys, mask)]
    assert layer.to("meta")(*on_meta, positions=positions)[0].device.type == "meta"


def test_multi_head_attention_names_a_dtype_mismatch_too():
    layer = MultiHeadAttention(D, 2)
    query, keys, mask = make_inputs()
    with pytest.raises(ValueError, match="share one dtype"):
        layer(query.double(), keys, keys, mask)


def test_multi_head_and_local_m_arguments_of_the_wrong_kind_are_refused_clearly():
    """``MultiHeadAttention(8, 2.0)`` was accepted and failed in ``view``; ``key_size=0``
    quietly became ``embed_dim``; a dropout of 1.5 failed only in training; local-m's
    positions as a NumPy int, a float or a list met an AttributeError, and a tensor of
    the wrong length a bare expand error."""
    import numpy as np

    with pytest.raises(TypeError, match=r"num_heads must be an int, got 2.0"):
        MultiHeadAttention(8, 2.0)
    with pytest.raises(ValueError, match="key_size must be a whole number >= 1, got 0"):
        MultiHeadAttention(8, 2, key_size=0)
    for dropout in (-0.1, 1.5, "0.1", float("nan"), True):  # "0.1": a bare comparison
        with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\)"):
            MultiHeadAttention(8, 2, dropout=dropout)
    layer = LAYERS["local-m"]()
    query, keys, mask = make_inputs()
    single = query[:, 0]
    by_int = layer(single, keys, keys, mask, positions=2)
    by_numpy = layer(single, keys, keys, mask, positions=np.int64(2))
    assert torch.equal(by_int[1], by_numpy[1])
    for positions in (2.0, [0, 1, 2, 3]):
        with pytest.raises(TypeError, match="positions must be the decoder step"):
            layer(query, keys, keys, mask, positions=positions)
    with pytest.raises(ValueError, match=r"positions must be \(B, T\) = \(3, 4\) or \(T,\)"):
        layer(query, keys, keys, mask, positions=torch.arange(5))


def test_a_mask_with_fewer_axes_than_the_scores_is_refused_not_broadcast_wrongly():
    """A (B, S) mask over (B, T, S) scores with B == T broadcast without a word: each
    query step t got sentence t's mask. A 1-D mask (the same for every row) still
    broadcasts, and attention_entropy wants a bool mask as masked_softmax does."""
    scores = torch.randn(3, 3, 6)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 4, 2])[:, None]  # (B, S)
    with pytest.raises(ValueError, match=r"mask \(3, 6\) has fewer axes than scores"):
        masked_softmax(scores, mask)
    weights = masked_softmax(scores, mask[:, None, :])
    assert bool((weights[1, :, 4:] == 0).all()) and bool((weights[2, :, 2:] == 0).all())
    row_mask = torch.tensor([True, True, False, True, False, True])
    shared = masked_softmax(scores[0], row_mask)  # (T, S) scores, one (S,) mask for all rows
    assert bool((shared[:, ~row_mask] == 0).all())
    for dtype in (torch.float32, torch.long):
        with pytest.raises(TypeError, match="mask must be bool"):
            attention_entropy(weights, mask[:, None, :].to(dtype))


def test_layer_sizes_that_cannot_be_are_refused():
    """GeneralAttention(0) built empty weights and DotAttention(-3) kept its size;
    ConcatAttention's and AdditiveAttention's ``attention_size or query_size`` turned a 0
    into the query size, and AdditiveAttention(0, 8) built empty weights."""
    for build, name in (
        (lambda: AdditiveAttention(0, D), "query_size"),
        (lambda: AdditiveAttention(D, 0), "key_size"),
        (lambda: AdditiveAttention(D, 2.0), "key_size"),
        (lambda: AdditiveAttention(D, D, attention_size=0), "attention_size"),
        (lambda: GeneralAttention(0), "query_size"),
        (lambda: GeneralAttention(D, 0), "key_size"),
        (lambda: GeneralAttention(2.5), "query_size"),
        (lambda: ConcatAttention(D, attention_size=0), "attention_size"),
        (lambda: ConcatAttention("8"), "query_size"),
        (lambda: DotAttention(-3), "size"),
    ):
        with pytest.raises(ValueError, match=f"^{name} must be a whole number >= 1"):
            build()
    assert DotAttention().query_size is None  # no size: it is checked against the inputs
    assert ConcatAttention(D, 6, 5).W_a.weight.shape == (5, D + 6)
    additive = AdditiveAttention(D, 6, 5)
    assert additive.W_a.weight.shape == (5, D) and additive.U_a.weight.shape == (5, 6)
    assert AdditiveAttention(D, 6).v_a.weight.shape == (1, D)  # no attention_size: d_q
