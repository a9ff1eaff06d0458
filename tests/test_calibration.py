"""calibration: LayerStatistics sums equal hand-computed references, add exactly across sequences,
and the attention terms (g, a^2, a^2-weighted values) equal a per-query brute force (DESIGN.md
sections 3 and 5)."""

import numpy as np
import pytest
import torch

from oscar_cluster.calibration import MIN_CALIBRATION_TOKENS, LayerStatistics, collect_statistics, tokenize_corpus
from oscar_cluster.errors import CalibrationDataError, ConfigError

GQA = [(4, 2), (4, 4), (6, 2)]  # (query heads, KV heads)
HEAD_DIM = 8
HIDDEN = 12
SEQ_LEN = 19
SINKS = [0, 3]
STRIDES = [1, 3]
SCALINGS = [None, 0.2]
MOMENT_RTOL = 1e-5  # from_samples sums per-sequence products in float32


def inv_freq_for(d: int, base: float = 10000.0) -> torch.Tensor:
    return 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)


def sample(Hq: int, H: int, T: int = SEQ_LEN, d: int = HEAD_DIM, seed: int = 0):
    """q [T, Hq, d], k/v [T, H, d] float32, w_o [HIDDEN, Hq*d] float32."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(T, Hq, d, generator=g)
    k = torch.randn(T, H, d, generator=g) + 0.5
    v = torch.randn(T, H, d, generator=g) * 2 - 1
    w_o = torch.randn(HIDDEN, Hq * d, generator=g) / d
    return q, k, v, w_o


def rotation_matrices(positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """[P, d, d] RoPE rotations, rotate_half layout (j pairs with j + d/2)."""
    h = inv_freq.shape[0]
    ang = positions[:, None].astype(np.float64) * inv_freq[None, :]
    c, s = np.cos(ang), np.sin(ang)
    R = np.zeros((positions.shape[0], 2 * h, 2 * h))
    j = np.arange(h)
    R[:, j, j], R[:, j, j + h], R[:, j + h, j], R[:, j + h, j + h] = c, -s, s, c
    return R


def reference_moments(q, k, v, positions, sinks):
    """Plain float64 loops over kept tokens: per KV head h, query heads h*G .. h*G+G-1."""
    q, k, v = (t.double().numpy() for t in (q, k, v))
    T, Hq, d = q.shape
    H = k.shape[1]
    G = Hq // H
    ref = {n: np.zeros((H, d, d)) for n in ("q_sq", "k_sq", "v_sq")}
    ref.update({n: np.zeros((H, d)) for n in ("k_sum", "v_sum")})
    for t in range(T):
        if positions[t] < sinks:
            continue
        for h in range(H):
            for gq in range(h * G, (h + 1) * G):
                ref["q_sq"][h] += np.outer(q[t, gq], q[t, gq])
            ref["k_sum"][h] += k[t, h]
            ref["k_sq"][h] += np.outer(k[t, h], k[t, h])
            ref["v_sum"][h] += v[t, h]
            ref["v_sq"][h] += np.outer(v[t, h], v[t, h])
    ref["n_tokens"] = float(sum(int(p >= sinks) for p in positions))
    ref["n_queries"] = ref["n_tokens"] * G
    return ref


def reference_attention(q, k, v, w_o, positions, sinks, scale, stride=1):
    """Per query t (every stride-th row, position >= sinks) and query head g:
    a = softmax(q_t.k_i * scale, i causal), o = sum_i a_i v_i,
    g += sum_{i not sink} a_i^2 ||W_g (v_i - o)||^2, a2 += sum_{i not sink} a_i^2,
    and the a^2-weighted value moments."""
    q, k, v, w = (t.double().numpy() for t in (q, k, v, w_o))
    T, Hq, d = q.shape
    H = k.shape[1]
    G = Hq // H
    out = {"g_sum": np.zeros(H), "a2_sum": np.zeros(H), "vw_total": np.zeros(H),
           "vw_sum": np.zeros((H, d)), "vw_sq": np.zeros((H, d, d)), "n_attn": 0.0}
    for t in range(0, T, stride):
        if positions[t] < sinks:
            continue
        out["n_attn"] += G  # (query, query head) pairs per KV head
        for gq in range(Hq):
            h = gq // G
            W = w[:, gq * d:(gq + 1) * d]
            idx = [i for i in range(T) if positions[i] <= positions[t]]
            logits = np.array([q[t, gq] @ k[i, h] * scale for i in idx])
            a = np.exp(logits - logits.max())
            a /= a.sum()
            o = sum(ai * v[i, h] for ai, i in zip(a, idx))
            for ai, i in zip(a, idx):
                if positions[i] < sinks:
                    continue
                out["g_sum"][h] += ai ** 2 * np.sum((W @ (v[i, h] - o)) ** 2)
                out["a2_sum"][h] += ai ** 2
                out["vw_total"][h] += ai ** 2
                out["vw_sum"][h] += ai ** 2 * v[i, h]
                out["vw_sq"][h] += ai ** 2 * np.outer(v[i, h], v[i, h])
    return out


def close(got: torch.Tensor, ref, rtol=MOMENT_RTOL, atol=1e-9):
    """Entrywise within rtol of the largest reference entry (float32 sums cancel in small entries)."""
    ref = np.asarray(ref, dtype=np.float64)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=rtol * float(np.abs(ref).max()) + atol)


# ----- moments ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sinks", SINKS)
@pytest.mark.parametrize("Hq,H", GQA)
def test_moments_equal_reference(Hq, H, sinks):
    q, k, v, w_o = sample(Hq, H, seed=Hq + H)
    st = LayerStatistics.from_samples(q, k, v, w_o, layer=3, sinks=sinks)
    ref = reference_moments(q, k, v, list(range(SEQ_LEN)), sinks)
    assert (st.layer, st.num_q_heads, st.num_kv_heads, st.head_dim) == (3, Hq, H, HEAD_DIM)
    for name in ("q_sq", "k_sum", "k_sq", "v_sum", "v_sq"):
        assert getattr(st, name).dtype == torch.float64
        close(getattr(st, name), ref[name])
    assert float(st.n_tokens) == ref["n_tokens"] and float(st.n_queries) == ref["n_queries"]
    assert st.max_position == SEQ_LEN
    assert not st.has_pre_rope


def test_positions_decide_which_tokens_are_sinks():
    """A later chunk (positions 2..20) with sinks=4 drops only its first two tokens."""
    q, k, v, w_o = sample(4, 2, seed=9)
    pos = torch.arange(2, 2 + SEQ_LEN)
    st = LayerStatistics.from_samples(q, k, v, w_o, positions=pos, sinks=4)
    ref = reference_moments(q, k, v, pos.tolist(), 4)
    for name in ("q_sq", "k_sum", "k_sq", "v_sum", "v_sq"):
        close(getattr(st, name), ref[name])
    assert float(st.n_tokens) == SEQ_LEN - 2 and st.max_position == 2 + SEQ_LEN


@pytest.mark.parametrize("Hq,H", GQA)
def test_derived_moments(Hq, H):
    q, k, v, w_o = sample(Hq, H, T=40, seed=4)
    st = LayerStatistics.from_samples(q, k, v, w_o, sinks=2)
    qn, kn, vn = (t[2:].double().numpy() for t in (q, k, v))
    G = Hq // H
    for h in range(H):
        qh = qn[:, h * G:(h + 1) * G].reshape(-1, HEAD_DIM)
        close(st.query_moment[h], qh.T @ qh / qh.shape[0])
        close(st.key_mean_cov()[0][h], kn[:, h].mean(0))
        close(st.key_mean_cov()[1][h], np.cov(kn[:, h].T, bias=True), atol=1e-6)
        close(st.value_mean_cov()[1][h], np.cov(vn[:, h].T, bias=True), atol=1e-6)
        W = w_o.double().numpy()
        M = sum(W[:, g * HEAD_DIM:(g + 1) * HEAD_DIM].T @ W[:, g * HEAD_DIM:(g + 1) * HEAD_DIM]
                for g in range(h * G, (h + 1) * G))
        close(st.w_o_gram[h], M, rtol=1e-12)


@pytest.mark.parametrize("Hq,H", GQA)
def test_pre_rope_moments_undo_rope(Hq, H):
    """q, k built post-RoPE from known pre-RoPE tensors: q_pre_sq / k_pre_* are their moments."""
    g = torch.Generator().manual_seed(21)
    T, d, sinks = 30, HEAD_DIM, 40
    pos = torch.arange(T) * 37  # spread positions so every plane turns; sinks drop p = 0 and 37
    inv = inv_freq_for(d)
    q_pre = torch.randn(T, Hq, d, generator=g, dtype=torch.float64)
    k_pre = torch.randn(T, H, d, generator=g, dtype=torch.float64) + 1.0
    R = torch.from_numpy(rotation_matrices(pos.numpy(), inv.numpy()))
    q = torch.einsum("tij,thj->thi", R, q_pre).float()
    k = torch.einsum("tij,thj->thi", R, k_pre).float()
    v = torch.randn(T, H, d, generator=g)
    st = LayerStatistics.from_samples(q, k, v, None, positions=pos, sinks=sinks, inv_freq=inv)
    assert st.has_pre_rope and torch.equal(st.inv_freq, inv)
    # reference: R_p^T applied to the float32 post-RoPE inputs, in float64
    Rn = R.numpy()
    keep = (pos >= sinks).numpy()
    assert keep.sum() == T - 2
    qp = np.einsum("tji,thj->thi", Rn, q.double().numpy())[keep]
    kp = np.einsum("tji,thj->thi", Rn, k.double().numpy())[keep]
    G = Hq // H
    for h in range(H):
        qh = qp[:, h * G:(h + 1) * G].reshape(-1, d)
        close(st.q_pre_sq[h], qh.T @ qh, rtol=1e-5, atol=1e-5)
        close(st.k_pre_sum[h], kp[:, h].sum(0), rtol=1e-5, atol=1e-5)
        close(st.k_pre_sq[h], kp[:, h].T @ kp[:, h], rtol=1e-5, atol=1e-5)
        # and they are the moments of the original pre-RoPE tensors (to float32 rounding)
        qo = q_pre[keep][:, h * G:(h + 1) * G].reshape(-1, d).numpy()
        close(st.q_pre_sq[h], qo.T @ qo, rtol=1e-4, atol=1e-4)
    # post-RoPE moments differ from the pre-RoPE ones (the test would be vacuous otherwise)
    assert float((st.k_pre_sq - st.k_sq).abs().max()) > 1.0


# ----- attention terms ----------------------------------------------------------------------------
@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("sinks", SINKS)
@pytest.mark.parametrize("Hq,H", GQA)
def test_attention_terms_equal_brute_force(Hq, H, sinks, stride, scaling):
    q, k, v, w_o = sample(Hq, H, seed=7 * Hq + H)
    q = q * 2  # peakier attention, so a^2 differs from a visibly
    st = LayerStatistics.from_samples(q, k, v, w_o, sinks=sinks, scaling=scaling, query_stride=stride,
                                      query_chunk=5)
    scale = scaling if scaling is not None else HEAD_DIM ** -0.5
    ref = reference_attention(q, k, v, w_o, list(range(SEQ_LEN)), sinks, scale, stride)
    assert float(st.n_attn) == ref["n_attn"]
    for name in ("g_sum", "a2_sum", "vw_total", "vw_sum", "vw_sq"):
        close(getattr(st, name), ref[name], rtol=1e-5, atol=1e-6)
    assert float(st.g_sum.min()) > 0 and float(st.a2_sum.min()) > 0


def test_attention_terms_without_w_o_use_identity():
    q, k, v, _ = sample(4, 2, seed=3)
    st = LayerStatistics.from_samples(q, k, v, None, sinks=2)
    eye_w = torch.eye(4 * HEAD_DIM)  # W_g = columns of I: ||W_g x|| = ||x||
    ref = reference_attention(q, k, v, eye_w, list(range(SEQ_LEN)), 2, HEAD_DIM ** -0.5)
    close(st.g_sum, ref["g_sum"], rtol=1e-5, atol=1e-6)
    close(st.w_o_gram, np.stack([2 * np.eye(HEAD_DIM)] * 2), rtol=0, atol=0)


def test_query_chunk_does_not_change_sums():
    q, k, v, w_o = sample(4, 2, T=40, seed=5)
    a = LayerStatistics.from_samples(q, k, v, w_o, sinks=3, query_chunk=7)
    b = LayerStatistics.from_samples(q, k, v, w_o, sinks=3, query_chunk=512)
    for name in ("g_sum", "a2_sum", "vw_sq"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-6, atol=1e-9)


# ----- merging ------------------------------------------------------------------------------------
def test_two_sequences_add_exactly_and_match_joint_reference():
    inv = inv_freq_for(HEAD_DIM)
    qa, ka, va, w_o = sample(4, 2, T=SEQ_LEN, seed=11)
    qb, kb, vb, _ = sample(4, 2, T=SEQ_LEN + 6, seed=12)
    a = LayerStatistics.from_samples(qa, ka, va, w_o, layer=1, sinks=2, inv_freq=inv)
    b = LayerStatistics.from_samples(qb, kb, vb, w_o, layer=1, sinks=2, inv_freq=inv)
    ab = a + b
    for name, t in ab.tensors().items():
        if name in ("w_o_gram", "inv_freq"):
            continue
        assert torch.equal(t, getattr(a, name) + getattr(b, name)), name
    assert torch.equal(ab.w_o_gram, a.w_o_gram) and torch.equal(ab.inv_freq, inv)
    assert ab.has_pre_rope and ab.max_position == SEQ_LEN + 6 and ab.layer == 1
    # the merged sums equal references over both sequences (each causal on its own)
    ra, rb = reference_moments(qa, ka, va, range(SEQ_LEN), 2), reference_moments(qb, kb, vb, range(SEQ_LEN + 6), 2)
    for name in ("q_sq", "k_sum", "k_sq", "v_sq"):
        close(getattr(ab, name), ra[name] + rb[name])
    sa = reference_attention(qa, ka, va, w_o, range(SEQ_LEN), 2, HEAD_DIM ** -0.5)
    sb = reference_attention(qb, kb, vb, w_o, range(SEQ_LEN + 6), 2, HEAD_DIM ** -0.5)
    close(ab.g_sum, sa["g_sum"] + sb["g_sum"], rtol=1e-5)
    assert float(ab.n_attn) == sa["n_attn"] + sb["n_attn"]


def test_zeros_is_the_identity_of_addition():
    q, k, v, w_o = sample(4, 2, seed=1)
    a = LayerStatistics.from_samples(q, k, v, w_o, layer=2, sinks=1, inv_freq=inv_freq_for(HEAD_DIM))
    for s in (LayerStatistics.zeros(2, 4, 2, HEAD_DIM) + a, a + LayerStatistics.zeros(2, 4, 2, HEAD_DIM)):
        for name, t in a.tensors().items():
            assert torch.equal(getattr(s, name), t), name
        assert s.has_pre_rope and s.max_position == a.max_position


def test_pre_rope_flag_needs_both_sides():
    q, k, v, w_o = sample(4, 2, seed=1)
    a = LayerStatistics.from_samples(q, k, v, w_o, inv_freq=inv_freq_for(HEAD_DIM))
    b = LayerStatistics.from_samples(q, k, v, w_o)
    assert not (a + b).has_pre_rope and not (b + a).has_pre_rope


@pytest.mark.parametrize("other", [dict(layer=1), dict(Hq=6), dict(H=4)])
def test_adding_different_layers_or_layouts_raises(other):
    q, k, v, w_o = sample(4, 2, seed=1)
    a = LayerStatistics.from_samples(q, k, v, w_o, layer=0)
    qb, kb, vb, wb = sample(other.get("Hq", 4), other.get("H", 2), seed=2)
    b = LayerStatistics.from_samples(qb, kb, vb, wb, layer=other.get("layer", 0))
    with pytest.raises(ConfigError, match="cannot add statistics"):
        a + b


# ----- input errors ---------------------------------------------------------------------------------
def test_shape_errors():
    q, k, v, w_o = sample(4, 2)
    with pytest.raises(ConfigError, match="do not match"):
        LayerStatistics.from_samples(q, k[:-1], v[:-1], w_o)
    with pytest.raises(ConfigError, match="do not match"):
        LayerStatistics.from_samples(q, k, v[..., :4], w_o)
    with pytest.raises(ConfigError, match="not a multiple of KV heads"):
        LayerStatistics.from_samples(q, torch.randn(SEQ_LEN, 3, HEAD_DIM), torch.randn(SEQ_LEN, 3, HEAD_DIM), w_o)
    with pytest.raises(ConfigError, match="w_o must be"):
        LayerStatistics.from_samples(q, k, v, w_o[:, :-1])


def test_too_few_tokens_for_covariance():
    q, k, v, w_o = sample(4, 2, T=5)
    st = LayerStatistics.from_samples(q, k, v, w_o, sinks=4)  # one token left
    with pytest.raises(CalibrationDataError, match="calibration tokens"):
        st.key_mean_cov()


# ----- collect_statistics: too little text --------------------------------------------------------
class CharTokenizer:
    """One token per character; EOS = 0."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + (ord(c) % 100) for c in text]}


