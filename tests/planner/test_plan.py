"""Whole plans: the seed example, monotonicity properties, plans that cannot fit, speed, imports."""

import dataclasses
import json
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oscar_cluster.planner import KVFormat, find_model, load_gpus, min_gpus, plan
from oscar_cluster.planner.specs import GIB

PRESETS = ["8b", "70b", "405b", "qwen2.5-7b", "72b", "qwen3-32b", "mistral-7b", "mixtral", "deepseek-v3",
           "gpt-oss-120b"]
GPUS = ["h100", "h200", "a100", "l40s", "b200"]


def test_seed_example_llama70b_128k_x32(request_for):
    # reference/serving.md: BF16 KV 1280 GiB + 131 GiB weights -> 20+ H100s; INT2 KV ~180 GiB at 2.25 bpe
    p = plan(request_for("70b", "h100", 131072, 32))
    bf16, oscar = p.option("bf16"), p.option("oscar-int2")
    assert bf16.kv_bytes_total / GIB == 1280
    assert bf16.shape.gpus >= 20
    assert oscar.kv_bytes_total / GIB == pytest.approx(170.0, abs=0.1)  # codec: 2 + 16/128 + sinks
    assert oscar.shape.gpus == 8 and oscar.shape.replicas == 1
    gpus = [o.shape.gpus for o in p.options]
    assert gpus == sorted(gpus, reverse=True)  # fewer bits never need more GPUs
    assert all(o.fits for o in p.options)
    for o in p.options:  # per-GPU split adds up within the usable memory
        m = o.shape.memory
        assert m.weights_bytes + o.shape.kv_bytes_per_gpu + m.overhead_bytes <= m.usable_bytes
        assert o.cost.usd_per_hour == pytest.approx(3.50 * o.shape.gpus)
        assert o.cost.usd_per_million_tokens == pytest.approx(o.cost.usd_per_hour / (3600 * o.cost.tokens_per_s) * 1e6)


def test_seed_example_with_default_bits(request_for):
    p = plan(request_for("70b", "h100", 131072, 32, oscar_bits=2.25))
    assert p.option("oscar-int2").kv_bytes_total / GIB == 180


def test_eight_to_two_needs_small_workload_and_quantized_weights(request_for):
    # reference/serving.md: "8 -> 2 H100s" only for smaller workloads (32K x 8) with quantized weights + INT2 KV
    big = plan(request_for("70b", ctx=131072, batch=32)).option("bf16").shape.gpus
    small = plan(request_for("70b", ctx=32768, batch=8, weights="int4")).option("oscar-int2").shape.gpus
    assert big >= 8 and small <= 2


def test_decode_roofline_by_hand(request_for):
    # 8B on one H100, bf16, 8 x 8K: (16.06 GB weights + 8 x 8192 x 131072 B KV) / 3.35 TB/s, no all-reduce
    o = plan(request_for("8b", ctx=8192, batch=8)).option("bf16")
    assert (o.shape.tp, o.shape.pp, o.shape.replicas) == (1, 1, 1)
    expected = (8.03e9 * 2 + 8 * 8192 * 131072) / 3.35e12
    assert o.decode.step_s == pytest.approx(expected)
    assert o.cost.tokens_per_s == pytest.approx(8 / expected)


