"""Distributed calibration on the session's local Ray cluster (2 CPUs, 4 logical GPUs) with the
embedded SmolLM2 on 4 sequences of 256 tokens: scheduling across logical GPUs, equality with
in-process calibration, a lost worker, a killed driver, requests the cluster cannot satisfy and
bad input (DESIGN.md section 5)."""

import os
import re
import subprocess
import sys
import time

import pytest
import torch

from oscar_cluster import codecs
from oscar_cluster.artifact import load_artifact, save_artifact
from oscar_cluster.calibrate import CalibrationConfig, calibrate_model
from oscar_cluster.calibrate_cli import main
from oscar_cluster.calibration_jobs import ClusterConfig, ClusterResourcesError, calibrate_distributed, codec_options
from oscar_cluster.calibration_jobs.checkpoints import CHECKPOINT_DIR
from oscar_cluster.corpora import read_texts
from oscar_cluster.models import fingerprint

pytestmark = pytest.mark.model

MAX_TOKENS, SEQ_LEN, LAYERS = 1024, 256, 30
TOL = 1e-5  # max abs difference on every artifact tensor (the bar)


def config(out, files, **kw) -> CalibrationConfig:
    return CalibrationConfig(model="smollm2-135m", out=str(out), data=tuple(files), max_tokens=MAX_TOKENS,
                             seq_len=SEQ_LEN, **kw)


def cli_args(out, files, address, *extra) -> list[str]:
    return ["--model", "smollm2-135m", "--data", *files, "--out", str(out), "--max-tokens", str(MAX_TOKENS),
            "--seq-len", str(SEQ_LEN), "--address", address, "--quiet", *extra]


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def snapshot(path) -> dict:
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(smollm2, calib_files, tmp_path_factory):
    """In-process calibration of the same data: the codec's state dict."""
    model, tok = smollm2
    cfg = config(tmp_path_factory.mktemp("ref") / "art", calib_files)
    codec, _, _ = calibrate_model(model, tok, read_texts(list(calib_files)), cfg, progress=False)
    return codec.state_dict()


@pytest.fixture(scope="module")
def two_cpu_workers(ray_cluster, calib_files, tmp_path_factory):
    """Two CPU workers; worker 0 crashes once at layer 5 (a lost worker) and is restarted."""
    tmp = tmp_path_factory.mktemp("two")
    marker = tmp / "crashed-once"
    path, record = calibrate_distributed(config(tmp / "art", calib_files),
                                         ClusterConfig(num_gpus=0, num_workers=2, keep_checkpoints=True),
                                         progress=False, fault={"layer": 5, "marker": str(marker)})
    return path, record, marker


def test_four_gpu_workers_equal_in_process(ray_cluster, reference, smollm2, calib_files, tmp_path):
    cfg = config(tmp_path / "art", calib_files)
    path, record = calibrate_distributed(cfg, ClusterConfig(num_gpus=4), progress=False)
    workers = record["workers"]
    assert len(workers) == 4 and len({w["pid"] for w in workers}) == 4
    assert sorted(w["gpu_ids"][0] for w in workers) == ["0", "1", "2", "3"]  # one logical GPU each
    assert sorted(w["cuda_visible_devices"] for w in workers) == ["0", "1", "2", "3"]
    assert [w["sequences"] for w in workers] == [1, 1, 1, 1]
    codec = load_artifact(path, model=smollm2[0])  # fingerprint checked
    diff = max_abs_diff(codec.state_dict(), reference)
    print(f"4 GPU workers vs in-process: max abs diff {diff:.3g}")
    assert diff <= TOL
    # the parallel per-layer fit tasks assemble bitwise the codec fit() gives here on the same sums
    opts, _ = codec_options(cfg, 8192)
    local = codecs.get("oscar", **opts).fit(record["stats"]).state_dict()
    assert all(torch.equal(local[k], v) for k, v in codec.state_dict().items())
    assert (record["tokens"], record["sequences"], record["layers_computed"]) == (1024, 4, LAYERS)
    assert not (path / CHECKPOINT_DIR).exists()  # removed after success
    estimates = codec.metadata["error_estimates"]
    assert len(estimates) == LAYERS and all(0 < e["k_rel"] < 1 and 0 < e["v_rel"] < 1 for e in estimates)
    assert all(abs(row["k_bits"] + row["v_bits"] - 4.0) < 1e-9 for row in record["layers"])  # mean 2 bits


def test_lost_worker_restarts_and_replays(two_cpu_workers, reference):
    path, record, marker = two_cpu_workers
    assert marker.exists()  # worker 0 did exit at layer 5
    assert record["worker_replays"] == 5  # its new incarnation replayed layers 0..4
    assert [w["sequences"] for w in record["workers"]] == [2, 2]
    diff = max_abs_diff(load_artifact(path).state_dict(), reference)
    print(f"2 CPU workers (one crash) vs in-process: max abs diff {diff:.3g}")
    assert diff <= TOL
    assert len(list((path / CHECKPOINT_DIR).glob("layer_*.safetensors"))) == LAYERS  # kept on request


