"""Detection metrics: COCO OVD (pycocotools) and LVIS (lvis-api), on COCO-format results.

    dets = detections_to_coco(model.detect([img])[0], image_id=42, category_ids=[1, 2, 3])   # per image
    dets = gather_detections(dets)                    # distributed: all ranks -> rank 0 (no-op otherwise)
    result = evaluate("coco-ovd", dets, "instances_val2017.json", novel=["cat", "dog"])
    print(format_table(result)); save_json("metrics.json", result)

Detections are COCO results: a list of {"image_id": int, "category_id": int, "bbox": [x, y, w, h] pixels,
"score": float}. A result is a dict: "split"; "metrics" (fractions in [0, 1], NaN where no class of a group has
ground truth); "per_class" {name: {"id", "group", "AP", "AP50"}}; "num_images"; "num_detections";
"ignored_detections" (of categories outside the evaluated ones: never scored).

- COCO OVD: AP50 per class = mean over COCO's 101 recall points of the precision at IoU 0.5, area "all",
  100 detections per image; AP50_novel / AP50_base / AP50_all average it over the classes of the group that
  have ground truth (as OVR-CNN, Detic and CORA compute it), beside COCO's AP, AP50, AP75.
- LVIS: lvis-api's AP, APr, APc, APf (and AP50, AP75, APs, APm, APl, AR@300), 300 detections per image.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import math
import threading
import types
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from cora.config import unknown_name_message
from cora.fileio import read_json, write_json

SPLITS = ("coco-ovd", "lvis")
MAX_DETS = {"coco-ovd": 100, "lvis": 300}
RESULTS_FORMAT = 'a list of {"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}'


def detections_to_coco(det: Mapping, image_id: int, category_ids: Sequence[int] | Mapping[int, int]) -> list[dict]:
    """CORA.detect output for one image -> COCO results entries.

    det: "boxes" [M, 4] xyxy pixels of the original image, "scores" [M], "labels" [M] indices into the
    vocabulary (tensors, arrays or lists); label -1 (empty slots of exported models) is skipped.
    category_ids: the category id of each vocabulary index (a sequence, or a mapping label -> id).
    """
    boxes, scores, labels = (np.asarray(det[k].detach().cpu() if hasattr(det[k], "detach") else det[k])
                             for k in ("boxes", "scores", "labels"))
    out = []
    for (x1, y1, x2, y2), score, label in zip(boxes.reshape(-1, 4).tolist(), scores.tolist(), labels.tolist()):
        if label < 0:
            continue
        out.append({"image_id": int(image_id), "category_id": int(category_ids[int(label)]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return out


def check_coco_results(results, source: str = "detections", gt: dict | None = None) -> list[dict]:
    """ValueError unless `results` is in COCO results format (see RESULTS_FORMAT) with finite numbers and
    boxes of non-negative size, and (given the ground truth `gt`) only its image and category ids; returns it.
    A NaN score or box would otherwise be scored as a silent AP of 0."""
    if not isinstance(results, list):
        raise ValueError(f"{source} is not COCO results format: expected {RESULTS_FORMAT}, "
                         f"got {type(results).__name__}")
    for i, d in enumerate(results):
        problem = None
        if not isinstance(d, dict):
            problem = f"is a {type(d).__name__}"
        elif missing := [k for k in ("image_id", "category_id", "bbox", "score") if k not in d]:
            problem = f"lacks {', '.join(map(repr, missing))}"
        elif not all(_is_number(v) for v in (d["image_id"], d["category_id"], d["score"])):
            problem = "has a non-numeric image_id, category_id or score"
        elif not (isinstance(d["bbox"], list) and len(d["bbox"]) == 4 and all(_is_number(v) for v in d["bbox"])):
            problem = f"has bbox {d['bbox']!r}, expected 4 numbers [x, y, w, h]"
        elif not all(math.isfinite(v) for v in (d["score"], *d["bbox"])):
            problem = f"has a non-finite score or bbox (score {d['score']!r}, bbox {d['bbox']!r})"
        elif d["bbox"][2] < 0 or d["bbox"][3] < 0:
            problem = f"has bbox {d['bbox']!r} of negative width or height"
        if problem:
            raise ValueError(f"{source} is not COCO results format: entry {i} {problem} (expected {RESULTS_FORMAT})")
    if gt is not None:
        for what, key, known in (("image", "image_id", {im["id"] for im in gt["images"]}),
                                 ("category", "category_id", {c["id"] for c in gt["categories"]})):
            if unknown := sorted({d[key] for d in results} - known):
                raise ValueError(f"{source} names {len(unknown)} {what} id(s) absent from the ground truth, "
                                 f"e.g. {unknown[:5]}")
    return results


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_json(path_or_dict, what: str):
    if isinstance(path_or_dict, (dict, list)):
        return path_or_dict
    return read_json(path_or_dict, what)


def load_ground_truth(gt, split: str) -> dict:
    """A COCO / LVIS annotation dict (from a path or a dict), checked; missing iscrowd / area get the
    COCO defaults (0, w * h) in a copy, never in the caller's dict."""
    data = load_json(gt, "ground truth")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise ValueError("ground truth must be a COCO / LVIS json with 'images', 'annotations' and 'categories' lists")
    needs = {"images": ["id"] + (["neg_category_ids", "not_exhaustive_category_ids"] if split == "lvis" else []),
             "categories": ["id", "name"] + (["frequency"] if split == "lvis" else []),
             "annotations": ["id", "image_id", "category_id", "bbox"]}
    for key, fields in needs.items():
        for i, entry in enumerate(data[key]):
            if missing := [f for f in fields if f not in entry]:
                kind = "LVIS" if split == "lvis" else "COCO"
                raise ValueError(f"ground truth is not {kind} format: {key}[{i}] lacks {', '.join(map(repr, missing))}")
    anns = [{"iscrowd": 0, "area": a["bbox"][2] * a["bbox"][3], **a} for a in data["annotations"]]
    return {**data, "annotations": anns}


