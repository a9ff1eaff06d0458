"""Per-layer summary of a fitted codec: bit layouts and the water-filling's error estimates.

For `oscar`, channel j of layer l costs imp_j * D(b_j) in output-error units (DESIGN.md section 3):
key importances mu_j^K * G * g / d, value importances mu_j^V * a2, summed over KV heads, with
mu_j = std_j^2 the channel variance in the transformed space and D the level table's distortion
on a unit Gaussian (D(0) = 1: the channel is dropped). `k_err`/`v_err` are those sums (mean output
error per query, all KV heads of the layer); `k_rel`/`v_rel` divide them by the error of storing
no key (value) channel at all, so 0.05 means the 2-bit codes leave 5% of the keys' contribution.
"""

from __future__ import annotations

from oscar_cluster.codecs.quantizers import level_distortion
from oscar_cluster.waterfill import runs

__all__ = ["layer_rows", "format_layout", "render"]


def format_layout(bits: list[int]) -> str:
    """'4b x8 3b x16 ...': runs of equal bit widths, most important channels first."""
    return " ".join(f"{b}b x{w}" for w, b in runs(bits))


def layer_rows(codec, stats) -> list[dict]:
    """One dict per layer: layer, k/v layout strings, mean k/v bits, and for `oscar` the error
    estimates k_err, v_err, k_rel, v_rel."""
    by_layer = {st.layer: st for st in stats}
    rows = []
    for layer, kinds in sorted(getattr(codec, "layers", {}).items()):
        if not isinstance(kinds, dict) or not hasattr(kinds.get("k"), "bits"):
            continue
        st = by_layer.get(layer)
        row = {"layer": layer}
        for kind, cb in kinds.items():
            bits = cb.bits.tolist()
            row[f"{kind}_layout"] = format_layout(bits)
            row[f"{kind}_bits"] = round(sum(bits) / len(bits), 3)
        if st is not None:
            G, d = st.num_q_heads // st.num_kv_heads, st.head_dim
            scale = {"k": (G * st.g / d)[:, None], "v": st.a2[:, None]}
            for kind, cb in kinds.items():
                imp = (cb.std.double() ** 2 * scale[kind]).sum(0)  # [d]
                dist = [level_distortion(b, codec.levels) for b in cb.bits.tolist()]
                err = float((imp * imp.new_tensor(dist)).sum())
                row[f"{kind}_err"] = err
                row[f"{kind}_rel"] = err / max(float(imp.sum()), 1e-30)
        rows.append(row)
    return rows


def render(record: dict) -> str:
    """Human summary of a calibration record (time, tokens, workers, per-layer table)."""
    lines = [
        f"artifact: {record['artifact']}",
        f"model: {record['model']}  tokens: {record['tokens']} in {record['sequences']} sequences  "
        f"target context: {record['target_context']}  data sha256: {record['data_sha256'][:16]}...",
        f"time: {record['seconds_total']} s (workers ready {record.get('seconds_workers_ready')} s, layers "
        f"{record.get('seconds_layers')} s, fit {record['seconds_fit']} s)"
        f"  workers: {len(record['workers'])}  layers computed: {record['layers_computed']}"
        f" (resumed at layer {record['resumed_from_layer']})  worker replays: {record['worker_replays']}",
    ]
    for w in record["workers"]:
        lines.append(f"  worker {w['rank']}: node {w['node']} device {w['device']} gpu ids {w['gpu_ids'] or '-'} "
                     f"{w['sequences']} seqs / {w['tokens']} tokens")
    bpe = record.get("bits_per_element") or {}
    if bpe:
        lines.append("bits per element (true cost): " + "  ".join(f"{k}: {v:.4f}" for k, v in bpe.items()))
    rows = record.get("layers") or []
    if rows:
        has_err = "k_err" in rows[0]
        head = f"{'layer':>5}  {'K bits':>6}  {'V bits':>6}"
        head += f"  {'K err':>9}  {'V err':>9}  {'K rel':>6}  {'V rel':>6}" if has_err else ""
        lines.append(head + "  K layout | V layout")
        for r in rows:
            line = f"{r['layer']:>5}  {r['k_bits']:>6.3f}  {r['v_bits']:>6.3f}"
            if has_err:
                line += f"  {r['k_err']:>9.3g}  {r['v_err']:>9.3g}  {r['k_rel']:>6.3f}  {r['v_rel']:>6.3f}"
            lines.append(f"{line}  {r['k_layout']} | {r['v_layout']}")
    return "\n".join(lines)
