"""cora.bench.vocab_scaling (`python benchmarks/vocab_scaling.py`) and its parts (timing, vocab_backends,
vocab_cells, vocab_report; smoke preset: tiny model, seconds) and the OV-DETR-style baseline it measures."""

import importlib.util
import json
import math

import pytest
import torch

from cora.bench import vocab_scaling
from cora.bench.conditional_baseline import ConditionalMatchingBaseline, postprocess_conditional
from cora.bench.timing import StageTimer
from cora.bench.vocab_backends import BASELINE_STAGES, CORA_STAGES, Inputs, backend_status, cora_runner
from cora.bench.vocab_cells import STOPPED
from cora.config import get_preset
from cora.modeling.detector import CORA

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_smoke(tmp_path, *extra):
    json_path, png_path = tmp_path / "vs.json", tmp_path / "vs.png"
    code = vocab_scaling.main(["--preset", "smoke", "--json", str(json_path), "--plot", str(png_path),
                               "--no-progress", *extra])
    assert code == 0
    return json.loads(json_path.read_text()), png_path


def test_smoke_writes_json_and_png(tmp_path, capsys):
    payload, png = run_smoke(tmp_path, "--backends", "eager,tensorrt")
    out = capsys.readouterr().out

    for key in ("machine", "shapes", "timed_path", "weights", "memory_method", "settings", "backends", "config",
                "results", "summary", "wall_s"):
        assert key in payload, key
    assert payload["preset"] == "smoke" and payload["dtype"] == "fp32"
    assert payload["shapes"]["image"] == [1, 3, 128, 192]
    assert payload["backends"]["eager"] == "run"
    if importlib.util.find_spec("tensorrt") is None:
        assert payload["backends"]["tensorrt"] == "unavailable: TensorRT not installed"

    eager = [r for r in payload["results"] if r["backend"] == "eager"]
    assert {(r["method"], r["K"]) for r in eager} == {(m, k) for m in ("cora", "conditional") for k in (1, 16)}
    stages = {"cora": CORA_STAGES, "conditional": BASELINE_STAGES}
    for r in eager:
        assert r["status"] == "ok"
        assert r["latency_ms"]["runs"] == 1 and 0 < r["latency_ms"]["median"] <= r["latency_ms"]["p90"]
        assert r["memory"]["peak_mb"] > 0 and r["memory"]["delta_mb"] >= 0
        assert tuple(r["stages_ms"]) == stages[r["method"]]
        # One timed run: the stages partition it exactly.
        assert sum(r["stages_ms"].values()) == pytest.approx(r["latency_ms"]["median"], rel=1e-6)
    passes = {r["K"]: r["decoder_passes"] for r in eager if r["method"] == "conditional"}
    assert passes == {1: 1, 16: 2}
    assert set(payload["summary"]["speedup"]["eager"]) == {"1", "16"}
    assert payload["summary"]["cora_flatness"]["eager"]["K_max"] == 16

    assert "OV-DETR-style" in out and "region classification" in out and "input 1x3x128x192" in out
    assert png.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
@pytest.mark.skipif(backend_status("onnxruntime", "cpu", "fp32") is not None,
                    reason="no ONNX export / runtime in this tree")
def test_onnxruntime_backend_times_the_exported_graph(tmp_path):
    payload, _ = run_smoke(tmp_path, "--backends", "eager,onnxruntime")
    assert payload["backends"]["onnxruntime"].startswith("run (providers ")
    rows = [r for r in payload["results"] if r["backend"] == "onnxruntime"]
    assert [(r["method"], r["K"], r["status"]) for r in rows] == [("cora", 1, "ok"), ("cora", 16, "ok")]
    assert "stages_ms" not in rows[0] and rows[0]["latency_ms"]["median"] > 0
    assert "onnxruntime" in payload["summary"]["cora_flatness"]


