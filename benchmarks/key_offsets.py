"""Why per-token INT2 codecs collapse on some models: the keys' constant offset (a QKV bias shows as
a large per-channel key mean). Per layer, on held-out text:

  offset ratio = ||mean_t k|| / rms_t ||k - mean_t k||      (per KV head, then the max over heads)
  key error    = ||k_hat - k|| / ||k - mean||               (relative to the part that varies)

for `oscar-paper` as published (per-token min/max INT2 after its rotation) and for the same codec
fed keys with their mean over positions removed (added back after decoding), and for `oscar`, which
removes the mean itself. Fits both codecs on Shakespeare, measures on wikitext-2.

    python benchmarks/key_offsets.py --model qwen2.5-coder-1.5b --tokens 1024 --out benchmarks/results/key-offsets-qwen2.5-coder-1.5b-cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

try:
    import oscar_cluster.kernels  # noqa: F401
except ModuleNotFoundError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oscar_cluster.attention_error import capture_layers  # noqa: E402
from oscar_cluster.calibrate import CalibrationConfig, calibrate_model  # noqa: E402
from oscar_cluster.corpora import read_texts, shakespeare_files  # noqa: E402
from oscar_cluster.models import load  # noqa: E402


def _rel(a: torch.Tensor, b: torch.Tensor, denom: torch.Tensor) -> float:
    return float((a - b).norm() / denom.norm().clamp_min(1e-30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--calib-tokens", type=int, default=4096)
    ap.add_argument("--text", default=str(Path(__file__).resolve().parents[2] / "shared/data/wikitext-2-raw/wiki.test.raw"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load(args.model)
    texts = read_texts(shakespeare_files())
    fitted = {}
    for name in ("oscar-paper", "oscar"):
        cfg = CalibrationConfig(model=args.model, codec=name, max_tokens=args.calib_tokens, seq_len=1024)
        fitted[name], _, _ = calibrate_model(model, tok, texts, cfg, progress=False)
    ids = torch.tensor(tok(Path(args.text).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"][:args.tokens])
    layers = capture_layers(model, ids)
    rows = []
    paper, ours = fitted["oscar-paper"], fitted["oscar"]
    for s in layers:
        k = s.k[paper.sinks:]  # the codecs keep the sinks in bf16
        pos = torch.arange(paper.sinks, paper.sinks + k.shape[0])
        m = k.mean(0, keepdim=True)  # the held-out mean over positions (an oracle offset, post-RoPE)
        varying = k - m
        ratio = (m[0].norm(dim=-1) / varying.pow(2).sum(-1).mean(0).sqrt()).max()
        as_published = paper.roundtrip(k, "k", s.layer, pos).float()
        centered = paper.roundtrip(k - m, "k", s.layer, pos).float() + m
        oscar = ours.roundtrip(k, "k", s.layer, pos).float()
        rows.append({"layer": s.layer, "offset_ratio": float(ratio),
                     "key_err_oscar_paper": _rel(as_published, k, varying),
                     "key_err_oscar_paper_mean_removed": _rel(centered, k, varying),
                     "key_err_oscar": _rel(oscar, k, varying)})
        print(f"layer {s.layer:2d}  offset ratio {ratio:7.2f}  key error: oscar-paper {rows[-1]['key_err_oscar_paper']:.3f}"
              f"  mean removed {rows[-1]['key_err_oscar_paper_mean_removed']:.3f}  oscar {rows[-1]['key_err_oscar']:.3f}")
    doc = {"benchmark": "key offset ratio and key reconstruction error per layer (CPU)", "model": args.model,
           "tokens": args.tokens, "calibration_tokens": args.calib_tokens, "text": Path(args.text).name,
           "mean_source": "mean over positions of the held-out post-RoPE keys (oracle)",
           "rows": rows, "versions": {"torch": torch.__version__, "python": platform.python_version()},
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "python benchmarks/key_offsets.py " + " ".join(sys.argv[1:])}
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
