"""What cora.bench.vocab_scaling reports: the shapes, the tables, the summary and the plot.

Inputs are the result dicts of `cora.bench.vocab_cells` (one per (method, backend, K); latencies in ms per
image, memory in MB). `results_table` is the main table (median / p90, peak and delta memory, baseline /
CORA), `stage_table` the eager time per stage, `summarize` the JSON's "summary" (CORA's flatness
latency(K max) / latency(K min) and the speedup over the baseline per K, per backend), `plot` the PNG
(latency vs K, log-log). No torch calls here: these read dicts, configs and module attributes only.
"""

from __future__ import annotations

from cora.bench.common import format_table
from cora.fileio import atomic_write

# The methods measured, in table and plot order, with their titles.
METHODS = {"cora": "CORA (anchor pre-matching)", "conditional": "OV-DETR-style conditional matching"}


def describe_shapes(cfg, args, model, baseline) -> dict:
    lc = cfg.localizer
    h, w = args.image_size
    return {
        "clip_model": cfg.backbone.clip_model,
        "image": [1, 3, h, w],
        "layer3_map": [model.backbone.layer3_channels, h // 16, w // 16],
        "text_dim": int(model.backbone.embed_dim),
        "cora_queries": lc.num_queries,
        "localizer": {"hidden_dim": lc.hidden_dim, "heads": lc.num_heads, "encoder_layers": lc.num_encoder_layers,
                      "decoder_layers": lc.num_decoder_layers, "ffn": lc.dim_feedforward},
        "baseline": {"classes_per_pass": baseline.classes_per_pass, "queries_per_class": baseline.queries_per_class,
                     "queries_per_pass": baseline.queries_per_pass, "max_detections": baseline.max_detections},
        "cora_postprocess": {"pre_nms_topk": cfg.inference.pre_nms_topk,
                             "max_detections": cfg.inference.max_detections},
    }


def _fmt_ms(value: float) -> str:
    return f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def results_table(results: list[dict]) -> str:
    cora = {(r["backend"], r["K"]): r for r in results if r["method"] == "cora" and r["status"] == "ok"}
    rows = []
    for r in results:
        ok = r["status"] == "ok"
        lat = r.get("latency_ms", {})
        speedup = ""
        if r["method"] == "conditional" and ok and (r["backend"], r["K"]) in cora:
            speedup = f"{lat['median'] / cora[(r['backend'], r['K'])]['latency_ms']['median']:.2f}x"
        rows.append([
            "CORA" if r["method"] == "cora" else "OV-DETR-style", r["backend"], str(r["K"]),
            str(r.get("decoder_passes", "")),
            _fmt_ms(lat["median"]) if ok else r["status"], _fmt_ms(lat["p90"]) if ok else "",
            str(lat["runs"]) if ok else "", f"{r['memory']['peak_mb']:.0f}" if ok and r["memory"] else "",
            f"{r['memory']['delta_mb']:.0f}" if ok and r["memory"] else "", speedup,
        ])
    return format_table(["method", "backend", "K", "passes", "median ms", "p90 ms", "runs", "peak MB", "delta MB",
                         "baseline / CORA"], rows)


def stage_table(rows: list[dict]) -> str:
    """One row per K, one column per stage of that method (rows of one method)."""
    stages = list(dict.fromkeys(s for r in rows for s in r["stages_ms"]))
    body = [[str(r["K"]), str(r.get("decoder_passes", ""))] + [_fmt_ms(r["stages_ms"][s]) for s in stages]
            + [_fmt_ms(r["latency_ms"]["median"])] for r in rows]
    return format_table(["K", "passes"] + stages + ["total (median)"], body)


def busy_cells(results: list[dict], threads: int) -> list[str]:
    """Cells after which the 1-minute load average exceeded this run's threads + 1 (a heuristic: the load
    average lags and smooths, so it flags sustained competition, not short bursts)."""
    return [f"{r['method']} {r['backend']} K={r['K']}" for r in results
            if r.get("load_1m") is not None and r["load_1m"] > threads + 1]


def summarize(results: list[dict], vocab_sizes) -> dict:
    """Per backend: CORA's flatness latency(K max) / latency(K min) and the speedup over the baseline per K."""
    summary: dict = {"cora_flatness": {}, "speedup": {}}
    for backend in dict.fromkeys(r["backend"] for r in results):
        cora = {r["K"]: r for r in results if r["backend"] == backend and r["method"] == "cora" and r["status"] == "ok"}
        base = {r["K"]: r for r in results if r["backend"] == backend and r["method"] == "conditional"}
        if len(cora) >= 2:
            lo, hi = min(cora), max(cora)
            summary["cora_flatness"][backend] = {
                "K_min": lo, "K_max": hi,
                "ratio": cora[hi]["latency_ms"]["median"] / cora[lo]["latency_ms"]["median"]}
        if base:
            summary["speedup"][backend] = {
                str(k): (base[k]["latency_ms"]["median"] / cora[k]["latency_ms"]["median"]
                         if base[k]["status"] == "ok" else base[k]["status"])
                for k in vocab_sizes if k in base and k in cora}
    return summary


def summary_lines(summary: dict) -> list[str]:
    lines = []
    for backend, f in summary["cora_flatness"].items():
        lines.append(f"{backend}: CORA flatness latency(K={f['K_max']}) / latency(K={f['K_min']}) = {f['ratio']:.2f}")
    for backend, per_k in summary["speedup"].items():
        parts = [f"K={k}: {v:.2f}x" if isinstance(v, float) else f"K={k}: {v}" for k, v in per_k.items()]
        lines.append(f"{backend}: baseline / CORA median latency: " + ", ".join(parts))
    return lines


def plot(payload: dict, path: str) -> None:
    """Latency vs K (log-log), one line per (method, backend), bars up to p90; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    results = payload["results"]
    for method in METHODS:
        for backend in dict.fromkeys(r["backend"] for r in results):
            cells = [r for r in results if r["method"] == method and r["backend"] == backend]
            ok = [r for r in cells if r["status"] == "ok"]
            if not ok:
                continue
            ks = [r["K"] for r in ok]
            med = [r["latency_ms"]["median"] for r in ok]
            p90 = [r["latency_ms"]["p90"] for r in ok]
            label = f"{'CORA' if method == 'cora' else 'OV-DETR-style'} ({backend})"
            stopped = [r["K"] for r in cells if r["status"] != "ok"]
            if stopped:
                label += f", stopped at budget for K >= {min(stopped)}"
            ax.errorbar(ks, med, yerr=[[0] * len(med), [p - m for p, m in zip(p90, med)]],
                        marker="o" if method == "cora" else "s", linestyle="-" if method == "cora" else "--",
                        capsize=3, label=label)
    shapes = payload["shapes"]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("vocabulary size K (classes)")
    ax.set_ylabel("latency per image (ms, median; bar to p90)")
    where = payload["machine"].get("gpu", payload["machine"]["cpu"])
    ax.set_title(f"{shapes['clip_model']} {shapes['image'][2]}x{shapes['image'][3]}, CORA {shapes['cora_queries']} "
                 f"queries vs {shapes['baseline']['queries_per_pass']} per pass\n{where}, {payload['dtype']}, "
                 f"torch {payload['machine']['torch']}", fontsize=9)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)
