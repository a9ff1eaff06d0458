"""Fuzzed command lines (hypothesis, bounded): every oscar-* CLI exits 0 or 2; on 2 it prints one
`error:` line and no traceback, and leaves no partial output behind."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oscar_cluster import calibrate_cli, models_cli
from oscar_cluster.planner import cli as plan_cli
from oscar_cluster.serving import cli as serve_cli

# derandomize: CI sees the same bounded set every run; to explore further, run locally with
# derandomize=False and more examples (the random runs that found this session's bugs did so)
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
JUNK = st.sampled_from(["", "-", "--", "-1", "0", "1e309", "nan", "abc", "☃", "--bogus", "x" * 300, "../..",
                        "/dev/null", "128k", "7b", "h100", "--debug"])


def _run(main, argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse (--help: 0, usage errors: 2)
        code = e.code
    out, err = capsys.readouterr()
    assert code in (0, 2), (argv, code, err)
    if "--debug" not in argv:  # --debug asks for the traceback
        assert "Traceback" not in out + err, (argv, err)
        if code == 2:
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
    return code


PLAN_FLAGS = st.sampled_from(["--model", "--ctx", "--batch", "--gpu", "--gpus", "--weights", "--format", "--kv",
                              "--emit", "--explain", "--gpu-mem-util"])
PLAN_VALS = st.sampled_from(["70b", "8b", "qwen", "nope", "128k", "1k", "0", "-3", "32", "h100", "h200", "tpu",
                             "int4", "fp8", "bf16", "json", "csv", "oscar-int2", "rayservice", "serve-config",
                             "kustomize-overlay", "0.5", "2.0"])


@FUZZ
@given(argv=st.lists(st.one_of(PLAN_FLAGS, PLAN_VALS, JUNK), max_size=10), out=st.booleans())
def test_oscar_plan(argv, out, capsys, tmp_path):
    d = tmp_path / "emit"
    if out:
        argv = [*argv, "--out", str(d)]
    code = _run(plan_cli.main, argv, capsys)
    if code == 2 and d.exists():
        assert not any(d.iterdir()), f"partial output after an error: {list(d.iterdir())}"
    for leftover in tmp_path.rglob(".*.tmp"):
        raise AssertionError(f"temporary file left: {leftover}")


@FUZZ
@given(argv=st.lists(st.one_of(st.sampled_from(["list", "fetch", "--format", "json", "table", "--quiet", "gpt-2",
                                                "smollm2-135m-nope"]), JUNK), max_size=5))
def test_oscar_models(argv, capsys):
    if argv[:1] == ["fetch"] and any(a in ("qwen2.5-coder-1.5b", "gemma") for a in argv):
        return  # never download here
    _run(models_cli.main, argv, capsys)


@FUZZ
@given(argv=st.lists(st.one_of(st.sampled_from(["--model", "--out", "--max-tokens", "--seq-len", "--data",
                                                "--target-context", "--format", "--device", "--address"]),
                               st.sampled_from(["-5", "0", "nope-model", "/nonexistent/x.txt", "cuda:7", "json"]),
                               JUNK), max_size=8))
def test_oscar_calibrate(argv, capsys, tmp_path):
    argv = ["--model", "no-such-model", *argv, "--out", str(tmp_path / "art")]  # never a real calibration
    _run(calibrate_cli.main, argv, capsys)
    assert not (tmp_path / "art").exists()


@FUZZ
@given(content=st.one_of(st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                         st.sampled_from(["engine: vllm\n", "model: 3\n", "model: {name: smollm2-135m}\n",
                                          "engine: transformers\nmodel: {name: x, artifact: /nope}\n",
                                          "engine: vllm\nmodel: {name: 70b, accelerator_type: H100, tensor_parallel_size: 3}\n",
                                          "!!python/object/apply:os.system [echo]\n", "[1, 2]\n", ""])),
       extra=st.lists(JUNK, max_size=3))
def test_oscar_serve_dry_run(content, extra, capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(content, encoding="latin-1")
    _run(serve_cli.main, [str(cfg), "--dry-run", *extra], capsys)


@FUZZ
@given(argv=st.lists(st.one_of(st.sampled_from(["--codecs", "--tasks", "--ctx", "--samples", "--protocol",
                                                "--prefill-chunk", "--artifact", "--device"]),
                               st.sampled_from(["bf16,oscar", "ruler", "ppl", "niah_single_1", "4k,8k", "4q", "0",
                                                "-2", "chunked", "eager", "zip"]), JUNK), max_size=8))
def test_oscar_eval(argv, capsys, tmp_path):
    from oscar_cluster.evaluation import cli as eval_cli

    argv = ["--model", "no-such-model", *argv, "--out", str(tmp_path / "ev"), "--quiet"]  # never a real run
    _run(eval_cli.main, argv, capsys)
    assert not (tmp_path / "ev").exists(), "no output directory for a run that failed"