def test_budget_stops_the_baseline_and_is_never_projected(tmp_path):
    payload, png = run_smoke(tmp_path, "--budget-s", "0")
    baseline = [r for r in payload["results"] if r["method"] == "conditional"]
    assert [r["K"] for r in baseline] == [1, 16]
    assert all(r["status"] == STOPPED and "latency_ms" not in r for r in baseline)
    assert all(r["status"] == "ok" for r in payload["results"] if r["method"] == "cora")
    assert payload["summary"]["speedup"]["eager"] == {"1": STOPPED, "16": STOPPED}
    assert png.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("argv, message", [
    (["--preset", "smok"], "did you mean 'smoke'"),
    (["--backends", "eager,onnx"], "choose from eager, compile, onnxruntime, tensorrt"),
    (["--vocab-sizes", "0,4"], "integers >= 1"),
    (["--image-size", "100x200"], "multiples of 32"),
    (["--backends", "compile", "--warmup", "0"], "--warmup >= 1"),
])
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        vocab_scaling.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return CORA.from_config(get_preset("tiny"), random_init=True).eval()


def test_cora_stage_hooks_mark_the_stages_in_order(tiny):
    inputs = Inputs((128, 192), tiny.backbone.embed_dim, "cpu", torch.float32, seed=0)
    runner = cora_runner(tiny, inputs, "eager", None)
    runner.prepare(5)
    timer = StageTimer("cpu")
    with torch.inference_mode():
        runner.run(timer)
    total, split = timer.end()
    assert tuple(timer.stages) == CORA_STAGES
    assert sum(split.values()) == pytest.approx(total)
    # The hooks live for one run only.
    assert not tiny.localizer._forward_hooks and not tiny.localizer._forward_pre_hooks
    assert not tiny.backbone.visual.layer4._forward_pre_hooks


@pytest.mark.parametrize("k", [1, 15, 16, 31])
def test_baseline_decodes_chunks_of_15_classes(tiny, k):
    n = 3
    baseline = ConditionalMatchingBaseline.from_detector(tiny, queries_per_class=n).eval()
    queries = []
    handle = tiny.localizer.transformer.decoder.register_forward_pre_hook(
        lambda module, args: queries.append(args[0].shape[0]))
    text = torch.nn.functional.normalize(torch.randn(k, tiny.backbone.embed_dim), dim=-1)
    sizes = torch.tensor([[128, 192]])
    try:
        with torch.inference_mode():
            out = baseline(torch.rand(1, 3, 128, 192), sizes, text)
    finally:
        handle.remove()
    assert len(queries) == baseline.num_passes(k) == math.ceil(k / 15)
    assert queries == [min(15, k - 15 * i) * n for i in range(len(queries))]
    assert out["boxes"].shape == (1, k * n, 4) and out["logits"].shape == (1, k * n)

    (det,) = postprocess_conditional(out["logits"], out["boxes"], sizes, n)
    m = min(300, k * n)
    assert det["boxes"].shape == (m, 4) and det["scores"].shape == (m,)
    assert bool((det["scores"][:-1] >= det["scores"][1:]).all())
    index = out["logits"][0].sigmoid().topk(m).indices
    assert torch.equal(det["labels"], index // n)  # each query's label is the class it was conditioned on


def test_baseline_conditions_each_query_on_its_class(tiny):
    """Changing class j's embedding changes only the queries of class j's chunk, and shares weights with CORA."""
    baseline = ConditionalMatchingBaseline.from_detector(tiny, queries_per_class=2).eval()
    assert baseline.localizer is tiny.localizer and baseline.backbone is tiny.backbone
    text = torch.nn.functional.normalize(torch.randn(20, tiny.backbone.embed_dim), dim=-1)
    images, sizes = torch.rand(1, 3, 128, 192), torch.tensor([[128, 192]])
    with torch.inference_mode():
        before = baseline(images, sizes, text)["logits"][0]
        changed = text.clone()
        changed[17] = -changed[17]  # a class of the second chunk (classes 15..19)
        after = baseline(images, sizes, changed)["logits"][0]
    assert torch.equal(before[:30], after[:30])  # first chunk: 15 classes x 2 queries, untouched
    assert not torch.equal(before[30:], after[30:])