class UntouchableModel:
    """Fails the test on any use: collect_statistics must reject the text first."""

    def __getattr__(self, name):
        raise AssertionError(f"model.{name} touched before the text was checked")

    def __call__(self, *a, **kw):
        raise AssertionError("model called before the text was checked")


def test_tokenize_corpus_joins_with_eos_and_truncates():
    tok = CharTokenizer()
    ids = tokenize_corpus(tok, ["ab", "c"], 100)
    assert ids.tolist() == tok("ab")["input_ids"] + [0] + tok("c")["input_ids"] + [0]
    assert tokenize_corpus(tok, ["abcdef", "gh"], 4).tolist() == tok("abcd")["input_ids"]


@pytest.mark.parametrize("texts", [[], ["short text"], ["x" * (MIN_CALIBRATION_TOKENS // 2 - 1), "y" * (MIN_CALIBRATION_TOKENS // 2 - 2)]])
def test_too_little_text_raises_first(texts):
    n = sum(len(t) + 1 for t in texts)
    assert n < MIN_CALIBRATION_TOKENS
    with pytest.raises(CalibrationDataError, match=f"gave {n} tokens; at least {MIN_CALIBRATION_TOKENS}"):
        collect_statistics(UntouchableModel(), CharTokenizer(), texts, progress=False)


def test_enough_text_passes_the_check():
    """The same check passes at exactly MIN_CALIBRATION_TOKENS tokens (and then uses the model)."""
    texts = ["x" * (MIN_CALIBRATION_TOKENS - 1)]
    with pytest.raises(AssertionError, match="touched"):
        collect_statistics(UntouchableModel(), CharTokenizer(), texts, progress=False)