def test_oscar_measured_kernel_figure_by_hand(request_for):
    # 8B on one H100, oscar-int2, 8 x 8K: the KV reads of the roofline step, slowed to the measured
    # fraction of HBM bandwidth of the Triton decode kernel, and the note that says so
    from oscar_cluster.planner.perf import OSCAR_KERNEL_BW_FRACTION, OSCAR_KERNEL_BW_SOURCE, measured_kernel_step

    o = plan(request_for("8b", ctx=8192, batch=8)).option("oscar-int2")
    assert (o.shape.tp, o.shape.pp, o.shape.replicas) == (1, 1, 1)
    kv_bytes = o.kv_bytes_total  # the 8 sequences' KV, read once per step on the one GPU
    kv_s = kv_bytes / 3.35e12
    assert o.decode.kv_s == pytest.approx(kv_s)
    assert o.decode.step_s == pytest.approx((8.03e9 * 2 + kv_bytes) / 3.35e12)
    slow = o.decode.step_s - kv_s + kv_s / OSCAR_KERNEL_BW_FRACTION
    assert measured_kernel_step(o.decode, OSCAR_KERNEL_BW_FRACTION) == pytest.approx(slow)
    assert measured_kernel_step(o.decode, 1.0) == pytest.approx(o.decode.step_s)
    note = next(n for n in o.notes if "bandwidth-bound" in n)
    assert f"{8 / slow:,.0f} tok/s" in note and OSCAR_KERNEL_BW_SOURCE in note
    assert not any("bandwidth-bound" in n for n in plan(request_for("8b", ctx=8192, batch=8)).option("bf16").notes)
    with pytest.raises(ValueError, match="bw_fraction"):
        measured_kernel_step(o.decode, 0.0)


def test_kernel_bandwidth_fraction_is_the_committed_measurement():
    """The planner's fraction is the slowest OSCAR decode shape at 32K+ x batch 8+ of the run it cites,
    over the copy bandwidth measured in that run."""
    from pathlib import Path

    from oscar_cluster.planner.perf import OSCAR_KERNEL_BW_FRACTION, OSCAR_KERNEL_BW_SOURCE

    root = Path(__file__).resolve().parents[2]
    run = json.loads((root / OSCAR_KERNEL_BW_SOURCE).read_text())
    copy = run["copy"]["GBps_read_plus_write"]
    slowest = min(r["oscar_GBps"] for r in run["decode"]["rows"] if r["context"] >= 32768 and r["batch"] >= 8)
    assert OSCAR_KERNEL_BW_FRACTION == pytest.approx(slowest / copy, abs=5e-4)


def test_moe_decode_reads_active_params_for_one_sequence(request_for):
    o = plan(request_for("mixtral", ctx=1024, batch=1)).option("bf16")
    assert o.decode.weights_read.params == pytest.approx(12.9e9)
    many = plan(request_for("mixtral", ctx=1024, batch=64)).option("bf16")
    assert many.decode.weights_read.params == pytest.approx(46.7e9, rel=0.01)  # every expert touched


def test_prefill_by_hand(request_for):
    # 8B, 8K prompt: 2 x 8.03e9 x 8192 + 2 x 32 heads x 256 x 32 layers x 8192 x 8193 / 2, at 0.4 x 989 TFLOP/s
    o = plan(request_for("8b", ctx=8192, batch=1)).option("bf16")
    flops = 2 * 8.03e9 * 8192 + 2 * 32 * 256 * 32 * 8192 * 8193 / 2
    assert o.prefill.flops == pytest.approx(flops)
    assert o.prefill.seconds == pytest.approx(flops / (989e12 * 0.4))


@settings(max_examples=60, deadline=None)
@given(model=st.sampled_from(PRESETS), gpu=st.sampled_from(GPUS), fmt=st.sampled_from(list(KVFormat)),
       ctx=st.integers(1, 262144), extra=st.integers(0, 262144), batch=st.integers(1, 256))
def test_more_context_never_needs_fewer_gpus(request_for, model, gpu, fmt, ctx, extra, batch):
    a = min_gpus(request_for(model, gpu, ctx, batch), fmt)
    b = min_gpus(request_for(model, gpu, ctx + extra, batch), fmt)
    assert a is not None and b is not None and a <= b


@settings(max_examples=60, deadline=None)
@given(model=st.sampled_from(PRESETS), gpu=st.sampled_from(GPUS), fmt=st.sampled_from(list(KVFormat)),
       ctx=st.integers(1, 131072), batch=st.integers(1, 256), extra=st.integers(0, 256))
def test_more_batch_never_needs_fewer_gpus(request_for, model, gpu, fmt, ctx, batch, extra):
    assert min_gpus(request_for(model, gpu, ctx, batch), fmt) <= min_gpus(request_for(model, gpu, ctx, batch + extra), fmt)


