"""CLIP-aligned labeling of the training ground truth (run before localizer training; `cora relabel`).

    cora relabel --data shapes --preset tiny --random-init --prompt runs/prompt/prompt.pth \\
                 --out shapes/instances_train_relabel.json
    cora relabel --ann-file annotations/instances_train2017.json --images train2017 --split coco \\
                 --checkpoint ckpt/ --out annotations/instances_train2017_relabel.json
    cora train --ann-file shapes/instances_train_relabel.json --images shapes ...   # then train on it

What the official pipeline does: after stage 1 (the region prompt), every training ground-truth box is
classified by the region classifier (CLIP's layer4 + prompted attention pool on the RoIAligned box,
cosine with the class text embeddings) over the training vocabulary, and the localizer of stage 2 is
trained on the argmax class instead of the annotated one. The localizer's pre-matching (anchors matched to
classes by the same classifier) then agrees with its targets, and ambiguous or wrong labels follow CLIP.

Output: the input json with, per relabelled annotation, `category_id` set to the argmax category. When it
changed, the input's category id is kept as `"original_category_id"` (only then: unchanged annotations are
byte-identical to the input). `info["cora_relabel"]` records the run (see `relabel_annotations` and
cora.cli.relabel). Annotations that are not classified are copied unchanged and counted as "skipped": their
category is outside the vocabulary, they are crowd (`iscrowd: 1`) or ignored (`ignore: 1`), their box has
w or h <= 0, is empty once clipped to the image, or their image is not in the json's images.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor

from cora.data.coco import VOCABULARIES, CocoDetection, read_json
from cora.vocabulary import load_vocabulary

RECORD_KEY = "cora_relabel"  # the run's record in the output's `info`


def parse_vocabulary(value: str) -> str | list[str]:
    """--vocabulary: a named group ("all", "base", "novel", "base+novel") as is, else class names as
    cora.vocabulary.load_vocabulary reads them (comma-separated, or a .txt / COCO-LVIS .json file)."""
    return value.strip() if value.strip() in VOCABULARIES else load_vocabulary(value)


def relabel_dataset(ann_file: str | os.PathLike, image_root: str | os.PathLike,
                    vocabulary: str | Sequence[str] = "base", split=None) -> CocoDetection:
    """The CocoDetection that resolves the vocabulary, the image paths and reads the images for relabelling.

    vocabulary: "base" (per `split`: "coco", "lvis", a split json, or None = coco), "all", "novel",
    "base+novel" or a list of category names. Every image is kept and no transform is applied (the model
    resizes at its inference resolution).
    """
    vocabulary = parse_vocabulary(vocabulary) if isinstance(vocabulary, str) else list(vocabulary)
    return CocoDetection(ann_file, image_root, vocabulary=vocabulary, split=split, transforms=None, drop_empty=False)


def clipped_xyxy(bbox: Sequence[float], width: int, height: int) -> tuple[float, float, float, float] | None:
    """COCO `[x, y, w, h]` (pixels) -> `(x1, y1, x2, y2)` clipped to a width x height image, or None when
    w or h <= 0 or nothing of the box is left inside the image (as cora.data.coco drops it in training)."""
    x, y, w, h = (float(v) for v in bbox)
    if not (w > 0 and h > 0):
        return None
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


@torch.no_grad()
def relabel_annotations(model, dataset: CocoDetection, data: dict | None = None, text_embeddings: Tensor | None = None,
                        batch_size: int = 8, min_score: float | None = None,
                        progress: bool = True) -> tuple[dict, dict]:
    """Classifies every ground-truth box of `data` with the region classifier over `dataset.vocabulary`.

    Args:
        model: a CORA (cora.modeling.detector); its region prompt is the one used. Its CLIP BatchNorms are
            always in eval mode and the region classifier has no dropout, so train / eval mode does not matter.
        dataset: from `relabel_dataset` (every image, no transforms): vocabulary (K names), category ids,
            image paths and image reading.
        data: the instances json of `dataset` (default: read again from `dataset.ann_file`); not modified.
        text_embeddings: Tensor[K, D] of `dataset.vocabulary` (default: `model.encode_vocabulary`).
        batch_size: images per forward pass. Images are resized as `model.preprocess` does for inference
            (shorter side `cfg.inference.min_size`, longer <= `max_size`) and padded bottom/right to the
            batch's size, a multiple of 32.
        min_score: relabel a box only when the softmax over the K logits (already temperature-scaled:
            100 x cosine) gives the argmax at least this probability; otherwise keep its category.

    Returns:
        (the relabelled json, stats). The json is a new dict sharing the unchanged parts of `data`; each
        relabelled annotation whose category changed is a copy with the new `category_id` and
        `"original_category_id"`. stats (also stored as `info["cora_relabel"]`): "vocabulary_ids" (the K
        category ids, label order), "vocabulary_size", "annotations" (all), "classified" (scored by the
        region classifier), "relabelled" (classified and given the argmax: probability >= min_score),
        "changed" (relabelled to another category), "below_min_score" (classified, category kept),
        "skipped" (not classified, copied unchanged: see the module docstring), "min_score".
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    from tqdm import tqdm

    data = read_json(dataset.ann_file) if data is None else data
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise ValueError(f"{dataset.ann_file!r}: 'annotations' must be a list")
    if text_embeddings is None:
        text_embeddings = model.encode_vocabulary(dataset.vocabulary)
    if text_embeddings.dim() != 2 or text_embeddings.shape[0] != dataset.num_classes:
        raise ValueError(f"text_embeddings must be Tensor[K = {dataset.num_classes}, D] (one row per vocabulary "
                         f"class), got {list(text_embeddings.shape)}")
    text_embeddings = text_embeddings.to(model.device)

    # Candidates per image (indices into `annotations`); everything else is skipped without loading images.
    index_of_image = {img["id"]: i for i, img in enumerate(dataset.images)}
    candidates = defaultdict(list)
    for k, ann in enumerate(annotations):
        if ann["category_id"] not in dataset.label_of or ann.get("iscrowd", 0) or ann.get("ignore", 0):
            continue
        _, _, w, h = (float(v) for v in ann["bbox"])
        if ann.get("image_id") in index_of_image and w > 0 and h > 0:  # clipped to the image once it is read
            candidates[index_of_image[ann["image_id"]]].append(k)
    todo = sorted(candidates.items())  # (dataset index, annotation indices), in the json's image order

    new_category: dict[int, int] = {}  # annotation index -> category id given by the classifier
    below = 0
    with tqdm(total=len(todo), desc="relabel", unit="image", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            images = [dataset[i][0] for i, _ in chunk]  # Tensor[3, H_i, W_i] in [0, 1], file size
            batch, sizes, originals = model.preprocess(images)  # [B, 3, H, W]; (h, w) resized and original
            boxes, owners = [], []
            for (_, ann_indices), (rh, rw), (oh, ow) in zip(chunk, sizes.tolist(), originals.tolist()):
                sx, sy = rw / ow, rh / oh  # original pixels -> resized pixels (the padding is bottom/right)
                rows = []
                for k in ann_indices:
                    box = clipped_xyxy(annotations[k]["bbox"], ow, oh)  # the file's size rules, as in training
                    if box is not None:
                        rows.append((box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))
                        owners.append(k)
                boxes.append(torch.tensor(rows, dtype=batch.dtype, device=batch.device).reshape(-1, 4))
            if owners:
                layer3 = model.backbone.features(model.backbone.normalize(batch))  # [B, C3, H/16, W/16]
                logits = model.region_classifier(layer3, boxes, text_embeddings)   # [sum N_i, K]
                score, label = logits.float().softmax(-1).max(-1)                  # [sum N_i] each
                for k, p, lab in zip(owners, score.tolist(), label.tolist()):
                    if min_score is not None and p < min_score:
                        below += 1
                    else:
                        new_category[k] = dataset.category_ids[lab]
            bar.update(len(chunk))

    out_annotations, changed = [], 0
    for k, ann in enumerate(annotations):
        cid = new_category.get(k, ann["category_id"])
        if cid != ann["category_id"]:
            ann = {**ann, "category_id": cid, "original_category_id": ann["category_id"]}
            changed += 1
        out_annotations.append(ann)
    classified = len(new_category) + below
    stats = {"vocabulary_ids": list(dataset.category_ids), "vocabulary_size": dataset.num_classes,
             "annotations": len(annotations), "classified": classified, "relabelled": len(new_category),
             "changed": changed, "below_min_score": below, "skipped": len(annotations) - classified,
             "min_score": min_score}
    info = data.get("info", {})
    if not isinstance(info, dict):
        raise ValueError(f"{dataset.ann_file!r}: 'info' must be an object, got {type(info).__name__}")
    result = {**data, "annotations": out_annotations, "info": {**info, RECORD_KEY: stats}}
    return result, stats
