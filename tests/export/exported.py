"""The tiny CORA (random weights) exported once per test session, shared by tests/export and tests/runtime.

Exporting takes ~15 s on two cores, so each export is cached here for the whole session:
- `runtime_vocabulary(...)`: text_embeddings is an input, dynamic batch / height / width, plus the text encoder;
- `baked_vocabulary(...)`: exported through `cora export` with --vocab and a static image size.

`without_image_sizes(...)` rewrites an export into the graph exported before `image_sizes` was an input
(the un-padded size was the input size), to check that old files fail clearly and that the parity cases
catch the difference.
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
    module: object     # the ExportableCORA it was exported from, run eagerly
    reference: object  # export.parity.DetectorReference: CORA.forward + postprocess, the parity reference
    text_encoder: Path | None = None


def _detector():
    from export.to_onnx import load_detector

    return load_detector(SOURCE)


def runtime_vocabulary(tmp_path_factory) -> Exported:
    if "runtime" not in _CACHE:
        from export.parity import DetectorReference
        from export.to_onnx import export_detector, export_text_encoder

        from cora.modeling.exportable import ExportableCORA

        out = tmp_path_factory.mktemp("export_runtime")
        detector, cfg = _detector()
        meta = export_detector(detector, cfg, out / "tiny.onnx", source=SOURCE)
        export_text_encoder(detector._clip_model[0], out / "text.onnx", source=SOURCE)
        module = ExportableCORA.from_detector(detector, **meta["postprocess"]).eval()
        reference = DetectorReference(detector, **meta["postprocess"])
        _CACHE["runtime"] = Exported(out / "tiny.onnx", meta, detector, module, reference, out / "text.onnx")
    return _CACHE["runtime"]


def baked_vocabulary(tmp_path_factory) -> Exported:
    if "baked" not in _CACHE:
        import argparse

        from cora.export_cli import add_export_parser
        from cora.modeling.exportable import ExportableCORA
        from export.parity import DetectorReference
        from export.to_onnx import read_sidecar

        out = tmp_path_factory.mktemp("export_baked") / "baked.onnx"
        parser = argparse.ArgumentParser(prog="cora")
        add_export_parser(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["export", "--preset", "tiny", "--random-init", "--out", str(out),
                                  "--vocab", ",".join(BAKED_NAMES), "--image-size", *map(str, BAKED_SIZE),
                                  "--max-detections", "10"])
        code = args.run(args)
        assert code == 0
        meta = read_sidecar(out)
        detector, _ = _detector()
        text = detector.encode_vocabulary(BAKED_NAMES)
        module = ExportableCORA.from_detector(detector, text, **meta["postprocess"]).eval()
        _CACHE["baked"] = Exported(out, meta, detector, module, DetectorReference(detector, text, **meta["postprocess"]))
    return _CACHE["baked"]


def without_image_sizes(path: Path, out: Path) -> Path:
    """Copy the export at `path` to `out` with its `image_sizes` input replaced by the input size,
    [[H, W]] * B computed from Shape(images): the graph as exported before image_sizes was an input."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
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
