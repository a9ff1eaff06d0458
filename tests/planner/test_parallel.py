"""TP feasibility, KV replication past kv_heads, MLA replication, pipeline stages."""

import dataclasses

import pytest

from oscar_cluster.planner import find_model, plan
from oscar_cluster.planner.hfconfig import model_from_config
from oscar_cluster.planner.memory import kv_bytes_per_token, weight_bytes
from oscar_cluster.planner.parallel import gpu_memory, kv_rank_share, kv_replication, tp_options
from oscar_cluster.planner.specs import KVFormat

# (preset, feasible TP sizes on an 8-GPU node)
TP_OK = [("70b", [1, 2, 4, 8]), ("qwen2.5-7b", [1, 2, 4]), ("405b", [1, 2, 4, 8]), ("deepseek-v3", [1, 2, 4, 8]),
         ("gpt-oss-120b", [1, 2, 4, 8])]

GQA2_CONFIG = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 2, "hidden_size": 4096,
               "max_position_embeddings": 32768, "vocab_size": 32000, "intermediate_size": 11008}


@pytest.mark.parametrize("name,ok", TP_OK)
def test_feasible_tp_sizes(name, ok):
    assert [o.tp for o in tp_options(find_model(name), 8) if o.ok] == ok


def test_qwen7b_tp7_rejected_by_kv_heads():
    # 28 query heads divide by 7, but 4 KV heads neither divide nor are divided by 7
    o = {o.tp: o for o in tp_options(find_model("qwen2.5-7b"), 8)}[7]
    assert not o.ok and "KV heads" in o.reason


def test_tp_bounded_by_gpus_per_node():
    assert max(o.tp for o in tp_options(find_model("70b"), 4) if o.ok) == 4


def test_kv_heads_replicated_past_kv_heads(write_config, request_for):
    m = model_from_config(write_config(GQA2_CONFIG))
    assert kv_replication(m, 2) == 1 and kv_replication(m, 8) == 4
    assert kv_rank_share(m, 2) == 0.5 and kv_rank_share(m, 8) == 0.5  # one KV head per rank either way
    req = dataclasses.replace(request_for(), model=m, ctx=8192, batch=1)
    kv = kv_bytes_per_token(m, KVFormat.BF16, 8192)
    w = weight_bytes(m, "bf16")
    assert gpu_memory(req, kv, w, 8, 1).kv_per_seq_bytes == kv.bytes_per_sequence / 2  # not / 8


def test_mla_latent_on_every_rank():
    m = find_model("deepseek-v3")
    assert kv_rank_share(m, 8) == 1.0 and kv_replication(m, 8) == 8


def test_gqa_split_when_tp_le_kv_heads():
    m = find_model("70b")
    assert kv_rank_share(m, 8) == 1 / 8 and kv_replication(m, 8) == 1


def test_replication_note_in_plan(write_config, request_for):
    # a 70B-class model with only 2 KV heads needs TP >= 4 on H100s: each KV head is stored twice or more
    cfg = {**GQA2_CONFIG, "num_hidden_layers": 80, "num_attention_heads": 64, "hidden_size": 8192,
           "intermediate_size": 28672, "vocab_size": 128256}
    m = model_from_config(write_config(cfg))
    p = plan(dataclasses.replace(request_for(), model=m, ctx=131072, batch=32))
    assert p.option("bf16").shape.tp >= 4
    for o in (o for o in p.options if o.shape.tp > 2):
        assert f"KV heads replicated x{o.shape.tp // 2} (TP {o.shape.tp} > 2 KV heads)" in o.notes


def test_pipeline_stages_when_tp8_is_not_enough(request_for):
    # 405B in bf16 is 754 GiB: one 8 x H100 node holds 573 GiB, so stages span nodes
    o = plan(request_for("405b", ctx=8192, batch=1)).option("bf16")
    assert o.shape.tp == 8 and o.shape.pp >= 2
    assert any("pipeline stages across nodes" in n for n in o.notes)


def test_replicas_hold_the_batch(request_for):
    o = plan(request_for("8b", ctx=131072, batch=64)).option("bf16")
    s = o.shape
    assert s.replicas * s.seqs >= 64
    assert s.seqs <= s.memory.max_seqs
