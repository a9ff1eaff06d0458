"""Per-layer checkpoints: bitwise round trip, resume point = longest valid prefix, refusal of a
run with other arguments (naming them), atomic writes."""

import json

import pytest
import torch

from oscar_cluster.calibration import LayerStatistics
from oscar_cluster.calibration_jobs.checkpoints import (CHECKPOINT_DIR, CheckpointMismatchError, CheckpointStore,
                                                        statistics_equal)
from oscar_cluster.errors import ConfigError

RUN = {"model": "m", "fingerprint": {"num_layers": 4, "head_dim": 8}, "data_sha256": "ab" * 32, "seq_len": 256,
       "codec_options": {"mean_bits": 2.0, "target_context": 8192}}


def layer_stats(layer: int, seed: int = 0) -> LayerStatistics:
    g = torch.Generator().manual_seed(seed + layer)
    q, k, v = torch.randn(24, 4, 8, generator=g), torch.randn(24, 2, 8, generator=g), torch.randn(24, 2, 8, generator=g)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    return LayerStatistics.from_samples(q, k, v, torch.randn(12, 32, generator=g), layer=layer, sinks=2,
                                        inv_freq=inv_freq)


def test_round_trip_is_bitwise(tmp_path):
    store = CheckpointStore(tmp_path, RUN)
    store.start()
    for layer in range(3):
        store.save(layer_stats(layer))
    got = store.finished(4)
    assert len(got) == 3
    assert all(statistics_equal(a, layer_stats(i)) for i, a in enumerate(got))
    assert got[0].has_pre_rope and got[0].inv_freq is not None and got[0].max_position == 24
    assert not list(store.dir.glob("*.tmp"))  # atomic writes leave no temporaries


def test_resume_point_is_the_longest_valid_prefix(tmp_path):
    store = CheckpointStore(tmp_path, RUN)
    store.start()
    for layer in (0, 1, 3):
        store.save(layer_stats(layer))
    assert len(store.finished(4)) == 2  # layer 2 missing: 3 is recomputed
    store.path(1).write_bytes(b"truncated")
    assert len(store.finished(4)) == 1
    # a layer file of another run (e.g. copied in) is not trusted
    other = CheckpointStore(tmp_path / "other", dict(RUN, seq_len=512))
    other.start()
    other.save(layer_stats(1))
    store.path(1).write_bytes(other.path(1).read_bytes())
    assert len(store.finished(4)) == 1


def test_other_arguments_are_refused_by_name(tmp_path):
    CheckpointStore(tmp_path, RUN).start()
    CheckpointStore(tmp_path, json.loads(json.dumps(RUN))).check()  # same run: fine
    changed = dict(RUN, seq_len=512, codec_options={"mean_bits": 2.5, "target_context": 8192})
    with pytest.raises(CheckpointMismatchError, match="seq_len: checkpoint 256 vs now 512") as e:
        CheckpointStore(tmp_path, changed).check()
    assert "codec_options" in str(e.value) and "--restart" in str(e.value)
    assert isinstance(e.value, ConfigError)
    (tmp_path / CHECKPOINT_DIR / "run.json").write_text("{not json")
    with pytest.raises(CheckpointMismatchError, match="unreadable"):
        CheckpointStore(tmp_path, RUN).check()
    CheckpointStore(tmp_path, RUN).clear()
    assert not (tmp_path / CHECKPOINT_DIR).exists()
