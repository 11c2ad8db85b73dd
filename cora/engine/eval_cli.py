"""`cora eval`: COCO OVD / LVIS box metrics of a CORA model on a dataset, or of an existing detections file.

    cora eval --checkpoint ckpt/ --data datasets/coco --split coco-ovd        # runs the model, then scores
    cora eval --checkpoint ckpt/ --gt lvis_v1_val.json --images datasets/coco --split lvis \\
              --set inference.max_detections=300
    cora eval --detections eval/detections.json --gt instances_val2017.json --split coco-ovd [--novel cat,dog]

Writes <out>/detections.json (COCO results; model runs only) and <out>/metrics.json (cora.engine.evaluate's
result, plus the inputs), atomically, and prints the metrics table. Single process: detections of a
distributed run are gathered with cora.engine.evaluate.gather_detections and scored with --detections.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Where --data DIR holds the ground truth when --gt is not given (first match): COCO / LVIS releases, then
# cora.data.synthetic's layout. Images: the first of DEFAULT_IMAGES under --data where they are found.
DEFAULT_GT = {
    "coco-ovd": ("annotations/instances_val2017_all_2.json", "annotations/instances_val2017.json",
                 "instances_val.json"),
    "lvis": ("annotations/lvis_v1_val.json", "lvis_v1_val.json", "lvis_val.json"),
}
DEFAULT_IMAGES = ("val2017", ".", "images")
SPLIT_FILE = "split.json"  # {"base": [...], "novel": [...]} beside a dataset (cora.data.synthetic writes one)


def add_eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="COCO OVD / LVIS metrics of a model on a dataset, or of a detections file",
        description="Runs CORA over a dataset's images and scores the detections (pycocotools / lvis-api), or "
                    "scores an existing COCO results file (--detections). Writes detections.json and metrics.json.",
    )
    p.add_argument("--split", required=True, metavar="{coco-ovd,lvis}",
                   help="benchmark: coco-ovd (AP50 novel / base / all) or lvis (AP, APr, APc, APf)")
    p.add_argument("--detections", default=None, help="score this COCO results json instead of running a model")
    p.add_argument("--gt", default=None, help="ground-truth json (default: looked up in --data, "
                   "e.g. annotations/instances_val2017.json, annotations/lvis_v1_val.json)")
    p.add_argument("--data", default=None, help="dataset folder holding the ground truth and the images")
    p.add_argument("--images", default=None, help="image root that file_name is relative to (default: --data/val2017, "
                   "--data or --data/images); LVIS entries without file_name use their coco_url (<folder>/<file>)")
    p.add_argument("--novel", default=None, help="coco-ovd novel classes: comma-separated names, or a split json "
                   '{"base": [...], "novel": [...]} (default: the ground truth\'s info.ovd_split, '
                   "else --data/split.json, "
                   "else the COCO OVD 17 novel / 48 base classes)")
    p.add_argument("--checkpoint", default=None, help="a cora checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--random-init", action="store_true", help="random CORA and CLIP weights (smoke runs)")
    p.add_argument("--preset", default="rn50_coco", help="model preset without --checkpoint (default: rn50_coco)")
    p.add_argument("--clip-weights", default=None, help="a local open_clip checkpoint file for the CLIP backbone")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable, e.g. --set inference.max_detections=300")
    p.add_argument("--novel-prior", type=float, default=1.0, help="class_prior of the novel (LVIS: rare) classes "
                   "in pre-matching (default: 1; the official code uses 8 on COCO)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default: 1)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N images only (default: all)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--out", default="eval", help="output folder (default: ./eval)")
    p.add_argument("--per-class", action="store_true", help="also print per-class AP")
    p.add_argument("--verbose", action="store_true", help="show pycocotools / lvis-api output")
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from cora.cli import CLIError
    from cora.config import unknown_name_message
    from cora.engine import evaluate as ev

    try:
        if args.split not in ev.SPLITS:
            raise ValueError(unknown_name_message("split", args.split, ev.SPLITS))
        if args.novel is not None and args.split == "lvis":
            raise ValueError("--novel is for coco-ovd: LVIS' novel classes are its rare ones (frequency 'r')")
        if args.detections is not None:
            model_flags = [f for f, v in (("--checkpoint", args.checkpoint), ("--random-init", args.random_init),
                                          ("--images", args.images)) if v]
            if model_flags:
                raise ValueError(f"--detections scores an existing file: drop {', '.join(model_flags)}")
        elif args.checkpoint is None and not args.random_init:
            raise ValueError("no CORA weights: pass --checkpoint DIR, --random-init (smoke runs), "
                             "or --detections FILE to score existing detections")
        gt_path = args.gt or _find(args.data, DEFAULT_GT[args.split], "ground truth", "--gt")
        gt = ev.load_ground_truth(gt_path, args.split)
        novel, base = _parse_novel(args.novel)
        if novel is None and args.split == "coco-ovd" and "ovd_split" not in (gt.get("info") or {}) \
                and args.data and (Path(args.data) / SPLIT_FILE).is_file():
            novel, base = _parse_novel(str(Path(args.data) / SPLIT_FILE))
            print(f"novel classes from {Path(args.data) / SPLIT_FILE}: {', '.join(map(str, novel))}")
        if args.detections is not None:
            detections = ev.check_coco_results(ev.load_json(args.detections, "detections file"), args.detections)
            result = ev.evaluate(args.split, detections, gt, novel, None, args.verbose, base)
            info = {"detections": str(args.detections)}
        else:
            result, info = _run_model(args, gt, novel, base)
        metrics_path = Path(args.out) / "metrics.json"
        ev.save_json(metrics_path, {**result, "gt": str(gt_path), **info})
    except (ValueError, FileNotFoundError, OSError) as e:
        raise CLIError(str(e).splitlines()[0]) from e
    print(ev.format_table(result, per_class=args.per_class))
    print(f"wrote {metrics_path}")
    return 0


def _parse_novel(value: str | None) -> tuple[list | None, list | None]:
    """--novel: comma-separated names (digits: category ids) or a split json -> (novel, base or None)."""
    if value is None:
        return None, None
    if value.lower().endswith(".json"):
        from cora.engine.evaluate import load_json

        split = load_json(value, "split file")
        if not isinstance(split, dict) or not isinstance(split.get("novel"), list):
            raise ValueError(f'split file {value} must hold {{"base": [names], "novel": [names]}}')
        return split["novel"], split.get("base")
    names = [int(n) if n.strip().isdigit() else n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise ValueError("--novel names no class")
    return names, None


def _find(root: str | None, candidates, what: str, flag: str) -> Path:
    if root is None:
        raise ValueError(f"no {what}: pass {flag} or --data DIR")
    for rel in candidates:
        if (Path(root) / rel).exists():
            return Path(root) / rel
    raise FileNotFoundError(f"no {what} in {root} (looked for {', '.join(candidates)}): pass {flag}")


def _image_root(data: str | None, first: dict) -> Path:
    from cora.data.coco import image_file

    if data is None:
        raise ValueError("no images: pass --images DIR or --data DIR")
    for rel in DEFAULT_IMAGES:
        if image_file(Path(data) / rel, first).is_file():
            return Path(data) / rel
    raise FileNotFoundError(f"image {image_file(Path(data), first).name} not found under {data} "
                            f"(looked in {', '.join(DEFAULT_IMAGES)}): pass --images DIR")


def _run_model(args, gt: dict, novel, base) -> tuple[dict, dict]:
    """Runs the detector over the ground truth's images and scores it -> (result, info); writes detections.json."""
    import torch

    from cora.cli import build_model
    from cora.config import apply_overrides, config_to_dict, get_preset
    from cora.engine import evaluate as ev
    from cora.checkpoint import load_checkpoint
    from cora.engine.inference import evaluate_model

    if not gt["images"]:
        raise ValueError("the ground truth has no images")
    images_dir = Path(args.images) if args.images else _image_root(args.data, min(gt["images"], key=lambda im: im["id"]))
    state, cfg = load_checkpoint(args.checkpoint) if args.checkpoint else (None, get_preset(args.preset))
    cfg = apply_overrides(cfg, args.overrides)
    if cfg.inference.max_detections < ev.MAX_DETS[args.split]:
        print(f"note: the model keeps {cfg.inference.max_detections} detections per image; {args.split} scores up to "
              f"{ev.MAX_DETS[args.split]} (--set inference.max_detections={ev.MAX_DETS[args.split]})")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg, state, args.clip_weights, args.random_init, device)
    result, detections = evaluate_model(model, args.split, gt, images_dir, novel, base, args.batch_size,
                                        args.novel_prior, args.limit, verbose=args.verbose)
    dets_path = Path(args.out) / "detections.json"
    ev.save_json(dets_path, detections)
    print(f"wrote {dets_path} ({len(detections)} detections)")
    info = {"detections": str(dets_path), "checkpoint": args.checkpoint, "random_init": args.random_init,
            "images": str(images_dir), "novel_prior": args.novel_prior, "config": config_to_dict(cfg)}
    return result, info
