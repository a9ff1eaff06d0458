"""The OSCAR impl (store + attend, the work of do_kv_cache_update and forward) on a simulated vLLM
schedule, against an independent reference.

The schedule mixes what vLLM sends in one batch: chunked prefills (the first chunk shorter than
the sinks), decodes, a sequence joining later, shuffled block ids, padding tokens. The reference
keeps each sequence's history itself and, per step, encodes and decodes it with the codec's public
`encode`/`decode` (sinks kept raw in bf16, as OscarCache does), then attends exactly in float64:
fresh tokens causally in full precision, earlier ones as decoded. Nothing of the backend's pages,
metadata or sink pool is used by it.
"""

import pytest
import torch
from vllm_support import fitted_codec, needs_vllm

needs_vllm()

from vllm.v1.attention.backend import CommonAttentionMetadata  # noqa: E402

from oscar_cluster.errors import ConfigError  # noqa: E402
from oscar_cluster.kernels.layout import layer_tables  # noqa: E402
from oscar_cluster.vllm_plugin.impl import LayerState, OscarAttentionImpl, packed_pages  # noqa: E402
from oscar_cluster.vllm_plugin.metadata import SinkGroup, build_metadata  # noqa: E402
from oscar_cluster.vllm_plugin.sinks import SinkRows  # noqa: E402
from oscar_cluster.vllm_plugin.tp import shard_codec  # noqa: E402

D, H, HQ, BS, NB = 64, 2, 6, 8, 48
LAYER = 1
SCALE = D ** -0.5
# per step: {sequence: new tokens}; "c" joins at step 2; "b"'s prompt (3) is shorter than the 4 sinks
SCHEDULE = [{"a": 10, "b": 3}, {"a": 11, "b": 1, "c": 5}, {"a": 1, "b": 1, "c": 8}, {"a": 1, "b": 1, "c": 1},
            {"c": 1, "a": 1}, {"b": 1, "a": 1, "c": 1}]
PAD = 3  # padding tokens after the real ones (slot -1)


@pytest.fixture(scope="module")
def codec():
    return fitted_codec(D, H, HQ, layers=2, seed=5)


