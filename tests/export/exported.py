"""The tiny CORA (random weights) exported once per test session, shared by tests/export and tests/runtime.

Exporting takes ~25 s on two cores (with its parity check), so each export is cached for the whole session:
- `runtime_vocabulary(...)`: text_embeddings is an input, dynamic batch / height / width, plus the text encoder;
- `baked_vocabulary(...)`: exported through `cora export` with --vocab and a static image size.

`without_image_sizes(...)` rewrites an export into the graph exported before `image_sizes` was an input
(the un-padded size was the input size, no metadata of the current format), to check that old files fail
clearly and that the parity cases catch the difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SOURCE = {"preset": "tiny", "overrides": [], "checkpoint": None, "clip_weights": None, "random_init": True, "seed": 0}
BAKED_NAMES = ["cat", "dog", "traffic light"]
BAKED_SIZE = (96, 128)

_CACHE: dict[str, "Exported"] = {}


@dataclass
class Exported:
    path: Path
    meta: dict
    detector: object   # the PyTorch CORA it was exported from
    module: object     # the module that was exported (cora.export.graph.export_module), the parity reference
    text_encoder: Path | None = None


def _detector():
    from cora.checkpoint import load_model

    return load_model(**SOURCE)


def runtime_vocabulary(tmp_path_factory) -> Exported:
    if "runtime" not in _CACHE:
        from cora.export.onnx import export_detector, export_text_encoder

        out = tmp_path_factory.mktemp("export_runtime")
        detector = _detector()
        meta = export_detector(detector, out / "tiny.onnx", source=SOURCE)  # parity-checked at K = 1, 7
        export_text_encoder(detector, out / "text.onnx", source=SOURCE)
        _CACHE["runtime"] = Exported(out / "tiny.onnx", meta, detector, detector, out / "text.onnx")
    return _CACHE["runtime"]


def baked_vocabulary(tmp_path_factory) -> Exported:
    if "baked" not in _CACHE:
        import argparse

        from cora.cli import export
        from cora.export.graph import export_module
        from cora.export.onnx import read_sidecar

        out = tmp_path_factory.mktemp("export_baked") / "baked.onnx"
        parser = argparse.ArgumentParser(prog="cora")
        export.add_parser(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["export", "--preset", "tiny", "--random-init", "--out", str(out),
                                  "--vocab", ",".join(BAKED_NAMES), "--image-size", *map(str, BAKED_SIZE),
                                  "--max-detections", "10"])
        assert args.run(args) == 0
        meta = read_sidecar(out)
        from cora.checkpoint import load_model

        detector = load_model(**meta["source"])
        module = export_module(detector, detector.encode_vocabulary(BAKED_NAMES))
        _CACHE["baked"] = Exported(out, meta, detector, module)
    return _CACHE["baked"]


def without_image_sizes(path: Path, out: Path) -> Path:
    """Copy the export at `path` to `out` with its `image_sizes` input replaced by the input size,
    [[H, W]] * B computed from Shape(images): the graph as exported before image_sizes was an input."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    del model.metadata_props[:]  # an old export: no metadata of the current format
    graph = model.graph
    kept = [i for i in graph.input if i.name != "image_sizes"]
    del graph.input[:]
    graph.input.extend(kept)
    graph.initializer.extend([helper.make_tensor(n, TensorProto.INT64, [len(v)], v) for n, v in
                              (("old_0", [0]), ("old_1", [1]), ("old_2", [2]), ("old_4", [4]))])
    nodes = [
        helper.make_node("Shape", ["images"], ["old_shape"]),                          # [B, 3, H, W]
        helper.make_node("Slice", ["old_shape", "old_0", "old_1"], ["old_batch"]),     # [B]
        helper.make_node("Slice", ["old_shape", "old_2", "old_4"], ["old_hw"]),        # [H, W]
        helper.make_node("Unsqueeze", ["old_hw", "old_0"], ["old_hw_row"]),            # [1, 2]
        helper.make_node("Concat", ["old_batch", "old_2"], ["old_target"], axis=0),    # [B, 2]
        helper.make_node("Expand", ["old_hw_row", "old_target"], ["image_sizes"]),     # [[H, W]] * B
    ]
    for i, node in enumerate(nodes):  # before their consumers: the node list is in topological order
        graph.node.insert(i, node)
    onnx.save(model, str(out))
    return out
