"""oscar-plan on the command line: outputs, the JSON contract, and bad input (one line, exit 2)."""

import csv
import io
import json

import pytest

# (arguments, text the one error line must contain)
BAD_INPUT = [
    (["--model", "70b", "--ctx", "12q"], ["12q", "131072", "128k"]),
    (["--model", "70b", "--ctx", "128k", "--batch", "0"], ["batch", "positive integer"]),
    (["--model", "70b", "--ctx", "-5"], ["131072", "128k"]),
    (["--model", "llama-9000", "--ctx", "1k"], ["unknown model", "70b", "config.json"]),
    (["--model", "nowhere/config.json", "--ctx", "1k"], ["no such file", "70b"]),
    (["--model", "70b", "--ctx", "1k", "--gpu", "tpu-v9"], ["unknown gpu", "h100", "--catalog"]),
    (["--model", "70b", "--ctx", "1k", "--weights", "fp4"], ["--weights", "bf16", "int4"]),
    (["--model", "70b", "--ctx", "1k", "--kv", "int3"], ["int3", "oscar-int2"]),
    (["--model", "70b", "--ctx", "1k", "--gpu-mem-util", "1.5"], ["gpu_mem_util", "(0, 1]"]),
    (["--model", "70b", "--ctx", "1k", "--gpu-price", "0"], ["--gpu-price"]),
    (["--model", "70b", "--ctx", "1k", "--batch", "two"], ["--batch", "int"]),
    (["--ctx", "1k"], ["--model"]),
    (["--model", "70b", "--ctx", "1k", "--emit", "serve-config"], ["--out"]),
    (["--model", "70b", "--ctx", "128k", "--batch", "32", "--gpus", "1", "--emit", "rayservice", "--out", "x"],
     ["nothing to emit"]),
    (["--model", "70b", "--ctx", "128k", "--batch", "32", "--gpus", "1", "--emit", "rayjob", "--out", "x"],
     ["nothing to emit"]),
]
OPTION_KEYS = {"kv_format", "kv_bytes_per_token", "kv_bytes_total", "weights_bytes", "gpus", "tp", "pp", "replicas",
               "cost_per_hour", "tokens_per_s", "cost_per_million_tokens", "fits", "notes"}


@pytest.mark.parametrize("args,needles", BAD_INPUT)
def test_bad_input_one_line_exit_2(cli, args, needles):
    rc, out, err = cli(*args)
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_config_missing_fields_one_line(cli, write_config):
    p = write_config({"num_hidden_layers": 32, "vocab_size": 1000})
    rc, _, err = cli("--model", p, "--ctx", "1k")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "num_attention_heads, hidden_size, max_position_embeddings" in err


def test_debug_shows_traceback(cli):
    rc, _, err = cli("--model", "70b", "--ctx", "12q", "--debug")
    assert rc == 2 and "Traceback" in err and "ConfigError" in err and err.rstrip().splitlines()[-1].startswith("error:")


def test_table_shows_split_per_gpu(cli):
    rc, out, _ = cli("--model", "70b", "--ctx", "128k", "--batch", "32")
    assert rc == 0
    for col in ("weights/GPU", "KV/GPU", "overhead/GPU", "GPUs", "TPxPPxR", "$/h", "tok/s", "$/1M tok", "fits"):
        assert col in out
    for fmt in ("bf16", "fp8", "int4", "oscar-int2"):
        assert f" {fmt} " in out
    assert "1,280.0" in out  # BF16 KV total GiB (reference/serving.md)


def test_json_shape(cli):
    rc, out, _ = cli("--model", "70b", "--ctx", "128k", "--batch", "32", "--format", "json")
    d = json.loads(out)
    assert {"model", "ctx", "batch", "gpu", "options"} <= set(d)
    assert d["ctx"] == 131072 and d["batch"] == 32
    assert [o["kv_format"] for o in d["options"]] == ["bf16", "fp8", "int4", "oscar-int2"]
    for o in d["options"]:
        assert OPTION_KEYS <= set(o)
        assert isinstance(o["fits"], bool) and isinstance(o["notes"], list)
        assert o["gpus"] == o["tp"] * o["pp"] * o["replicas"]
        for k in ("kv_bytes_per_token", "kv_bytes_total", "weights_bytes", "cost_per_hour", "tokens_per_s",
                  "cost_per_million_tokens"):
            assert isinstance(o[k], (int, float)) and o[k] > 0
    bf16 = d["options"][0]
    assert bf16["kv_bytes_per_token"] == 327680 and bf16["kv_bytes_total"] == 1280 * 2**30


def test_json_of_plan_that_does_not_fit(cli):
    rc, out, _ = cli("--model", "405b", "--gpu", "l40s", "--gpus", "1", "--ctx", "128k", "--format", "json")
    assert rc == 0
    for o in json.loads(out)["options"]:
        assert o["fits"] is False and o["gpus"] > 1
        assert any(n.startswith("would fit:") for n in o["notes"])


def test_table_says_no_when_it_cannot_fit(cli):
    rc, out, _ = cli("--model", "405b", "--gpu", "l40s", "--gpus", "1", "--ctx", "128k")
    assert rc == 0 and " NO " in out and "does not fit" in out and "would fit" in out


def test_csv(cli):
    rc, out, _ = cli("--model", "8b", "--ctx", "32k", "--batch", "4", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["kv_format"] for r in rows] == ["bf16", "fp8", "int4", "oscar-int2"]
    assert rows[0]["kv_bytes_per_token"] == "131072"


def test_explain_prints_every_figure(cli):
    rc, out, _ = cli("--model", "mixtral", "--ctx", "32k", "--batch", "16", "--explain")
    assert rc == 0
    for needle in ("## inputs", "TP sizes:", "weights: 46.70B params (MoE: total, not the 12.9B active)",
                   "## bf16", "## oscar-int2", "KV: per token and layer: 2 x 8 kv_heads x 128 head_dim",
                   "per GPU: usable 0.9 x 79.6 GiB", "overhead: activation peak", "weights read per step: MoE",
                   "decode: HBM:", "cost:", "prefill (one 32768-token prompt)", "[price:"):
        assert needle in out, needle


def test_explain_with_json_goes_to_stderr(cli):
    rc, out, err = cli("--model", "8b", "--ctx", "4k", "--format", "json", "--explain")
    json.loads(out)
    assert "## inputs" in err


def test_gpu_price_override(cli):
    rc, out, _ = cli("--model", "8b", "--ctx", "4k", "--gpu-price", "10", "--format", "json")
    d = json.loads(out)
    assert d["gpu"]["usd_per_gpu_hour"] == 10 and d["gpu"]["price_source"] == "--gpu-price"
    assert all(o["cost_per_hour"] == 10 * o["gpus"] for o in d["options"])


def test_kv_subset(cli):
    rc, out, _ = cli("--model", "8b", "--ctx", "4k", "--kv", "bf16,oscar-int2", "--format", "json")
    assert [o["kv_format"] for o in json.loads(out)["options"]] == ["bf16", "oscar-int2"]