def resolve_categories(categories: list[dict], names_or_ids: Sequence[str | int],
                       what: str = "novel class") -> set[int]:
    """Category ids named by names (LVIS "a_b" and "a b" match) or ids; unknown ones are a ValueError
    listing the choices with a close-match hint."""
    by_name = {c["name"]: c["id"] for c in categories}
    by_name.update({c["name"].replace("_", " "): c["id"] for c in categories})
    ids = set()
    for item in names_or_ids:
        if isinstance(item, int) and not isinstance(item, bool):
            if item not in {c["id"] for c in categories}:
                raise ValueError(f"unknown {what} id {item}; the ground truth has ids "
                                 f"{sorted(c['id'] for c in categories)}")
            ids.add(item)
        elif str(item).strip() in by_name:
            ids.add(by_name[str(item).strip()])
        else:
            names = [c["name"] for c in categories]
            if len(names) > 20:  # LVIS: a hint, not 1203 names
                hint = difflib.get_close_matches(str(item), names, n=3)
                raise ValueError(f"unknown {what} {str(item)!r} among the ground truth's {len(names)} categories"
                                 + (f" (did you mean {', '.join(map(repr, hint))}?)" if hint else ""))
            raise ValueError(unknown_name_message(what, str(item), names))
    return ids


def ovd_groups(categories: list[dict], novel: Sequence[str | int] | None = None,
               base: Sequence[str | int] | None = None, info: dict | None = None) -> tuple[set[int], set[int]]:
    """(novel ids, base ids) over the ground truth's categories.

    novel None: the split recorded in an OVD json's info.ovd_split (cora.data.coco.ovd_instances), else the
    COCO OVD split of cora.data.splits (17 novel / 48 base; the other 15 COCO classes are in neither group).
    Otherwise base defaults to every category that is not novel."""
    if novel is None and isinstance(info, dict) and isinstance(info.get("ovd_split"), dict):
        novel, base = info["ovd_split"].get("novel"), info["ovd_split"].get("base")
    if novel is None:
        from cora.data.splits import coco_ovd_split

        try:
            split = coco_ovd_split(categories)
        except ValueError as e:
            raise ValueError(f"{e}; name the novel classes of this dataset (novel=... / --novel)") from None
        return set(split.novel_ids), set(split.base_ids)
    novel_ids = resolve_categories(categories, novel)
    base_ids = ({c["id"] for c in categories} - novel_ids if base is None
                else resolve_categories(categories, base, "base class"))
    if both := sorted(novel_ids & base_ids):
        raise ValueError(f"categories both novel and base: {both}")
    return novel_ids, base_ids


