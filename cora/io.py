"""THE image reader (training data, evaluation, relabel and `cora detect` read files here, so 16-bit, gray
and RGBA images mean the same everywhere), and detection output (JSON + annotated PNG) for the command line.

    image = read_image("photo.png")          # uint8 [H, W, 3] RGB
    x = image_tensor(image)                  # Tensor[3, H, W] float32 in [0, 1], what CORA.detect takes
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cora.fileio import atomic_write


def read_image(path: str | Path) -> np.ndarray:
    """Any image PIL reads -> uint8 array [H, W, 3] RGB. Gray, palette, RGBA (alpha dropped) and 16-bit
    / float images (scaled by their range) are converted."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(img, dtype=np.float64)
                top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
                gray = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=2)
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


def image_tensor(image: np.ndarray):
    """uint8 [H, W, 3] RGB (read_image) -> Tensor[3, H, W] float32 RGB in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)  # HWC -> CHW


def _output_path(out_dir: str | Path, image_path: str | Path, suffix: str) -> Path:
    return Path(out_dir) / (Path(image_path).stem + suffix)


def write_detections_json(out_dir, image_path, det: dict, names: list[str]) -> Path:
    """`<out>/<image stem>.json`: {"image", "detections": [{"box" xyxy px, "score", "label", "name"}]}."""
    items = [
        {"box": [round(float(v), 2) for v in box], "score": round(float(score), 5), "label": int(label), "name": names[int(label)]}
        for box, score, label in zip(det["boxes"], det["scores"], det["labels"])
    ]
    path = _output_path(out_dir, image_path, ".json")

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump({"image": str(image_path), "detections": items}, f, indent=2)

    atomic_write(path, write)
    return path


def draw_detections(out_dir, image_path, image: np.ndarray, det: dict, names: list[str]) -> Path:
    """`<out>/<image stem>.png`: the image with boxes and "name score" labels."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    colors = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
    for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
        color = colors[int(label) % len(colors)]
        draw.rectangle(box, outline=color, width=2)
        draw.text((box[0] + 2, box[1] + 1), f"{names[int(label)]} {score:.2f}", fill=color)
    path = _output_path(out_dir, image_path, ".png")
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))
    return path