class Scheduler:
    """What vLLM's scheduler and model runner hand the backend: blocks, slots, CommonAttentionMetadata."""

    def __init__(self, seed: int):
        self.free = torch.randperm(NB, generator=torch.Generator().manual_seed(seed)).tolist()
        self.blocks: dict[str, list[int]] = {}
        self.length: dict[str, int] = {}

    def step(self, work: dict[str, int]) -> tuple[CommonAttentionMetadata, list[tuple[str, int, int]]]:
        """-> (metadata, [(sequence, prefix, new tokens)] in batch order)."""
        batch, slots, starts, seq_lens = [], [], [0], []
        for name, n in work.items():
            P = self.length.get(name, 0)
            blocks = self.blocks.setdefault(name, [])
            while len(blocks) * BS < P + n:
                blocks.append(self.free.pop())
            slots += [blocks[p // BS] * BS + p % BS for p in range(P, P + n)]
            starts.append(starts[-1] + n)
            seq_lens.append(P + n)
            self.length[name] = P + n
            batch.append((name, P, n))
        width = max(len(self.blocks[name]) for name, _, _ in batch)
        bt = torch.zeros(len(batch), width + 1, dtype=torch.int32)
        for b, (name, _, _) in enumerate(batch):
            bt[b, :len(self.blocks[name])] = torch.tensor(self.blocks[name])
        qsl = torch.tensor(starts, dtype=torch.int32)
        cam = CommonAttentionMetadata(
            query_start_loc=qsl, query_start_loc_cpu=qsl.clone(), seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            num_reqs=len(batch), num_actual_tokens=starts[-1] + PAD, max_query_len=max(work.values()),
            max_seq_len=max(seq_lens), block_table_tensor=bt,
            slot_mapping=torch.tensor(slots + [-1] * PAD, dtype=torch.int64))
        return cam, batch


def _impl(codec, heads=slice(0, H), rows=16, use_kernels=False):
    rank = shard_codec(codec, heads.start, heads.stop - heads.start)
    n = heads.stop - heads.start
    impl = OscarAttentionImpl(HQ * n // H, D, SCALE, n)
    tables = layer_tables(rank, LAYER)
    pool = torch.zeros(rows, codec.sinks, n, D, dtype=torch.bfloat16)
    group = SinkGroup(rows=SinkRows(rows), sinks=codec.sinks)
    impl.attach(LayerState(name=f"model.layers.{LAYER}.self_attn.attn", index=LAYER, codec=rank, tables=tables,
                           sink_k=pool, sink_v=torch.zeros_like(pool), group=group, use_kernels=use_kernels))
    pages = torch.full((NB, BS, n, tables.slot_bytes), 0xA5, dtype=torch.uint8)  # poisoned: unwritten bytes show
    return impl, pages


def _tokens(g, n):
    q = torch.randn(n, HQ, D, generator=g)
    k = torch.randn(n, H, D, generator=g) * 1.5 + 0.5
    k[..., :4] = k[..., :4] * 4 + 3.0
    v = torch.randn(n, H, D, generator=g)
    return q, k, v


def _reference(codec, hist_k, hist_v, q, k, v, sinks_raw=True):
    """Exact attention of fresh tokens (q, k, v) after P earlier ones (hist, bf16 values)."""
    P = hist_k.shape[0]
    if P:
        pos = torch.arange(P)
        if sinks_raw:
            kd = codec.decode(codec.encode(hist_k.float(), "k", LAYER, pos))
            vd = codec.decode(codec.encode(hist_v.float(), "v", LAYER, pos))
        else:  # every earlier token through the codes, the sinks too
            kd = codec._decode(codec._encode(hist_k.float(), "k", LAYER, positions=pos), "k", LAYER, P, H, D)
            vd = codec._decode(codec._encode(hist_v.float(), "v", LAYER, positions=pos), "v", LAYER, P, H, D)
        k, v = torch.cat([kd, k]), torch.cat([vd, v])
    n, G = q.shape[0], HQ // H
    kk, vv = k.double().repeat_interleave(G, 1), v.double().repeat_interleave(G, 1)
    s = torch.einsum("nhd,lhd->hnl", q.double(), kk) * SCALE
    causal = torch.arange(P + n)[None, :] <= (P + torch.arange(n))[:, None]
    s = s.masked_fill(~causal[None], float("-inf"))
    return torch.einsum("hnl,lhd->nhd", s.softmax(-1), vv).float()


def _run(codec, impls, seed=0, sinks_raw=lambda name: True):
    """Run SCHEDULE through `impls` [(impl, pages, kv heads, q heads)]; compare every step's output with
    the reference. Returns the largest error and the outputs per step."""
    g = torch.Generator().manual_seed(seed)
    sched = Scheduler(seed)
    hist: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    worst, outs = 0.0, []
    for work in SCHEDULE:
        cam, batch = sched.step(work)
        T = cam.num_actual_tokens
        q, k, v = _tokens(g, T)
        step_out = []
        for impl, pages, kv, qh in impls:
            md = build_metadata(cam, impl.state.group, torch.device("cpu"))
            out = torch.full((T, qh.stop - qh.start, D), float("nan"))
            impl.store(md, k[:, kv], v[:, kv], cam.slot_mapping, pages)
            impl.attend(md, q[:, qh], k[:, kv], v[:, kv], pages, out)
            step_out.append(out)
        got = torch.cat(step_out, dim=1)
        outs.append(got)
        for name, P, n in batch:
            lo = int(cam.query_start_loc[[n_ for n_, _, _ in batch].index(name)])
            hk, hv = hist.get(name, (torch.empty(0, H, D, dtype=torch.bfloat16),) * 2)
            want = _reference(codec, hk, hv, q[lo:lo + n], k[lo:lo + n], v[lo:lo + n], sinks_raw(name))
            worst = max(worst, float((got[lo:lo + n] - want).abs().max()))
            hist[name] = (torch.cat([hk, k[lo:lo + n].bfloat16()]), torch.cat([hv, v[lo:lo + n].bfloat16()]))
    return worst, outs


def test_mixed_batches_match_the_codec_reference(codec):
    impl, pages = _impl(codec)
    worst, _ = _run(codec, [(impl, pages, slice(0, H), slice(0, HQ))])
    assert worst < 1e-4, worst
    assert len(impl.state.group.rows) == 3 and impl.state.group.rows.fallbacks == 0
    written = (pages != 0xA5).any(-1).any(-1).view(-1)  # [slots]: padding slots (-1) never written
    assert int(written.sum()) == sum(sum(w.values()) for w in SCHEDULE)


def test_kernel_path_matches_the_reference(codec):
    """The CUDA path (write_kv + paged_attention), here under TRITON_INTERPRET=1."""
    impl, pages = _impl(codec, use_kernels=True)
    worst, _ = _run(codec, [(impl, pages, slice(0, H), slice(0, HQ))])
    assert worst < 3e-3, worst


def test_sequences_without_a_pool_row_read_their_sinks_from_the_codes(codec):
    """One pool row for three sequences running together: "a" takes it; "b" and "c" start while it
    is in use, get none, and attend to their sinks through the codes (the group counts it)."""
    impl, pages = _impl(codec, rows=1)
    worst, _ = _run(codec, [(impl, pages, slice(0, H), slice(0, HQ))], sinks_raw=lambda name: name == "a")
    assert worst < 1e-4, worst
    assert impl.state.group.rows.fallbacks > 0 and impl.state.group.warned


@pytest.mark.parametrize("world", [2])
def test_tensor_parallel_ranks_gather_to_one(codec, world):
    full, full_pages = _impl(codec)
    _, want = _run(codec, [(full, full_pages, slice(0, H), slice(0, HQ))], seed=3)
    h, gq = H // world, HQ // world
    ranks = [(*_impl(codec, heads=slice(r * h, (r + 1) * h)), slice(r * h, (r + 1) * h), slice(r * gq, (r + 1) * gq))
             for r in range(world)]
    _, got = _run(codec, ranks, seed=3)
    for a, b in zip(got, want):
        n = a.shape[0] - PAD
        torch.testing.assert_close(a[:n], b[:n], atol=1e-5, rtol=1e-5)


def test_pages_are_vllm_lbnhc_views():
    raw = torch.zeros(5, BS, H, 36, dtype=torch.uint8)  # memory: [blocks, tokens, heads, slot]
    view = raw.permute(0, 2, 1, 3)  # vLLM's logical [blocks, heads, tokens, slot]
    pages = packed_pages(view, 36)
    assert pages.data_ptr() == raw.data_ptr() and pages.shape == raw.shape
    with pytest.raises(ConfigError, match="LBNHC"):
        packed_pages(torch.zeros(5, H, BS, 36, dtype=torch.uint8), 36)  # LBHNC memory order
    with pytest.raises(ConfigError, match="36-byte slots"):
        packed_pages(view[..., :20], 36)


def test_profiling_run_writes_nothing_and_returns_zeros(codec):
    impl, pages = _impl(codec)
    out = torch.full((4, HQ, D), float("nan"))
    assert impl.forward(None, torch.randn(4, HQ, D), torch.randn(4, H, D), torch.randn(4, H, D),
                        pages.permute(0, 2, 1, 3), None, out) is out
    assert bool((out == 0).all()) and bool((pages == 0xA5).all())


@pytest.mark.parametrize("kwargs, message", [
    ({"sliding_window": 512}, "sliding-window attention \\(window 512\\)"),
    ({"attn_type": "encoder_only"}, "encoder_only attention"),
    ({"logits_soft_cap": 30.0}, "soft-capping"),
    ({"alibi_slopes": [0.5] * HQ}, "ALiBi"),
    ({"kv_sharing_target_layer_name": "model.layers.0.self_attn.attn"}, "shared with model.layers.0"),
    ({"sinks": torch.zeros(HQ)}, "learned attention-sink"),
])
def test_unsupported_layers_stop_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        OscarAttentionImpl(HQ, D, SCALE, H, **kwargs)
