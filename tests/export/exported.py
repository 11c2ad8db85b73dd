"""The tiny CORA (random weights) exported once per test session, shared by tests/export and tests/runtime.

Exporting takes ~15 s on two cores, so each export is cached here for the whole session:
- `runtime_vocabulary(...)`: text_embeddings is an input, dynamic batch / height / width, plus the text encoder;
- `baked_vocabulary(...)`: exported through `cora export` with --vocab and a static image size.
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
    module: object     # the ExportableCORA run eagerly by the parity check
    text_encoder: Path | None = None


def _detector():
    from export.to_onnx import load_detector

    return load_detector(SOURCE)


def runtime_vocabulary(tmp_path_factory) -> Exported:
    if "runtime" not in _CACHE:
        from export.to_onnx import export_detector, export_text_encoder

        from cora.modeling.exportable import ExportableCORA

        out = tmp_path_factory.mktemp("export_runtime")
        detector, cfg = _detector()
        meta = export_detector(detector, cfg, out / "tiny.onnx", source=SOURCE)
        export_text_encoder(detector._clip_model[0], out / "text.onnx", source=SOURCE)
        module = ExportableCORA.from_detector(detector, **meta["postprocess"]).eval()
        _CACHE["runtime"] = Exported(out / "tiny.onnx", meta, detector, module, out / "text.onnx")
    return _CACHE["runtime"]


def baked_vocabulary(tmp_path_factory) -> Exported:
    if "baked" not in _CACHE:
        import argparse

        from cora.export_cli import add_export_parser
        from cora.modeling.exportable import ExportableCORA
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
        module = ExportableCORA.from_detector(detector, detector.encode_vocabulary(BAKED_NAMES),
                                              **meta["postprocess"]).eval()
        _CACHE["baked"] = Exported(out, meta, detector, module)
    return _CACHE["baked"]
