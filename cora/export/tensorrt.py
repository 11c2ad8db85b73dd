"""Build a TensorRT engine from an exported CORA ONNX file (TensorRT 10.x Python API).

    python export/to_trt.py --onnx cora.onnx --out cora.engine --fp16
    python export/to_trt.py --onnx cora.onnx --out cora.engine --vocab-profile 1 80 4096 \\
        --image-profile 416 416 800 1344 1344 1344 --batch-profile 1 1 4 --workspace 8

One optimisation profile covers min / opt / max of the dynamic dims: K (text_embeddings, class_prior),
batch (images, image_sizes) and image size (static dims are kept). With --fp16 the layers whose range or accumulation matters
stay in float32: softmax (pre-matching, region classifier, attention-pool weights) and the layer feeding
each softmax (the attention-pool logits and the 100 * cosine logits), normalisation (L2 / layer norm,
reductions), TopK and NMS. RoiAlign becomes the ROIAlign_TRT plugin: libnvinfer_plugin is initialised
before parsing. Writes the engine atomically and `<out>.json` (the ONNX sidecar + build settings).

Without TensorRT or a CUDA GPU this exits 1 with one line; the ONNX file stays usable with ONNX Runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

from cora.errors import UserError
from cora.fileio import atomic_write, write_json


def tensorrt_missing(onnx_path: str | None) -> str | None:
    """None when TensorRT and a CUDA GPU are usable, else the one-line reason (onnx_path: the ONNX file
    that stays usable, None when none was exported yet)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        what = "TensorRT is not installed (Python package `tensorrt`, from NVIDIA)"
    else:
        import torch

        if torch.cuda.is_available():
            return None
        what = "no CUDA GPU is visible"
    if onnx_path is None:
        return (f"{what}: cannot build an engine here. Export with --format onnx instead (usable with ONNX Runtime: "
                "cora.runtime.onnx.OnnxDetector) and build the engine on a machine with TensorRT 10")
    return (f"{what}: cannot build an engine here. The ONNX file {onnx_path} is still usable "
            "(ONNX Runtime: cora.runtime.onnx.OnnxDetector; or build the engine on a machine with TensorRT 10)")


def default_image_profile(meta: dict) -> list[int]:
    pre = meta.get("preprocess", {})
    up = lambda v: -(-int(v) // 32) * 32  # noqa: E731
    lo, hi = up(pre.get("min_size", 800)), up(pre.get("max_size", 1333))
    return [up(lo // 2), up(lo // 2), lo, hi, hi, hi]


def build_engine(onnx_path: str, out: str, *, fp16: bool, vocab_profile, image_profile, batch_profile,
                 workspace_gib: float) -> dict:
    """Parse, configure and build; writes the engine and `<out>.json`. Returns the sidecar dict."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # ROIAlign_TRT (RoiAlign) lives in libnvinfer_plugin
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors} (run `export/check.py lint`)")
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    if "image_sizes" not in inputs:  # an export older than the padding mask: it differs from CORA.detect
        raise UserError(f"{onnx_path} has no 'image_sizes' input (inputs: {', '.join(inputs)}): re-export it with "
                         "export/to_onnx.py (or `cora export`) before building an engine")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    kept_fp32 = 0
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        kept_fp32 = _keep_fp32(network, trt)

    profile = builder.create_optimization_profile()
    shapes = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        dims = list(t.shape)
        lo, opt, hi = ([*d] for d in (dims, dims, dims))
        for j, dim in enumerate(dims):
            if dim != -1:
                continue
            if t.name in ("text_embeddings", "class_prior") and j == 0:
                lo[j], opt[j], hi[j] = vocab_profile
            elif t.name in ("images", "image_sizes") and j == 0:
                lo[j], opt[j], hi[j] = batch_profile
            elif t.name == "images" and j in (2, 3):
                lo[j], opt[j], hi[j] = image_profile[j - 2], image_profile[j], image_profile[j + 2]
            else:
                raise UserError(f"input {t.name!r} has a dynamic dim {j} that no profile flag covers")
        profile.set_shape(t.name, lo, opt, hi)
        shapes[t.name] = {"min": lo, "opt": opt, "max": hi}
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError("TensorRT failed to build the engine (see the log above)")
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(serialized))

    side = Path(f"{onnx_path}.json")
    meta = json.loads(side.read_text()) if side.is_file() else {}
    meta.update(format="engine", onnx=str(onnx_path), tensorrt_version=trt.__version__, fp16=fp16,
                layers_kept_fp32=kept_fp32, profiles=shapes, workspace_gib=workspace_gib)
    write_json(f"{out}.json", meta, indent=2)
    return meta


def _keep_fp32(network, trt) -> int:
    """Pin softmax, normalisation / reductions, TopK, NMS and each softmax's input layer to float32."""
    keep_types = {trt.LayerType.SOFTMAX, trt.LayerType.NORMALIZATION, trt.LayerType.REDUCE, trt.LayerType.TOPK,
                  trt.LayerType.NMS}
    producer = {}  # tensor name -> index of the layer writing it
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            producer[layer.get_output(j).name] = i
    pinned = set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in keep_types:
            pinned.add(i)
            if layer.type == trt.LayerType.SOFTMAX and layer.get_input(0).name in producer:
                pinned.add(producer[layer.get_input(0).name])  # the logits: attention-pool q.k, 100 * cosine
    for i in pinned:
        layer = network.get_layer(i)
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
    return len(pinned)
