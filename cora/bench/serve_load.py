"""Closed-loop load against the served detector (Triton Inference Server, `cora serve`).

    python benchmarks/serve_load.py                        # tiny preset (random weights), about 4 minutes
    python benchmarks/serve_load.py --concurrency 1 16 --duration 1 --repeat 1     # a quick look

Each of C client threads sends one request (a JPEG and its vocabulary) as soon as its last answer came back,
for --duration seconds; a point is run --repeat times and the run with the median requests/s is kept.
Vocabulary mixes: shared (the 80 COCO names, every request), mixed (4 vocabularies of 10, 20, 40 and 80
COCO names, one per request stream), large (1203 names: the real LVIS list with --large-vocab, else a
stand-in, see `large_vocabulary`), sent as names or as embeddings. Per point: requests/s, p50 / p99
latency (ms), failed requests, mean server batch (images per model execution, Triton's statistics API).
The cost of sending the large vocabulary as names instead of embeddings is measured by one client
alternating the two (--pairs), the median of the per-pair latency ratios.
Baselines in the same run: the same repository with dynamic batching off, and one ONNX Runtime session
(OnnxDetector, decoding the JPEG as the server does) called request by request in a loop. Clients and
server share the machine. Writes a table, JSON and a PNG (throughput and p99 against concurrency) to
--out-dir.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from cora.bench.common import default_out_dir, format_table, machine_info, percentile, write_json
from cora.fileio import atomic_write

MIXED_SIZES = (10, 20, 40, 80)


def coco_names() -> list[str]:
    """The 80 COCO class names (torchvision's detection weights metadata, less its placeholders)."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return [n for n in FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"] if n not in ("N/A", "__background__")]


def large_vocabulary(path: str | None, k: int = 1203) -> tuple[list[str], str]:
    """(names, where they come from): the LVIS categories of `path` (a COCO / LVIS json), else a stand-in of
    the same size: the 1000 ImageNet names of torchvision's weights metadata, the 80 COCO names, then
    "object N" (LVIS's category file cannot be downloaded on the development machines)."""
    from cora.vocabulary import load_vocabulary

    if path is not None:
        return load_vocabulary(path), path
    from torchvision.models import ResNet50_Weights

    names = list(dict.fromkeys(ResNet50_Weights.DEFAULT.meta["categories"] + coco_names()))
    names += [f"object {i}" for i in range(k - len(names))]
    return names[:k], "stand-in: ImageNet-1k + COCO names + 'object N'"


def test_image(seed: int = 0, size: tuple[int, int] = (480, 640)) -> bytes:
    """A JPEG (quality 90) of smooth random colour blobs, `size` (h, w)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    small = rng.integers(0, 256, (h // 32, w // 32, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((w, h), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def model_counts(client) -> tuple[int, int]:
    """(images inferred, executions) of the detector model so far; `client`: a tritonclient.grpc client."""
    stats = client.get_inference_statistics("cora", as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def make_inputs(client_module, image: bytes, vocabulary) -> list:
    """The request: the JPEG [1, 1] and the vocabulary, names [1, K] (list of str) or embeddings [1, K, D]."""
    def tensor(name, array, dtype):
        i = client_module.InferInput(name, list(array.shape), dtype)
        i.set_data_from_numpy(array)
        return i

    inputs = [tensor("image", np.array([[image]], dtype=np.object_), "BYTES")]
    if isinstance(vocabulary, np.ndarray):
        inputs.append(tensor("text_embeddings", vocabulary[None].astype(np.float32), "FP32"))
    else:
        inputs.append(tensor("class_names", np.array([[n.encode() for n in vocabulary]], dtype=np.object_), "BYTES"))
    return inputs


def closed_loop(endpoints: dict[str, str], protocol: str, image: bytes, vocabularies: list, concurrency: int,
                duration: float) -> dict:
    """`concurrency` clients for `duration` s over `protocol`, client i sending vocabularies[i % len].
    Returns requests/s, latency p50 / p99 (ms), failures, mean server batch."""
    import tritonclient.grpc

    if protocol == "grpc":
        client_module = tritonclient.grpc
    else:
        import tritonclient.http as client_module
    endpoint = endpoints[protocol]
    stats_client = tritonclient.grpc.InferenceServerClient(endpoints["grpc"])
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    failures = [0] * concurrency
    barrier = threading.Barrier(concurrency + 1, timeout=60)
    stop = threading.Event()

    def client(i):
        c = client_module.InferenceServerClient(endpoint)
        inputs = make_inputs(client_module, image, vocabularies[i % len(vocabularies)])
        barrier.wait()
        while not stop.is_set():
            start = time.perf_counter()
            try:
                c.infer("cora", inputs)
            except Exception:
                failures[i] += 1
                continue
            latencies[i].append((time.perf_counter() - start) * 1e3)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    before = model_counts(stats_client)
    barrier.wait()
    start = time.perf_counter()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    inferred, executions = (a - b for a, b in zip(model_counts(stats_client), before))
    done = sorted(x for per in latencies for x in per)
    return {"requests": len(done), "failures": sum(failures), "requests_per_s": len(done) / elapsed,
            "p50_ms": percentile(done, 0.5) if done else None, "p99_ms": percentile(done, 0.99) if done else None,
            "mean_batch": inferred / executions if executions else None}


def paired_latency(endpoint: str, image: bytes, names: list[str], embeddings: np.ndarray, pairs: int) -> dict:
    """One client alternating a request with `names` and one with their `embeddings`, `pairs` times: the
    median latency (ms) of each and the median of the per-pair ratios (names / embeddings), so that load
    from other work, which changes over seconds, hits both alike."""
    import tritonclient.grpc as g

    client = g.InferenceServerClient(endpoint)
    requests = {"names": make_inputs(g, image, names), "embeddings": make_inputs(g, image, embeddings)}
    times: dict[str, list[float]] = {k: [] for k in requests}
    for _ in range(pairs):
        for kind, inputs in requests.items():
            start = time.perf_counter()
            client.infer("cora", inputs)
            times[kind].append((time.perf_counter() - start) * 1e3)
    return {"pairs": pairs, "names_p50_ms": statistics.median(times["names"]),
            "embeddings_p50_ms": statistics.median(times["embeddings"]),
            "ratio_median": statistics.median(n / e for n, e in zip(times["names"], times["embeddings"]))}


def median_run(runs: list[dict]) -> dict:
    """The run with the median requests/s, with every run's requests/s and p50, and all runs' failures."""
    runs = sorted(runs, key=lambda r: r["requests_per_s"])
    return {**runs[len(runs) // 2], "failures": sum(r["failures"] for r in runs),
            "requests_per_s_runs": [round(r["requests_per_s"], 2) for r in runs],
            "p50_ms_runs": [round(r["p50_ms"], 2) for r in runs if r["p50_ms"] is not None]}


def onnx_loop(detector_path: Path, image: bytes, text: np.ndarray, duration: float) -> dict:
    """One ONNX Runtime session, request by request: decode the JPEG, detect, for `duration` s."""
    from cora.export.triton import Limits
    from cora.runtime.onnx import OnnxDetector
    from cora.serve.requests import decode_image

    detector = OnnxDetector(detector_path)
    limits = Limits()
    detector.detect([decode_image(image, limits)], text_embeddings=text)  # warm-up
    times = []
    deadline = time.perf_counter() + duration
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        detector.detect([decode_image(image, limits)], text_embeddings=text)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {"requests": len(times), "failures": 0, "requests_per_s": 1e3 * len(times) / sum(times),
            "p50_ms": percentile(times, 0.5), "p99_ms": percentile(times, 0.99), "mean_batch": 1.0}


def bad_requests_answered(endpoint: str, image: bytes, embed_dim: int) -> dict:
    """A few bad requests (undecodable image, K = 0, NaN embeddings, wrong D): each must get an error
    response; then the server must still be live and answer a good request."""
    import tritonclient.grpc as g

    client = g.InferenceServerClient(endpoint)
    nan = np.full((1, 3, embed_dim), np.nan, np.float32)
    cases = [make_inputs(g, b"not an image", ["cat"]), make_inputs(g, image, []),
             make_inputs(g, image, nan[0]), make_inputs(g, image, np.ones((3, embed_dim + 1), np.float32))]
    errors = 0
    for inputs in cases:
        try:
            client.infer("cora", inputs)
        except Exception:
            errors += 1
    client.infer("cora", make_inputs(g, image, ["cat"]))
    return {"bad_requests": len(cases), "errors": errors, "server_live": bool(client.is_server_live())}


def export_tiny(out: Path) -> tuple[Path, Path]:
    """The tiny preset (random weights) exported to ONNX (detector + text encoder, parity-checked)."""
    from cora.checkpoint import load_model
    from cora.export.onnx import export_detector, export_text_encoder

    source = {"preset": "tiny", "overrides": [], "checkpoint": None, "clip_weights": None, "random_init": True,
              "seed": 0}
    model = load_model(**source)
    export_text_encoder(model, out / "text.onnx", source=source)
    export_detector(model, out / "detector.onnx", source=source, text_encoder=out / "text.onnx")
    return out / "detector.onnx", out / "text.onnx"


def summary(points: list[dict], baseline: dict, paired: dict | None) -> dict:
    def find(**kw):
        return next((p for p in points if all(p[k] == v for k, v in kw.items())), None)

    out = {}
    on = find(server="batching", protocol="grpc", mix="shared", concurrency=16)
    off = find(server="no batching", protocol="grpc", mix="shared", concurrency=16)
    if on and off:
        out["batching_speedup_c16_shared"] = on["requests_per_s"] / off["requests_per_s"]
    mixed = find(server="batching", protocol="grpc", mix="mixed", concurrency=16)
    if mixed:
        out["mixed_mean_batch_c16"] = mixed["mean_batch"]
    if paired:
        out["large_names_over_embeddings_latency"] = paired["ratio_median"]
    out["failed_requests"] = sum(p["failures"] for p in points)
    if on:
        out["server_c16_over_onnx_loop"] = on["requests_per_s"] / baseline["requests_per_s"]
    return out


def plot(path: str, points: list[dict], baseline: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rate, ax_p99) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = dict.fromkeys((p["server"], p["protocol"], p["mix"], p["vocabulary"]) for p in points)
    for key in series:
        cells = sorted((p for p in points if (p["server"], p["protocol"], p["mix"], p["vocabulary"]) == key),
                       key=lambda p: p["concurrency"])
        if len(cells) < 2:
            continue
        c = [p["concurrency"] for p in cells]
        label = f"{key[0]}, {key[1]}, {key[2]}" + (", embeddings" if key[3] == "embeddings" else "")
        ax_rate.plot(c, [p["requests_per_s"] for p in cells], marker="o", label=label)
        ax_p99.plot(c, [p["p99_ms"] for p in cells], marker="o", label=label)
    ax_rate.axhline(baseline["requests_per_s"], color="gray", linestyle="--", label="ONNX Runtime loop")
    for ax, title in ((ax_rate, "requests / s"), (ax_p99, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    ax_rate.legend(fontsize=7)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)


def main(argv=None, out_dir: str | None = None) -> int:
    """The command line; `out_dir`: the default of --out-dir (benchmarks/serve_load.py passes its checkout's
    results folder)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32],
                   help="client counts of the shared-vocabulary sweep (default: 1 2 4 8 16 32); the other mixes "
                        "and the baseline server use 1, 4, 16 and 32 where listed here")
    p.add_argument("--duration", type=float, default=1.0, help="seconds per run of a point (default: 1)")
    p.add_argument("--repeat", type=int, default=3, help="runs per point, the median kept (default: 3)")
    p.add_argument("--pairs", type=int, default=40, help="alternating requests with the 1203 names and with their "
                   "embeddings, one client, for the latency ratio (default: 40)")
    p.add_argument("--large-vocab", default=None, help="a COCO / LVIS .json (e.g. lvis_v1_val.json) for the large "
                   "mix (default: a 1203-name stand-in)")
    p.add_argument("--one-template", action="store_true", help="the text model embeds each name in one template "
                   "instead of 80 (its first encoding of 1203 names then takes seconds instead of minutes)")
    p.add_argument("--out-dir", default=None, help="folder of serve_load.json / .png (default: the checkout's "
                   "benchmarks/results)")
    args = p.parse_args(argv)
    args.out_dir = args.out_dir or out_dir or default_out_dir()
    if any(c < 1 for c in args.concurrency) or args.duration <= 0 or args.repeat < 1 or args.pairs < 1:
        p.error("--concurrency values, --repeat and --pairs must be >= 1, --duration > 0")

    from cora.export.triton import write_repository
    from cora.runtime.onnx import OnnxTextEncoder
    from cora.runtime.triton import TritonDetector
    from cora.serve.server import TritonServer

    started = time.perf_counter()
    image = test_image()
    shared = coco_names()
    large, large_source = large_vocabulary(args.large_vocab)
    templates = ["a photo of a {}."] if args.one_template else None
    sweep = sorted(set(args.concurrency))
    short = [c for c in sweep if c in (1, 4, 16, 32)] or sweep
    notes: dict = {}
    with tempfile.TemporaryDirectory(prefix="cora-serve-load-") as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        t = time.perf_counter()
        detector_path, text_path = export_tiny(tmp)
        notes["export_s"] = time.perf_counter() - t
        # Both servers run at once, idle in turn: the cells are interleaved round by round, so the load of
        # other work on the machine spreads over all of them.
        endpoints = {}
        for name, batching in (("batching", True), ("no batching", False)):
            repo = write_repository(tmp / name.replace(" ", "_"), detector_path, text_path,
                                    dynamic_batching=batching, text_templates=templates)
            endpoints[name] = stack.enter_context(TritonServer(repo)).endpoints()
        t = time.perf_counter()
        large_text = TritonDetector(endpoints["batching"]["grpc"]).encode_vocabulary(large)  # fills the text cache
        notes["first_large_vocabulary_s"] = time.perf_counter() - t
        for e in endpoints.values():
            TritonDetector(e["grpc"]).encode_vocabulary(shared)
        mixed = [shared[:k] for k in MIXED_SIZES]
        plan = [("batching", "grpc", "shared", "names", [shared], sweep),
                ("batching", "grpc", "mixed", "names", mixed, short),
                ("batching", "grpc", "large", "names", [large], short),
                ("batching", "grpc", "large", "embeddings", [large_text], short),
                ("batching", "http", "shared", "names", [shared], [c for c in short if c in (1, 16)] or short[:1]),
                ("no batching", "grpc", "shared", "names", [shared], short)]
        cells = [(server, protocol, mix, kind, vocabularies, c)
                 for server, protocol, mix, kind, vocabularies, levels in plan for c in levels]
        shared_text = OnnxTextEncoder(text_path, templates=templates)(shared)
        for server, protocol, mix, kind, vocabularies, _ in cells:  # warm-up: every model path once
            closed_loop(endpoints[server], protocol, image, vocabularies, 1, 0.2)
        runs: dict = {}
        for r in range(args.repeat):
            print(f"round {r + 1} / {args.repeat}: {len(cells) + 1} cells of {args.duration:g} s", flush=True)
            runs.setdefault("onnx", []).append(onnx_loop(detector_path, image, shared_text, args.duration))
            for i, (server, protocol, mix, kind, vocabularies, c) in enumerate(cells):
                runs.setdefault(i, []).append(closed_loop(endpoints[server], protocol, image, vocabularies, c,
                                                          args.duration))
        notes["large_names_vs_embeddings"] = paired_latency(endpoints["batching"]["grpc"], image, large, large_text,
                                                            args.pairs)
        notes["bad_requests"] = bad_requests_answered(endpoints["batching"]["grpc"], image, large_text.shape[1])
    baseline = median_run(runs["onnx"])
    points = [{"server": server, "protocol": protocol, "mix": mix, "vocabulary": kind, "concurrency": c,
               **median_run(runs[i])} for i, (server, protocol, mix, kind, _, c) in enumerate(cells)]
    goals = summary(points, baseline, notes.get("large_names_vs_embeddings"))
    payload = {"machine": machine_info("cpu"), "preset": "tiny (random weights)", "image": "480 x 640 JPEG",
               "large_vocabulary": large_source, "templates": 1 if args.one_template else 80,
               "duration_s": args.duration, "repeat": args.repeat, "points": points,
               "onnx_runtime_loop": baseline, "goals": goals, "notes": notes,
               "total_s": time.perf_counter() - started}
    os.makedirs(args.out_dir, exist_ok=True)
    write_json(os.path.join(args.out_dir, "serve_load.json"), payload, indent=1)
    plot(os.path.join(args.out_dir, "serve_load.png"), points, baseline)
    rows = [[p["server"], p["protocol"], p["mix"], p["vocabulary"], str(p["concurrency"]),
             f"{p['requests_per_s']:.1f}", f"{p['p50_ms']:.1f}", f"{p['p99_ms']:.1f}",
             f"{p['mean_batch']:.2f}" if p["mean_batch"] else "-", str(p["failures"])] for p in points]
    rows.append(["ONNX Runtime loop", "-", "shared", "embeddings", "1", f"{baseline['requests_per_s']:.1f}",
                 f"{baseline['p50_ms']:.1f}", f"{baseline['p99_ms']:.1f}", "1.00", "0"])
    print(format_table(["server", "protocol", "mix", "vocabulary", "clients", "req/s", "p50 ms", "p99 ms",
                        "mean batch", "failed"], rows))
    print("goals: " + ", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}" for k, v in goals.items()))
    print(f"1203 names vs embeddings, alternating: {notes['large_names_vs_embeddings']}")
    print(f"bad requests: {notes.get('bad_requests')}; total {payload['total_s']:.0f} s; "
          f"wrote {args.out_dir}/serve_load.json and .png")
    return 0