def parse_novel(value: str | None) -> tuple[list | None, list | None]:
    """The novel classes of a coco-ovd evaluation from text -> (novel, base or None), for `ovd_groups`.

    value: comma-separated names (digit-only items are category ids), or a split json
    {"base": [names], "novel": [names]} (cora.data.synthetic writes one); None -> (None, None).
    """
    if value is None:
        return None, None
    if value.lower().endswith(".json"):
        split = load_json(value, "split file")
        if not isinstance(split, dict) or not isinstance(split.get("novel"), list):
            raise ValueError(f'split file {value} must hold {{"base": [names], "novel": [names]}}')
        return split["novel"], split.get("base")
    names = [int(n) if n.strip().isdigit() else n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise ValueError(f"novel classes: {value!r} names no class")
    return names, None


_NUMPY_SHIM_LOCK = threading.Lock()
_numpy_shim_depth = 0


class _NumpyWithFloat(types.ModuleType):
    """numpy plus the `np.float` alias (it was builtins.float) that numpy 1.24 removed."""

    float = float

    def __getattr__(self, name):
        return getattr(np, name)


@contextlib.contextmanager
def lvis_numpy_compat():
    """Within the block, lvis.eval sees a numpy that has `np.float` (LVISEval.accumulate uses it).

    The one patch for lvis 0.5.3 on numpy >= 1.24: only the `np` name inside `lvis.eval` is swapped, numpy
    itself is never modified. Re-entrant and thread-safe (a depth counter restores it on the last exit)."""
    global _numpy_shim_depth
    import lvis.eval as lvis_eval

    with _NUMPY_SHIM_LOCK:
        if _numpy_shim_depth == 0:
            lvis_eval.np = _NumpyWithFloat("numpy")
        _numpy_shim_depth += 1
    try:
        yield
    finally:
        with _NUMPY_SHIM_LOCK:
            _numpy_shim_depth -= 1
            if _numpy_shim_depth == 0:
                lvis_eval.np = np


@contextlib.contextmanager
def _quiet(verbose: bool):
    """Silences pycocotools' prints and lvis' log records / deprecation warnings unless verbose."""
    logger, level = logging.getLogger("lvis"), logging.getLogger("lvis").level
    logger.setLevel(level if verbose else logging.ERROR)
    try:
        with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("default" if verbose else "ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)



def _prepare(detections, gt: dict, image_ids, cat_ids=None) -> tuple[list[dict], list[int], dict]:
    """Copies of the detections on the evaluated images (+ a sentinel when there are none: both APIs fail
    on an empty list; its category is outside the ground truth, so it is never scored), the image ids and
    the result's counts (images, detections on them, those of categories outside cat_ids)."""
    known = {img["id"] for img in gt["images"]}
    if not known:
        raise ValueError("ground truth has no images")
    check_coco_results(detections, gt=gt)
    image_ids = sorted(known if image_ids is None else set(image_ids))
    if missing := sorted(set(image_ids) - known):
        raise ValueError(f"image_ids absent from the ground truth, e.g. {missing[:5]}")
    keep = set(image_ids)
    dets = [dict(d) for d in detections if d["image_id"] in keep]
    cats = {c["id"] for c in gt["categories"]}
    counts = {"num_images": len(image_ids), "num_detections": len(dets),
              "ignored_detections": sum(d["category_id"] not in (cat_ids or cats) for d in dets)}
    if not dets:
        dets = [{"image_id": image_ids[0], "category_id": max(cats, default=0) + 1, "bbox": [0, 0, 1, 1], "score": 0.0}]
    return dets, image_ids, counts


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _ap(precision: np.ndarray) -> float:
    """Mean of the valid (> -1: the class has ground truth) entries, else NaN."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else math.nan


def evaluate_coco_ovd(detections: list[dict], gt, novel: Sequence[str | int] | None = None,
                      image_ids: Sequence[int] | None = None, verbose: bool = False,
                      base: Sequence[str | int] | None = None) -> dict:
    """COCO OVD metrics (module docstring) over the novel + base classes (see ovd_groups: names or ids;
    default the COCO OVD split). Every metric, COCO's AP too, is over these classes only, as on the
    benchmark's 65-class ground truth; detections of other classes count as ignored."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = load_ground_truth(gt, "coco-ovd")
    novel_ids, base_ids = ovd_groups(gt["categories"], novel, base, gt.get("info"))
    dets, image_ids, counts = _prepare(detections, gt, image_ids, novel_ids | base_ids)
    with _quiet(verbose):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(dets), iouType="bbox")
        coco_eval.params.imgIds = image_ids
        coco_eval.params.catIds = sorted(novel_ids | base_ids)
        coco_eval.params.maxDets = [1, 10, MAX_DETS["coco-ovd"]]
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    p = coco_eval.params
    precision = coco_eval.eval["precision"]  # [T IoUs, R recall points, K classes, A areas, M maxDets]
    t50 = int(np.argmin(np.abs(p.iouThrs - 0.5)))
    area, mdet = p.areaRngLbl.index("all"), len(p.maxDets) - 1
    names = {c["id"]: c["name"] for c in gt["categories"]}
    per_class = {}
    for k, cat_id in enumerate(p.catIds):
        per_class[names[cat_id]] = {"id": int(cat_id), "group": "novel" if cat_id in novel_ids else "base",
                                    "AP": _ap(precision[:, :, k, area, mdet]),
                                    "AP50": _ap(precision[t50, :, k, area, mdet])}
    ap50 = {g: [c["AP50"] for c in per_class.values() if c["group"] == g] for g in ("novel", "base")}
    stats = [math.nan if s < 0 else float(s) for s in coco_eval.stats[:3]]
    metrics = {"AP50_novel": _mean(ap50["novel"]), "AP50_base": _mean(ap50["base"]),
               "AP50_all": _mean(ap50["novel"] + ap50["base"]), "AP": stats[0], "AP50": stats[1], "AP75": stats[2]}
    return {"split": "coco-ovd", "metrics": metrics, "per_class": per_class, **counts}


def evaluate_lvis(detections: list[dict], gt, image_ids: Sequence[int] | None = None,
                  max_dets: int = MAX_DETS["lvis"], verbose: bool = False) -> dict:
    """LVIS box metrics with lvis-api (module docstring); rare classes are the novel ones ("group": r/c/f)."""
    from lvis import LVIS, LVISEval, LVISResults

    gt = load_ground_truth(gt, "lvis")
    dets, image_ids, counts = _prepare(detections, gt, image_ids)
    with _quiet(verbose), lvis_numpy_compat():
        lvis_gt = LVIS.__new__(LVIS)  # LVIS() only reads files; index the dict in place of _load_json
        lvis_gt.logger, lvis_gt.dataset = logging.getLogger("lvis.lvis"), gt
        lvis_gt._create_index()
        lvis_eval = LVISEval(lvis_gt, LVISResults(lvis_gt, dets, max_dets=max_dets), iou_type="bbox")
        lvis_eval.params.img_ids = image_ids
        lvis_eval.params.max_dets = max_dets
        lvis_eval.run()
        if verbose:
            lvis_eval.print_results()
    p = lvis_eval.params
    precision = lvis_eval.eval["precision"]  # [T IoUs, R recall points, K classes, A areas]
    t50 = int(np.argmin(np.abs(p.iou_thrs - 0.5)))
    area = p.area_rng_lbl.index("all")
    cats = {c["id"]: c for c in gt["categories"]}
    per_class = {cats[cat_id]["name"]: {"id": int(cat_id), "group": cats[cat_id]["frequency"],
                                        "AP": _ap(precision[:, :, k, area]), "AP50": _ap(precision[t50, :, k, area])}
                 for k, cat_id in enumerate(p.cat_ids)}
    metrics = {k: math.nan if v < 0 else float(v) for k, v in lvis_eval.results.items()}
    order = ["AP", "APr", "APc", "APf"]
    metrics = {k: metrics[k] for k in order + [k for k in metrics if k not in order]}
    return {"split": "lvis", "metrics": metrics, "per_class": per_class, **counts}


def evaluate(split: str, detections: list[dict], gt, novel: Sequence[str | int] | None = None,
             image_ids: Sequence[int] | None = None, verbose: bool = False,
             base: Sequence[str | int] | None = None) -> dict:
    """evaluate_coco_ovd or evaluate_lvis by split name ("coco-ovd" | "lvis")."""
    if split == "coco-ovd":
        return evaluate_coco_ovd(detections, gt, novel, image_ids, verbose, base)
    if split == "lvis":
        if novel is not None or base is not None:
            raise ValueError("novel classes are LVIS' rare classes (frequency 'r'): do not pass novel for lvis")
        return evaluate_lvis(detections, gt, image_ids, verbose=verbose)
    raise ValueError(unknown_name_message("split", split, SPLITS))



def merge_rank_detections(per_rank: Sequence[list[dict]]) -> list[dict]:
    """Concatenates the ranks' detections; an image found on several ranks (DistributedSampler pads the
    last batch by repeating images) keeps the detections of the first rank that has it."""
    owner, merged = {}, []
    for rank, dets in enumerate(per_rank):
        for d in dets:
            if owner.setdefault(d["image_id"], rank) == rank:
                merged.append(d)
    return merged


def gather_detections(detections: list[dict]) -> list[dict]:
    """All ranks' detections on rank 0 (merge_rank_detections), [] on the other ranks; the list itself when
    torch.distributed is not initialised. Collective: every rank calls it (NCCL: after torch.cuda.set_device)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return list(detections)
    per_rank = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, list(detections))
    return merge_rank_detections(per_rank) if dist.get_rank() == 0 else []


def format_table(result: dict, per_class: bool = False) -> str:
    """The metrics (in %) as a text table; with per_class, one row per class too."""
    title = {"coco-ovd": "COCO OVD", "lvis": "LVIS"}.get(result["split"], result["split"])
    lines = [f"{title} box metrics (%): {result['num_images']} images, {result['num_detections']} detections"
             + (f" ({result['ignored_detections']} of other classes, ignored)"
                if result.get("ignored_detections") else "")]
    lines += [f"  {name:<12} {_pct(value):>6}" for name, value in result["metrics"].items()]
    if per_class:
        lines.append(f"  {'class':<28} {'group':<6} {'AP':>6} {'AP50':>6}")
        lines += [f"  {name[:28]:<28} {c['group']:<6} {_pct(c['AP']):>6} {_pct(c['AP50']):>6}"
                  for name, c in result["per_class"].items()]
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f}"


def save_json(path: str | Path, obj) -> None:
    """Atomic JSON write; NaN becomes null (strict JSON)."""

    def clean(x):
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        return [clean(v) for v in x] if isinstance(x, (list, tuple)) else x

    write_json(path, clean(obj))
