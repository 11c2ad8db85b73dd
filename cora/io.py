"""THE image reader (training data, evaluation, relabel and `cora detect` read files here, so 16-bit, gray
and RGBA images mean the same everywhere), and detection output (JSON + annotated PNG) for the command line.

    image = read_image("photo.png")          # uint8 [H, W, 3] RGB
    x = image_tensor(image)                  # Tensor[3, H, W] float32 in [0, 1], what CORA.detect takes
    outputs = detection_outputs("out", ["a/x.png", "b/x.png"])   # [(out/a/x.json, out/a/x.png), (out/b/...)]
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from cora.errors import UserError
from cora.fileio import atomic_write


def read_image(path: str | Path) -> np.ndarray:
    """Any image PIL reads -> uint8 array [H, W, 3] RGB. Gray, palette, RGBA (alpha dropped) and 16-bit
    / float images (scaled by their range) are converted.

    FileNotFoundError for a missing file; ValueError naming the file for anything PIL cannot decode (garbage,
    truncated) and for images above PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS` pixels,
    89.5 M by default: a tiny file may declare a huge image; raise the limit to read larger ones)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL checks on open, before decoding
            opened = Image.open(path)
        with opened as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(img, dtype=np.float64)
                top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
                gray = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=2)
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    # PIL's decoders raise all of these for corrupt files (UnidentifiedImageError and truncation are OSErrors)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError, OSError, SyntaxError, ValueError,
            EOFError, struct.error) as e:
        raise ValueError(f"cannot read image {path}: {str(e) or type(e).__name__}") from None


def image_tensor(image: np.ndarray):
    """uint8 [H, W, 3] RGB (read_image) -> Tensor[3, H, W] float32 RGB in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)  # HWC -> CHW


def detection_outputs(out_dir: str | Path, image_paths, inputs=()) -> list[tuple[Path, Path]]:
    """The (json, png) output paths of `cora detect` for each image: `<out>/<stem>.json` and `.png`.

    Distinct images never share an output: images from several folders keep their folder relative to the
    images' common folder (a/x.png, b/x.png -> <out>/a/x.*, <out>/b/x.*), and images of one folder that share
    a stem keep their suffix in the name (x.png, x.jpg -> x_png.*, x_jpg.*). UserError when an image is
    given twice, or when an output would replace an image or one of `inputs` (e.g. the vocabulary file)."""
    images = [Path(os.path.abspath(p)) for p in image_paths]
    twice = [str(p) for p, n in Counter(images).items() if n > 1]
    if twice:
        raise UserError(f"image {twice[0]} is given twice")
    common = Path(os.path.commonpath([p.parent for p in images]))
    folders = [p.parent.relative_to(common) for p in images]
    shared = Counter((folder, p.stem) for folder, p in zip(folders, images))
    stems = [Path(out_dir) / folder / (p.stem if shared[folder, p.stem] == 1 else f"{p.stem}_{p.suffix[1:]}")
             for folder, p in zip(folders, images)]
    outputs = [(Path(f"{stem}.json"), Path(f"{stem}.png")) for stem in stems]
    written = [Path(os.path.realpath(o)) for pair in outputs for o in pair]
    if len(set(written)) != len(written):  # x.png + x.jpg + x_png.gif would all write x_png.*: refuse
        clash = next(o for o, n in Counter(written).items() if n > 1)
        raise UserError(f"two images would both write {clash}; rename one of them")
    protected = {Path(os.path.realpath(p)) for p in (*images, *inputs)}  # links resolved
    for o in written:
        if o in protected:
            raise UserError(f"output {o} would replace an input file; choose another output folder (--out)")
    return outputs


def write_detections_json(path, image_path, det: dict, names: list[str]) -> Path:
    """`path` (see detection_outputs): {"image", "detections": [{"box" xyxy px, "score", "label", "name"}]}."""
    items = [
        {"box": [round(float(v), 2) for v in box], "score": round(float(score), 5), "label": int(label), "name": names[int(label)]}
        for box, score, label in zip(det["boxes"], det["scores"], det["labels"])
    ]
    path = Path(path)

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump({"image": str(image_path), "detections": items}, f, indent=2)

    atomic_write(path, write)
    return path


def draw_detections(path, image: np.ndarray, det: dict, names: list[str]) -> Path:
    """`path` (see detection_outputs): the image with boxes and "name score" labels, as a PNG."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    colors = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
    for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
        color = colors[int(label) % len(colors)]
        draw.rectangle(box, outline=color, width=2)
        draw.text((box[0] + 2, box[1] + 1), f"{names[int(label)]} {score:.2f}", fill=color)
    path = Path(path)
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))
    return path
