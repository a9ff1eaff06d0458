"""Calibration statistics: per layer and KV head, sums that add across shards (DESIGN.md section 5).

`LayerStatistics.from_samples(q, k, v, w_o)` turns one causal sequence of post-RoPE queries, keys
and values into sums; `a + b` merges shards exactly. `collect_statistics(model, tokenizer, texts)`
runs a transformers model over calibration text and captures q, k, v through the
attention-function interface. Sink tokens (the first `sinks` positions of every sequence, kept in
bf16 by every codec) are excluded from every moment.

What is summed, per KV head h with GQA group G and head dim d:
  q_sq      [H, d, d]  sum over tokens and the G query heads of q q^T (post-RoPE)
  k_sum/k_sq, v_sum/v_sq   [H, d], [H, d, d]   key / value first and second moments (post-RoPE keys)
  q_pre_sq, k_pre_sum, k_pre_sq   the same with RoPE undone (for the closed-form position average)
  vw_sum/vw_sq/vw_total   values weighted by a_i^2, the squared attention they receive
  kw_sum/kw_sq/kw_total   pre-RoPE keys weighted by a_i^2 ||W_o,g (v_i - o)||^2, their share of g
  g_sum     [H]  sum over queries of sum_i a_i^2 ||W_o,g (v_i - o)||^2 (key-error cost scale)
  a2_sum    [H]  sum over queries of sum_i a_i^2 (value-error cost scale)
  w_o_gram  [H, d, d]  sum_g W_o,g^T W_o,g over the group (a weight property, not a sum over data)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields

import torch

from .errors import CalibrationDataError, ConfigError
from .capture import attention_modules, capturing, model_dims, rope_inv_freq
from .rope import unapply_rope

__all__ = ["LayerStatistics", "collect_statistics", "calibration_sequences", "tokenize_corpus", "corpus_hash",
           "MIN_CALIBRATION_TOKENS"]

MIN_CALIBRATION_TOKENS = 1024
_SUM_FIELDS = (
    "q_sq", "k_sum", "k_sq", "v_sum", "v_sq", "q_pre_sq", "k_pre_sum", "k_pre_sq",
    "vw_sum", "vw_sq", "vw_total", "kw_sum", "kw_sq", "kw_total", "g_sum", "a2_sum", "n_tokens", "n_queries", "n_attn",
)


def _gram(x: torch.Tensor) -> torch.Tensor:
    """x: [N, H, d] -> sum_n x x^T per head: [H, d, d] float64."""
    xh = x.transpose(0, 1)
    return (xh.transpose(1, 2) @ xh).double().cpu()


@dataclass
class LayerStatistics:
    """Sums for one layer (see module docstring); tensors are float64 on CPU."""

    layer: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    n_tokens: torch.Tensor  # [] keys/values counted
    n_queries: torch.Tensor  # [] (query token, query head) pairs counted per KV head
    n_attn: torch.Tensor  # [] (query token, query head) pairs in the attention sums (g, a2, vw)
    q_sq: torch.Tensor
    k_sum: torch.Tensor
    k_sq: torch.Tensor
    v_sum: torch.Tensor
    v_sq: torch.Tensor
    q_pre_sq: torch.Tensor
    k_pre_sum: torch.Tensor
    k_pre_sq: torch.Tensor
    vw_sum: torch.Tensor
    vw_sq: torch.Tensor
    vw_total: torch.Tensor  # [H]
    kw_sum: torch.Tensor  # [H, d]
    kw_sq: torch.Tensor  # [H, d, d]
    kw_total: torch.Tensor  # [H]
    g_sum: torch.Tensor  # [H]
    a2_sum: torch.Tensor  # [H]
    w_o_gram: torch.Tensor  # [H, d, d]
    has_pre_rope: bool = False
    inv_freq: torch.Tensor | None = None  # [d/2] RoPE frequencies, when pre-RoPE moments were recorded
    max_position: int = 0  # 1 + the largest position seen (the calibrated context)

    # ----- construction ----------------------------------------------------------------------
    @classmethod
    def zeros(cls, layer: int, num_q_heads: int, num_kv_heads: int, head_dim: int) -> "LayerStatistics":
        H, d = num_kv_heads, head_dim
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
        return cls(layer, num_q_heads, num_kv_heads, head_dim, z(()), z(()), z(()),
                   z(H, d, d), z(H, d), z(H, d, d), z(H, d), z(H, d, d), z(H, d, d), z(H, d), z(H, d, d),
                   z(H, d), z(H, d, d), z(H), z(H, d), z(H, d, d), z(H), z(H), z(H), z(H, d, d))

    @classmethod
    def from_samples(
        cls,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        w_o: torch.Tensor | None = None,
        *,
        layer: int = 0,
        positions: torch.Tensor | None = None,
        sinks: int = 0,
        inv_freq: torch.Tensor | None = None,
        scaling: float | None = None,
        query_chunk: int = 512,
        query_stride: int = 1,
    ) -> "LayerStatistics":
        """Sums from one causal sequence.

        q: [tokens, q_heads, d] post-RoPE; k, v: [tokens, kv_heads, d]; w_o: [hidden, q_heads*d]
        (None: identity per head); positions: [tokens] (default 0..T-1); tokens at positions <
        `sinks` are excluded; inv_freq: [d/2] RoPE frequencies to also record pre-RoPE moments;
        query_stride: the attention sums (g, a2, weighted values) use every query_stride-th query,
        an unbiased subsample that keeps calibration fast (moments use every token).
        """
        T, Hq, d = q.shape
        Tk, H, dk = k.shape
        if Tk != T or v.shape != k.shape or dk != d:
            raise ConfigError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match")
        if Hq % H:
            raise ConfigError(f"query heads {Hq} are not a multiple of KV heads {H}")
        G = Hq // H
        st = cls.zeros(layer, Hq, H, d)
        dev = q.device  # per-sample products run where q lives (GPU when calibrating on one)
        pos = torch.arange(T, device=dev) if positions is None else torch.as_tensor(positions).to(dev)
        keep = pos >= sinks
        # Per-sample products in float32 (matmuls), accumulated in float64.
        qd, kd, vd = (t.detach().float().to(dev) for t in (q, k, v))
        st.n_tokens += float(keep.sum())
        st.n_queries += float(keep.sum()) * G
        st.max_position = int(pos.max()) + 1 if T else 0
        st.q_sq += _gram(qd.reshape(T, H, G, d)[keep].transpose(1, 2).reshape(-1, H, d))
        st.k_sum += kd[keep].sum(0).double().cpu()
        st.k_sq += _gram(kd[keep])
        st.v_sum += vd[keep].sum(0).double().cpu()
        st.v_sq += _gram(vd[keep])
        if inv_freq is not None:
            st.has_pre_rope = True
            st.inv_freq = inv_freq.detach().double().cpu()
            qp = unapply_rope(qd, pos, st.inv_freq).reshape(T, H, G, d)[keep]
            k_pre_all = unapply_rope(kd, pos, st.inv_freq)
            kp = k_pre_all[keep]
            st.q_pre_sq += _gram(qp.transpose(1, 2).reshape(-1, H, d))
            st.k_pre_sum += kp.sum(0).double().cpu()
            st.k_pre_sq += _gram(kp)
        # Per-query-head output metric M_g = W_g^T W_g.
        if w_o is None:
            m_g = torch.eye(d, dtype=torch.float64).expand(Hq, d, d)
        else:
            w = w_o.detach().double().cpu()
            if w.shape[1] != Hq * d:
                raise ConfigError(f"w_o must be [hidden, {Hq * d}], got {tuple(w.shape)}")
            wg = w.reshape(w.shape[0], Hq, d).permute(1, 0, 2)  # [Hq, hidden, d]
            m_g = wg.transpose(1, 2) @ wg
        st.w_o_gram = m_g.reshape(H, G, d, d).sum(1).clone()
        k_for_weights = k_pre_all if inv_freq is not None else kd
        st._accumulate_attention(qd, kd, vd, m_g, pos, sinks, scaling or d ** -0.5, query_chunk, query_stride,
                                 k_for_weights)
        return st

    def _accumulate_attention(self, q, k, v, m_g, pos, sinks, scale, chunk, stride, k_w) -> None:
        """Adds g_sum, a2_sum and the a^2-weighted value moments from exact causal attention
        (float32 matmuls, float64 sums)."""
        T, Hq, d = q.shape
        H = k.shape[1]
        G = Hq // H
        dev = q.device
        rows = torch.arange(0, T, stride, device=dev)
        rows = rows[pos[rows] >= sinks]  # queries past the sinks
        qpos = pos[rows]
        qf = q[rows].float().reshape(len(rows), H, G, d).permute(1, 2, 0, 3)  # [H, G, Tq, d]
        self.n_attn += float(len(rows) * G)
        kf = k.float().permute(1, 0, 2)  # [H, T, d]
        vf = v.float().permute(1, 0, 2)
        mg = m_g.float().to(dev).reshape(H, G, d, d)
        vM = torch.einsum("hkd,hgde->hgke", vf, mg)  # [H, G, T, d]
        vMv = (vM * vf[:, None]).sum(-1)  # [H, G, T]
        sink_key = pos < sinks
        w_key = torch.zeros(H, T, dtype=torch.float64, device=dev)
        g_key = torch.zeros(H, T, dtype=torch.float64, device=dev)  # per key: sum_q a^2 ||W (v - o)||^2
        for s in range(0, len(rows), chunk):
            e = min(len(rows), s + chunk)
            logits = (qf[:, :, s:e] @ kf[:, None].transpose(-1, -2)) * scale  # [H, G, Tq, T]
            causal = pos[None, :] <= qpos[s:e, None]
            a = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
            o = a @ vf[:, None]  # [H, G, Tq, d]
            p = (a * a).masked_fill(sink_key, 0.0)  # sinks stay bf16: no error there
            oM = o @ mg  # [H, G, Tq, d]
            term1 = (p @ vMv[..., None])[..., 0]
            term2 = 2 * ((p @ vf[:, None]) * oM).sum(-1)
            term3 = p.sum(-1) * (oM * o).sum(-1)
            self.g_sum += (term1 - term2 + term3).double().sum((1, 2)).cpu()
            pt = p.transpose(-1, -2)  # [H, G, T, Tq]
            per_key = (vMv * p.sum(-2) - 2 * ((pt @ oM) * vf[:, None]).sum(-1)
                       + (pt @ (oM * o).sum(-1, keepdim=True))[..., 0])  # [H, G, T]
            g_key += per_key.double().sum(1)
            self.a2_sum += p.double().sum((1, 2, 3)).cpu()
            w_key += p.double().sum((1, 2))
        vd = v.double()
        self.vw_total += w_key.sum(1).cpu()
        self.vw_sum += torch.einsum("hk,khd->hd", w_key, vd).cpu()
        self.vw_sq += torch.einsum("hk,khi,khj->hij", w_key, vd, vd).cpu()
        kd = k_w.double()
        self.kw_total += g_key.sum(1).cpu()
        self.kw_sum += torch.einsum("hk,khd->hd", g_key, kd).cpu()
        self.kw_sq += torch.einsum("hk,khi,khj->hij", g_key, kd, kd).cpu()

    # ----- merging ---------------------------------------------------------------------------
    def __add__(self, other: "LayerStatistics") -> "LayerStatistics":
        if (self.layer, self.num_q_heads, self.num_kv_heads, self.head_dim) != (
            other.layer, other.num_q_heads, other.num_kv_heads, other.head_dim):
            raise ConfigError(f"cannot add statistics of layer {self.layer} and layer {other.layer} "
                              "(or of different head layouts)")
        out = LayerStatistics.zeros(self.layer, self.num_q_heads, self.num_kv_heads, self.head_dim)
        for name in _SUM_FIELDS:
            setattr(out, name, getattr(self, name) + getattr(other, name))
        out.w_o_gram = self.w_o_gram if float(self.n_tokens) > 0 else other.w_o_gram
        empty_self, empty_other = float(self.n_tokens) == 0, float(other.n_tokens) == 0
        out.has_pre_rope = (self.has_pre_rope or empty_self) and (other.has_pre_rope or empty_other)
        out.inv_freq = self.inv_freq if self.inv_freq is not None else other.inv_freq
        out.max_position = max(self.max_position, other.max_position)
        return out

    # ----- derived moments -------------------------------------------------------------------
    def _n(self) -> float:
        n = float(self.n_tokens)
        if n < 2:
            raise CalibrationDataError(f"layer {self.layer}: only {n:.0f} calibration tokens; need more text")
        return n

    @property
    def query_moment(self) -> torch.Tensor:
        """E[q q^T] per KV head over its query group: [H, d, d]."""
        return self.q_sq / float(self.n_queries)

    def key_mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean [H, d], covariance [H, d, d]) of post-RoPE keys at the calibration positions."""
        n = self._n()
        m = self.k_sum / n
        return m, self.k_sq / n - m[:, :, None] * m[:, None, :]

    def value_mean_cov(self, weighted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Value mean and covariance; weighted=True uses the a^2 attention weights."""
        if weighted:
            w = self.vw_total.clamp_min(1e-30)[:, None]
            m = self.vw_sum / w
            return m, self.vw_sq / w[..., None] - m[:, :, None] * m[:, None, :]
        n = self._n()
        m = self.v_sum / n
        return m, self.v_sq / n - m[:, :, None] * m[:, None, :]

    @property
    def g(self) -> torch.Tensor:
        """Mean key-error cost scale per KV head (per query): [H]."""
        return self.g_sum / max(float(self.n_attn), 1.0)

    @property
    def a2(self) -> torch.Tensor:
        """Mean sum_i a_i^2 per query: [H]."""
        return self.a2_sum / max(float(self.n_attn), 1.0)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}


# ----- collection from a transformers model ----------------------------------------------------
def tokenize_corpus(tokenizer, texts: list[str], max_tokens: int) -> torch.Tensor:
    """Concatenate texts (EOS between them) into one token stream of at most max_tokens: [n] long."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if len(ids) >= max_tokens:
            break
    return torch.tensor(ids[:max_tokens], dtype=torch.long)


def corpus_hash(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def calibration_sequences(tokenizer, texts: list[str], max_tokens: int, seq_len: int) -> list[torch.Tensor]:
    """One token stream of at most `max_tokens`, cut into `seq_len` pieces; a tail shorter than
    min(256, seq_len) is dropped. Each: [T] long. Needs MIN_CALIBRATION_TOKENS tokens."""
    stream = tokenize_corpus(tokenizer, texts, max_tokens)
    if stream.numel() < MIN_CALIBRATION_TOKENS:
        raise CalibrationDataError(
            f"calibration text gave {stream.numel()} tokens; at least {MIN_CALIBRATION_TOKENS} are needed "
            f"(more is better: cover the target context, e.g. 16K-32K tokens); add more text files")
    seqs = [stream[i:i + seq_len] for i in range(0, stream.numel(), seq_len)]
    return [s for s in seqs if s.numel() >= min(256, seq_len)]


def collect_statistics(
    model,
    tokenizer,
    texts: list[str],
    max_tokens: int = 16384,
    seq_len: int = 2048,
    sinks: int = 4,
    query_stride: int = 8,
    progress: bool = True,
) -> list[LayerStatistics]:
    """Run `model` over calibration text and return one `LayerStatistics` per layer.

    The text is tokenized into one stream of up to `max_tokens` tokens and cut into sequences of
    `seq_len` (a shorter tail of at least 256 tokens is kept). Needs at least
    MIN_CALIBRATION_TOKENS tokens.
    """
    from tqdm.auto import tqdm

    seqs = calibration_sequences(tokenizer, texts, max_tokens, seq_len)
    _, Hq, H, d = model_dims(model)
    attn = attention_modules(model)
    inv_freq = rope_inv_freq(model)
    stats = {m.layer_idx: LayerStatistics.zeros(m.layer_idx, Hq, H, d) for m in attn}
    w_o = {m.layer_idx: m.o_proj.weight for m in attn}
    device = next(model.parameters()).device

    def collect(layer, query, key, value, scaling):
        # query: [1, Hq, T, d]; key/value: [1, H, T, d] (no cache during calibration)
        stats[layer] = stats[layer] + LayerStatistics.from_samples(
            query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),
            w_o[layer], layer=layer, sinks=sinks, inv_freq=inv_freq, scaling=scaling,
            query_stride=query_stride)

    with capturing(model, collect), torch.inference_mode():
        for s in tqdm(seqs, desc="calibration", unit="seq", disable=not progress):
            model(s[None].to(device), use_cache=False)
    return [stats[m.layer_idx] for m in attn]
