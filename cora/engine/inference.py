"""Runs a CORA model over a ground truth's images and scores it: what `cora eval` and the periodic evaluation
of training share.

    result, detections = evaluate_model(model, "coco-ovd", gt, images_dir, batch_size=8)
    result["metrics"]["AP50_novel"]

Under torch.distributed every process detects its share of the images (every world_size-th) and process 0
scores them all; the other processes get (None, []).
"""

from __future__ import annotations

from pathlib import Path

import torch

from cora.data.coco import image_file
from cora.engine import distributed
from cora.engine import evaluate as ev
from cora.io import image_tensor, read_image
from cora.vocabulary import category_name


def eval_categories(gt: dict, split: str, novel=None, base=None) -> tuple[list[dict], list[str], set[int]]:
    """The categories a model is asked for (sorted by id), their names as text prompts, and the novel ids:
    coco-ovd: novel + base classes (ev.ovd_groups); lvis: all, rare = novel."""
    if split == "coco-ovd":
        novel_ids, base_ids = ev.ovd_groups(gt["categories"], novel, base, gt.get("info"))
        categories = [c for c in gt["categories"] if c["id"] in novel_ids | base_ids]
    else:
        categories = list(gt["categories"])
        novel_ids = {c["id"] for c in categories if c["frequency"] == "r"}
    categories.sort(key=lambda c: c["id"])
    return categories, [category_name(c) for c in categories], novel_ids


def image_files(images: list[dict], images_dir: str | Path, what: str = "images", hint: str = "") -> list[Path]:
    """The files of ground-truth image entries (cora.data.coco.image_file); FileNotFoundError naming how many are
    missing, one of them, and `hint`."""
    paths = [image_file(images_dir, im) for im in images]
    if missing := [p for p in paths if not p.is_file()]:
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} {what} not found under {images_dir}, e.g. "
                                f"{missing[0]}{hint}")
    return paths


@torch.no_grad()
def evaluate_model(model, split: str, gt: dict, images_dir: str | Path, novel=None, base=None, batch_size: int = 1,
                   novel_prior: float = 1.0, limit: int | None = None,
                   progress: bool = True, verbose: bool = False,
                   text_embeddings: torch.Tensor | None = None) -> tuple[dict | None, list[dict]]:
    """Detects on the first `limit` images of `gt` (by id; all by default) and scores them.

    model: a CORA, or an exported detector of cora.runtime (anything with its `detect` / `encode_vocabulary`).
    gt: a loaded ground truth (ev.load_ground_truth). novel_prior multiplies the novel classes' pre-matching
    probabilities; verbose shows pycocotools / lvis-api output. text_embeddings: Tensor[K, D] for the
    evaluated categories in id order (default: the model's text encoder on their names). Returns (cora.engine.evaluate's result, the
    COCO results) on process 0, (None, []) on the others.
    """
    from tqdm import tqdm

    if batch_size < 1 or (limit is not None and limit < 1):
        raise ValueError("batch_size and limit must be >= 1")
    categories, names, novel_ids = eval_categories(gt, split, novel, base)
    images = sorted(gt["images"], key=lambda im: im["id"])[:limit]
    if not images:
        raise ValueError("the ground truth has no images")
    paths = image_files(images, images_dir)
    device = model.device
    text = model.encode_vocabulary(names) if text_embeddings is None else text_embeddings
    text = torch.as_tensor(text, device=device)
    if text.shape[0] != len(categories):
        raise ValueError(f"text_embeddings must be Tensor[{len(categories)}, D] (one per category), got {list(text.shape)}")
    prior = torch.tensor([novel_prior if c["id"] in novel_ids else 1.0 for c in categories], device=device)
    cat_ids = [c["id"] for c in categories]
    mine = list(range(distributed.rank(), len(images), distributed.world_size()))
    # restored after: training keeps CLIP in eval mode (an exported model has no modes)
    modes = {m: m.training for m in model.modules()} if isinstance(model, torch.nn.Module) else {}
    for m in modes:
        m.eval()
    detections = []
    with tqdm(total=len(mine), desc="eval", unit="image", disable=not progress) as bar:
        for start in range(0, len(mine), batch_size):
            batch = mine[start: start + batch_size]
            tensors = [image_tensor(read_image(paths[i])) for i in batch]
            for i, det in zip(batch, model.detect(tensors, text_embeddings=text, class_prior=prior)):
                detections += ev.detections_to_coco(det, images[i]["id"], cat_ids)
            bar.update(len(batch))
    for m, mode in modes.items():
        m.train(mode)
    detections = ev.gather_detections(detections)
    if distributed.rank() != 0:
        return None, []
    return ev.evaluate(split, detections, gt, novel, [im["id"] for im in images], verbose, base), detections