def test_killed_driver_resumes_from_the_last_layer(ray_cluster, two_cpu_workers, calib_files, tmp_path, capsys):
    out = tmp_path / "art"
    args = cli_args(out, calib_files, ray_cluster, "--num-gpus", "0", "--num-workers", "2")
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    with open(tmp_path / "driver.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "oscar_cluster.calibrate_cli", *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        third = out / CHECKPOINT_DIR / "layer_002.safetensors"
        deadline = time.monotonic() + 120
        while not third.exists():
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        proc.kill()
        proc.wait()
    assert not (out / "oscar.yaml").exists()
    done = len(list((out / CHECKPOINT_DIR).glob("layer_*.safetensors")))
    assert 3 <= done < LAYERS
    # other arguments are refused, naming them, and the checkpoints stay
    before = snapshot(out)
    assert main(cli_args(out, calib_files, ray_cluster, "--num-gpus", "0", "--max-tokens", "2048")) == 2
    assert "max_tokens: checkpoint 1024 vs now 2048" in capsys.readouterr().err
    assert snapshot(out) == before
    # the same arguments resume after the last finished layer
    assert main([a for a in args if a != "--quiet"]) == 0  # with the progress bar and the table
    text = capsys.readouterr().out
    resumed = int(re.search(r"resumed at layer (\d+)", text).group(1))
    assert resumed >= done and f"layers computed: {LAYERS - resumed} " in text
    assert f"worker replays: {2 * resumed}" in text  # both fresh workers replayed the finished layers
    assert re.search(r"^\s+29\s+\d\.\d{3}\s+\d\.\d{3}\s", text, re.M)  # the per-layer table
    uninterrupted = load_artifact(two_cpu_workers[0]).state_dict()
    diff = max_abs_diff(load_artifact(out).state_dict(), uninterrupted)
    print(f"resumed at layer {resumed} vs uninterrupted: max abs diff {diff:.3g}")
    assert diff <= TOL


def test_unsatisfiable_requests_fail_fast(ray_cluster, calib_files, tmp_path, capsys):
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    out = tmp_path / "art"
    t0 = time.monotonic()
    assert main(cli_args(out, calib_files, ray_cluster, "--num-gpus", "8")) == 2
    assert "asked for 8 GPUs but the Ray cluster has 4" in capsys.readouterr().err
    assert main(cli_args(out, calib_files, ray_cluster, "--num-gpus", "0", "--num-workers", "3")) == 2
    assert "3 CPU workers need 3 CPUs" in capsys.readouterr().err
    assert time.monotonic() - t0 < 30
    # the GPUs exist but another job holds them: a timeout, not a hang
    held = placement_group([{"GPU": 1}] * 4)
    ray.get(held.ready(), timeout=30)
    try:
        t0 = time.monotonic()
        with pytest.raises(ClusterResourcesError, match="within 2 s"):
            calibrate_distributed(config(out, calib_files), ClusterConfig(num_gpus=1, resource_timeout_s=2),
                                  progress=False)
        assert time.monotonic() - t0 < 30
    finally:
        remove_placement_group(held)
    assert not out.exists()  # nothing was written
    assert all(pg["state"] != "PENDING" for pg in placement_group_table().values())


def test_bad_input_is_a_clear_error_and_overwrites_nothing(ray_cluster, smollm2, calib_files, tmp_path, capsys):
    empty, binary = tmp_path / "empty.txt", tmp_path / "binary.txt"
    empty.write_text("")
    binary.write_bytes(b"\xff\xfe\x00\x81" * 64)
    cases = [
        ([str(empty)], "smollm2-135m", "file is empty"),
        ([str(binary)], "smollm2-135m", "cannot read as UTF-8"),
        ([str(tmp_path / "missing.txt")], "smollm2-135m", "no such file"),
        (list(calib_files), str(tmp_path / "no-such-model"), "no such name or path"),
    ]
    for files, model, message in cases:
        args = cli_args(tmp_path / "out", files, ray_cluster)
        args[args.index("smollm2-135m")] = model
        assert main(args) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "out").exists()
    # an output directory holding an artifact of another model
    other = tmp_path / "other"
    fp = dict(fingerprint(smollm2[0]), architecture="qwen2", num_layers=24, head_dim=128)
    save_artifact(other, codecs.get("int4", head_dim=128), fp, {"data_sha256": "0" * 64})
    before = snapshot(other)
    assert main(cli_args(other, calib_files, ray_cluster)) == 2
    err = capsys.readouterr().err
    assert "another model" in err and "num_layers" in err and "head_dim" in err
    assert snapshot(other) == before
    # a directory with other files
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert main(cli_args(busy, calib_files, ray_cluster)) == 2
    assert "not empty" in capsys.readouterr().err
    assert snapshot(busy) == {busy / "notes.txt": b"keep me"}


def test_worker_lost_for_good_then_rerun_resumes(ray_cluster, two_cpu_workers, calib_files, tmp_path):
    from oscar_cluster.errors import OscarError

    cfg = config(tmp_path / "art", calib_files)
    fault = {"layer": 5, "marker": str(tmp_path / "crashed-once")}
    with pytest.raises(OscarError, match=r"failed at layer 5 .*layers 0\.\.4 are checkpointed") as e:
        calibrate_distributed(cfg, ClusterConfig(num_gpus=0, num_workers=2, max_restarts=0), progress=False,
                              fault=fault)
    print(f"no restarts left: {e.value}")
    assert not (tmp_path / "art" / "oscar.yaml").exists()
    path, record = calibrate_distributed(cfg, ClusterConfig(num_gpus=0, num_workers=2), progress=False)
    assert (record["resumed_from_layer"], record["layers_computed"], record["worker_replays"]) == (5, 25, 10)
    diff = max_abs_diff(load_artifact(path).state_dict(), load_artifact(two_cpu_workers[0]).state_dict())
    print(f"resumed after a lost worker vs uninterrupted: max abs diff {diff:.3g}")
    assert diff <= TOL
