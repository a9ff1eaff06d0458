"""End to end on the CPU build of vLLM: SmolLM2 served by `vllm.LLM` with the OSCAR backend against
`OscarCache` with the same artifact, and against vLLM's own bf16 backend at the same KV memory.

Each engine runs in its own process (`python -m oscar_cluster.vllm_plugin.check`, as vLLM spawns
processes of its own): OSCAR in float32 with a 128-token budget per step (the short prompts share
batches; the needle prompt runs alone, in 128-token chunks whose earlier chunks are read through
the codes, then once more on its prefix-cached blocks), and plain vLLM in bf16. References are
computed here with transformers.

Why float32 for the text comparison: a 2-bit cache makes greedy decoding chaotic. OscarCache
against itself with the embeddings perturbed by 1e-6 drifts to log-probability differences of
~1 within 32 steps (measured), and vLLM's and transformers' bf16 numerics differ by far more than
that; in float32 the two agree to ~5e-5 before quantization, so the comparison sees the backend.
Agreement is teacher-forced: at every step the reference predicts from vLLM's own history.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from vllm_support import needs_vllm

needs_vllm()

from transformers import DynamicCache  # noqa: E402

from oscar_cluster.artifact import content_hash, load_artifact  # noqa: E402
from oscar_cluster.cache import OscarCache  # noqa: E402
from oscar_cluster.corpora import essay_files, read_texts  # noqa: E402
from oscar_cluster.generation import greedy_generate  # noqa: E402
from oscar_cluster.models import fetch  # noqa: E402
from oscar_cluster.vllm_plugin.artifact_info import read_artifact_info  # noqa: E402

pytestmark = pytest.mark.model

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three primary colors are", "Water boils at a temperature of"]
NEEDLE, ANSWER = "The special magic number is 7418.", "7418"
QUESTION = "\n\nWhat is the special magic number mentioned in the text above? The special magic number is"
CHUNK = 128  # --max-num-batched-tokens: the needle prompt is prefilled in chunks of this size
NEW_TOKENS = 32
KV_BYTES = 1 << 30
MAX_MODEL_LEN = 2048
MIN_AGREEMENT = 0.90
MIN_CAPACITY_RATIO = 6.5
# Prompts prefilled in one chunk: step 0 is full precision, step 1 the first read through the codes;
# there the top-5 log-probabilities agree to this (measured: <= 4e-4). Not for the chunked needle:
# chunks read through the codes are as chaotic as decoding (1e-6 on the embeddings moves its
# step-0 log-probabilities by 0.04), which its agreement and answer cover.
EARLY_STEPS, EARLY_TOL = 2, 5e-3


def _needle_prompt() -> str:
    words = " ".join(read_texts(essay_files()[:3])).split()[:500]
    return " ".join(words[:300]) + f" {NEEDLE} " + " ".join(words[300:]) + QUESTION


def _say(request, msg: str) -> None:
    """Print now, past pytest's capture: what the engines measured shows in `make test`'s log."""
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print(f"\n[vllm e2e] {msg}", end="", flush=True)


def _check(model_dir, prompts_file, out, *args, env_extra=None, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "VLLM_PLUGINS", "OSCAR_ARTIFACT")}
    env.update(VLLM_CPU_NUM_OF_RESERVED_CPU="0", **(env_extra or {}))
    cmd = [sys.executable, "-m", "oscar_cluster.vllm_plugin.check", "--model", str(model_dir), "--prompts",
           str(prompts_file), "--out", str(out), "--max-model-len", str(MAX_MODEL_LEN), "--kv-cache-memory-bytes",
           str(KV_BYTES), "--max-num-batched-tokens", str(CHUNK), *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def model_dir():
    return fetch("smollm2-135m", progress=False)


@pytest.fixture(scope="module")
def prompts(smollm2, tmp_path_factory):
    """[[5 short prompts], [needle prompt]] as token ids: one batch, then the needle alone."""
    _, tok = smollm2
    groups = [[tok(p).input_ids for p in PROMPTS], [tok(_needle_prompt()).input_ids]]
    again = tmp_path_factory.mktemp("prompts") / "prompts-needle-twice.json"
    again.write_text(json.dumps([*groups, groups[1]]))
    path = tmp_path_factory.mktemp("prompts") / "prompts.json"
    path.write_text(json.dumps(groups))
    return groups, path, again


@pytest.fixture(scope="module")
def engines(request, model_dir, prompts, smollm2_artifact_8k, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engines")
    runs = {}
    for name, file, args in (
            ("oscar", prompts[2], ["--artifact", smollm2_artifact_8k, "--dtype", "float32", "--logprobs", 5,
                                   "--prefix-caching"]),
            ("bf16", prompts[1], ["--bf16", "--dtype", "bfloat16"])):
        proc = _check(model_dir, file, tmp / f"{name}.json", *args)
        assert proc.returncode == 0, f"{name} engine failed:\n{proc.stderr[-6000:]}"
        assert "no longer in the bf16 sink pool" not in proc.stdout + proc.stderr  # every sink stayed bf16
        runs[name] = json.loads((tmp / f"{name}.json").read_text())
        r = runs[name]
        _say(request, f"{name}: {r['num_gpu_blocks']} KV blocks of {r['block_size']}, engine start {r['init_s']} s, "
                      f"generation {r['generate_s']} s")
    return runs


@torch.inference_mode()
def _teacher_forced(model, cache, prompt_ids, gen_ids, chunk):
    """Per step: does the reference's argmax equal vLLM's token; and its log-probabilities."""
    ids = torch.tensor([prompt_ids])
    T = ids.shape[1]
    step = chunk if T > chunk else T
    for s in range(0, T, step):
        part = ids[:, s:s + step]
        logits = model(input_ids=part, position_ids=torch.arange(s, s + part.shape[1])[None], past_key_values=cache,
                       use_cache=True).logits
    agree, logprobs = [], []
    for i, t in enumerate(gen_ids):
        logprobs.append(logits[0, -1].float().log_softmax(-1))
        agree.append(int(logits[0, -1].argmax()) == t)
        logits = model(input_ids=torch.tensor([[t]]), position_ids=torch.tensor([[T + i]]), past_key_values=cache,
                       use_cache=True).logits
    return agree, logprobs


def test_oscar_in_vllm_generates_what_oscar_cache_generates(request, engines, smollm2, smollm2_artifact_8k):
    model, tok = smollm2  # float32, like the OSCAR engine
    codec = load_artifact(smollm2_artifact_8k, model=model)
    rates = []
    for out in engines["oscar"]["outputs"][:-1]:  # the last is the needle again, from the prefix cache
        agree, ref_lp = _teacher_forced(model, OscarCache(codec), out["prompt_token_ids"], out["token_ids"], CHUNK)
        rate = sum(agree) / len(agree)
        rates.append(rate)
        early = max(abs(float(ref_lp[i][int(t)]) - lp) for i in range(EARLY_STEPS)
                    for t, lp in out["logprobs"][i].items())
        _say(request, f"{len(out['prompt_token_ids']):4d}-token prompt: {sum(agree)}/{len(agree)} tokens agree, "
                      f"first {EARLY_STEPS} steps' top-5 log-probabilities within {early:.1e}; "
                      f"vLLM: {out['text'][:40]!r}")
        assert len(agree) == NEW_TOKENS
        if len(out["prompt_token_ids"]) <= CHUNK:  # one prefill chunk: nothing chaotic before step 1
            assert early < EARLY_TOL, f"log-probabilities differ by {early:.2e} at the first steps: {out['text']!r}"
    assert min(rates) >= MIN_AGREEMENT, f"teacher-forced agreement per prompt {rates}"


def test_needle_answer_is_identical(engines, smollm2, smollm2_artifact_8k, prompts):
    model, tok = smollm2
    codec = load_artifact(smollm2_artifact_8k, model=model)
    (needle_ids,) = prompts[0][1]
    out = engines["oscar"]["outputs"][-2]
    assert out["prompt_token_ids"] == needle_ids and len(needle_ids) > 4 * CHUNK
    ref = greedy_generate(model, torch.tensor(needle_ids), OscarCache(codec), NEW_TOKENS, prefill_chunk=CHUNK)
    answer_vllm = tok.decode(out["token_ids"]).split("\n")[0]
    answer_ref = tok.decode(ref.tolist()).split("\n")[0]
    assert answer_vllm == answer_ref, (answer_vllm, answer_ref)
    assert ANSWER in answer_vllm, answer_vllm


def test_prefix_cache_hit_reads_the_same_cache(engines):
    """The needle again: its 5 full blocks come from the prefix cache (their sinks from the pool row
    of the shared first block). vLLM then computes the last 6 tokens, as the first run's last chunk
    did, so the output is the same token for token."""
    first, again = engines["oscar"]["outputs"][-2:]
    assert first["prompt_token_ids"] == again["prompt_token_ids"]
    assert again["num_cached_tokens"] == len(first["prompt_token_ids"]) // 128 * 128 == 640
    assert again["token_ids"] == first["token_ids"]


def test_capacity_is_at_least_6_5x_bf16_at_the_same_memory(request, engines, smollm2_artifact_8k):
    o, b = engines["oscar"], engines["bf16"]
    assert o["block_size"] == b["block_size"] and o["kv_cache_memory_bytes"] == b["kv_cache_memory_bytes"]
    ratio = o["num_gpu_blocks"] / b["num_gpu_blocks"]
    slot = read_artifact_info(smollm2_artifact_8k).slot_bytes
    per_block = o["block_size"] * 30 * 3  # SmolLM2: 30 layers x 3 KV heads
    _say(request, f"KV capacity at {KV_BYTES >> 20} MiB: OSCAR {o['num_gpu_blocks'] * o['block_size']} tokens, "
                  f"bf16 {b['num_gpu_blocks'] * b['block_size']} tokens: {ratio:.2f}x ({slot}-byte slots)")
    assert o["num_gpu_blocks"] == KV_BYTES // (per_block * slot)
    assert b["num_gpu_blocks"] == KV_BYTES // (per_block * 2 * 64 * 2)
    assert ratio >= MIN_CAPACITY_RATIO


def test_oscar_metrics_agree_with_both_engines(engines, smollm2, smollm2_artifact_8k):
    m, o, b = engines["oscar"]["metrics"], engines["oscar"], engines["bf16"]
    info = read_artifact_info(smollm2_artifact_8k)
    assert m["oscar:kv_capacity_tokens"] == o["num_gpu_blocks"] * o["block_size"]
    assert m["oscar:kv_bf16_capacity_tokens"] == b["num_gpu_blocks"] * b["block_size"]
    assert m["oscar:kv_bits_per_element"] == info.slot_bytes * 8 / 128
    assert m["oscar:kv_bytes_per_token"] == 30 * 3 * info.slot_bytes and m["oscar:kv_bf16_bytes_per_token"] == 23040
    codec = load_artifact(smollm2_artifact_8k, model=smollm2[0])
    assert m["oscar:codec_bits_per_element"] == pytest.approx(codec.bits_per_element(MAX_MODEL_LEN))
    assert m["oscar:kv_sink_pool_bytes"] == 2 * 8 * info.sinks * 30 * 3 * 64 * 4  # 2 x max_num_seqs rows


def test_plain_vllm_matches_transformers_in_bf16(engines, smollm2_bf16):
    """The harness itself: vLLM's own backend against transformers, both bf16, no OSCAR."""
    model, _ = smollm2_bf16
    rates = []
    for out in engines["bf16"]["outputs"]:
        agree, _ = _teacher_forced(model, DynamicCache(config=model.config), out["prompt_token_ids"], out["token_ids"],
                                   CHUNK)
        rates.append(sum(agree) / len(agree))
    assert min(rates) >= MIN_AGREEMENT, rates


def test_start_up_fails_clearly_without_or_with_a_wrong_artifact(model_dir, prompts, smollm2_artifact_8k, tmp_path):
    proc = _check(model_dir, prompts[1], tmp_path / "none.json", "--max-tokens", 1, env_extra={"VLLM_PLUGINS": "oscar"})
    assert proc.returncode != 0 and "the OSCAR attention backend needs an artifact" in proc.stdout + proc.stderr
    wrong = shutil.copytree(smollm2_artifact_8k, tmp_path / "other-layout")
    meta = yaml.safe_load((wrong / "oscar.yaml").read_text())
    meta["model"]["num_kv_heads"] = 2
    meta["content_sha256"] = content_hash(meta)
    (wrong / "oscar.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    proc = _check(model_dir, prompts[1], tmp_path / "wrong.json", "--artifact", wrong, "--max-tokens", 1)
    assert proc.returncode != 0  # vLLM logs the workers' errors to stdout
    assert "calibrated for another model; differing fields: num_kv_heads: artifact 2 vs model 3" in proc.stdout