@settings(max_examples=30, deadline=None)
@given(model=st.sampled_from(PRESETS), ctx=st.integers(1, 131072), batch=st.integers(1, 128))
def test_fewer_bits_never_need_more_gpus(request_for, model, ctx, batch):
    p = plan(request_for(model, "h100", ctx, batch))
    gpus = [p.option(f).shape.gpus for f in ("bf16", "fp8", "int4", "oscar-int2")]
    assert gpus == sorted(gpus, reverse=True)


def test_plan_that_cannot_fit_says_so_and_what_would(request_for):
    p = plan(request_for("405b", "l40s", 131072, 1, max_gpus=1), load_gpus())
    for o in p.options:
        assert not o.fits
        assert o.notes[0].startswith("does not fit: needs")
        would = next(n for n in o.notes if n.startswith("would fit:"))
        assert "nothing fits on 1 L40S-48GB" in would and "H200" in would


def test_budget_suggests_smaller_batch_and_context(request_for):
    o = plan(request_for("70b", "h100", 131072, 32, max_gpus=8), load_gpus()).option("bf16")
    assert not o.fits
    would = next(n for n in o.notes if n.startswith("would fit:"))
    assert "hold batch" in would and "hold ctx" in would
    assert plan(request_for("70b", "h100", 131072, 32, max_gpus=8)).option("oscar-int2").fits


def test_chosen_shape_is_the_cheapest(request_for):
    p = plan(request_for("72b", "h200", 65536, 48))
    for o in p.options:
        assert o.shape.gpus == min_gpus(p.request, o.kv_format)


def test_context_beyond_model_is_noted(request_for):
    o = plan(request_for("qwen2.5-7b", ctx=131072, batch=1)).option("bf16")
    assert any("exceeds the model's 32768 positions" in n for n in o.notes)


def test_plan_answers_in_under_a_second(cli):
    t = time.perf_counter()
    rc, out, _ = cli("--model", "70b", "--ctx", "128k", "--batch", "32")
    assert rc == 0 and "oscar-int2" in out
    t2 = time.perf_counter()
    cli("--model", "405b", "--ctx", "128k", "--batch", "32", "--gpu", "l40s", "--gpus", "1", "--format", "json")
    assert time.perf_counter() - t < 1.0, "plans (table, and a not-fitting plan with suggestions) took >= 1 s"
    assert time.perf_counter() - t2 < 1.0


def test_planning_imports_neither_ray_nor_vllm():
    # in a fresh process: other tests in this session import Ray (the --emit schema check)
    code = ("import sys; from oscar_cluster.planner.cli import main; "
            "main(['--model', '70b', '--ctx', '128k', '--batch', '32', '--explain']); "
            "assert 'ray' not in sys.modules and 'vllm' not in sys.modules, sorted(sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Llama-3.1-70B" in r.stdout


def test_cli_process_fast_and_light():
    # a fresh process: no Ray, no vLLM, no torch (the OSCAR bits come from oscar_cluster.bits)
    code = ("import sys, time; t = time.perf_counter(); from oscar_cluster.planner.cli import main; "
            "main(['--model', '70b', '--ctx', '128k', '--batch', '32', '--format', 'json']); "
            "dt = time.perf_counter() - t; "
            "assert 'ray' not in sys.modules and 'vllm' not in sys.modules and 'torch' not in sys.modules; "
            "print('SECONDS', dt, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert float(r.stderr.split("SECONDS")[1]) < 1.0


def test_request_validation(request_for):
    from oscar_cluster.errors import ConfigError

    for bad in (dict(ctx=0), dict(batch=0), dict(gpu_mem_util=0.0), dict(max_gpus=0), dict(weights="fp4"),
                dict(kv_formats=("int3",))):
        with pytest.raises(ConfigError):
            request_for(**{"ctx": 1024, "batch": 1, **bad})
    r = request_for(ctx=1024, batch=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.ctx = 5
    assert find_model("70B").name == "Llama-3.1-70B"  # aliases are case-insensitive
