"""`cora eval`: COCO OVD / LVIS box metrics of a model on a dataset, or of an existing detections file.

    cora eval --checkpoint ckpt/ --data datasets/coco --split coco-ovd        # official protocol (the default)
    cora eval --checkpoint ckpt/ --data datasets/coco --split coco-ovd --protocol cora
    cora eval --checkpoint ckpt/ --gt lvis_v1_val.json --images datasets/coco --split lvis \\
              --set inference.max_detections=300
    cora eval --checkpoint cora.onnx --data datasets/coco --split coco-ovd    # an exported model
    cora eval --detections eval/detections.json --gt instances_val2017.json --split coco-ovd [--novel cat,dog]

Protocols (--protocol; default: official for coco-ovd, cora otherwise) differ in three settings:

    setting                              official (CORA's evaluation code)   cora
    prompt length of the text encoder    15 tokens (--text_len 15)           77 (text_context_length)
    (box, class) pairs entering NMS      all above the score threshold       best 3000 (inference.pre_nms_topk)
    novel classes' pre-matching prior    x 8 (coco-ovd)                      x 1 (--novel-prior)

The protocol's settings come first: --set and --novel-prior given by the user win, and the printed protocol
line shows the values used. Writes <out>/detections.json (COCO results; model runs only) and
<out>/metrics.json (cora.engine.evaluate's result, plus the inputs), atomically, and prints the metrics table.
Single process: detections of a distributed run are gathered with cora.engine.evaluate.gather_detections and
scored with --detections.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cora.cli import common
from cora.errors import UserError

# Where --data DIR holds the ground truth when --gt is not given (first match): COCO / LVIS releases, then
# cora.data.synthetic's layout. Images: the first of DEFAULT_IMAGES under --data where they are found.
DEFAULT_GT = {
    "coco-ovd": ("annotations/instances_val2017_all_2.json", "annotations/instances_val2017.json",
                 "instances_val.json"),
    "lvis": ("annotations/lvis_v1_val.json", "lvis_v1_val.json", "lvis_val.json"),
}
DEFAULT_IMAGES = ("val2017", ".", "images")

PROTOCOLS = ("official", "cora")
# The official evaluation (github.com/tgxs002/CORA): `--text_len 15` for the text encoder, every (box, class)
# pair above the threshold into NMS, and on COCO the 17 novel classes' pre-matching scores x 8.
OFFICIAL_OVERRIDES = ("text_context_length=15", "inference.pre_nms_topk=0")
OFFICIAL_NOVEL_PRIOR = {"coco-ovd": 8.0, "lvis": 1.0}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="COCO OVD / LVIS metrics of a model on a dataset, or of a detections file",
        description="Runs CORA (a checkpoint, a preset with --random-init, or an exported .onnx / .engine) over a "
                    "dataset's images and scores the detections (pycocotools / lvis-api), or scores an existing "
                    "COCO results file (--detections). Writes detections.json and metrics.json. --protocol "
                    "official (the default on coco-ovd) follows the official evaluation: 15-token prompts "
                    "(text_context_length=15), every (box, class) pair above the score threshold into NMS "
                    "(inference.pre_nms_topk=0) and novel prior 8 on coco-ovd; --protocol cora uses the config "
                    "(77 tokens, top 3000 pairs) and prior 1.",
    )
    p.add_argument("--split", required=True, metavar="{coco-ovd,lvis}",
                   help="benchmark: coco-ovd (AP50 novel / base / all) or lvis (AP, APr, APc, APf) (required)")
    p.add_argument("--protocol", default=None, choices=PROTOCOLS,
                   help="official: 15-token prompts, all (box, class) pairs into NMS, novel prior 8 on coco-ovd "
                   "(the official evaluation code); cora: the config's settings (77 tokens, top 3000 pairs), "
                   "prior 1; --set and --novel-prior override either (default: official for coco-ovd, else cora)")
    p.add_argument("--detections", default=None, help="score this COCO results json instead of running a model "
                   "(default: run the model)")
    p.add_argument("--gt", default=None, help="ground-truth json (default: looked up in --data, "
                   "e.g. annotations/instances_val2017.json, annotations/lvis_v1_val.json)")
    p.add_argument("--data", default=None, help="dataset folder holding the ground truth and the images (default: none)")
    p.add_argument("--images", default=None, help="image root that file_name is relative to (default: --data/val2017, "
                   "--data or --data/images); LVIS entries without file_name use their coco_url (<folder>/<file>)")
    p.add_argument("--novel", default=None, help="coco-ovd novel classes: comma-separated names, or a split json "
                   '{"base": [...], "novel": [...]} (default: the ground truth\'s info.ovd_split, '
                   "else --data/split.json, else the COCO OVD 17 novel / 48 base classes)")
    common.add_model_arguments(p, checkpoint_help="a cora checkpoint folder (model.safetensors + config.json) or an "
                               "exported .onnx / .engine, or a served model grpc://HOST:PORT / http://HOST:PORT (`cora serve`) "
                               "(default: none)")
    p.add_argument("--novel-prior", type=common.NON_NEGATIVE, default=None,
                   help="class_prior of the novel (LVIS: rare) classes "
                   "in pre-matching (default: 8 with --protocol official on coco-ovd, else 1)")
    p.add_argument("--batch-size", type=common.POSITIVE_INT, default=1, help="images per forward pass (default: 1)")
    p.add_argument("--limit", type=common.POSITIVE_INT, default=None,
                   help="evaluate the first N images only (default: all)")
    common.add_device_argument(p)
    p.add_argument("--out", default="eval", help="output folder (default: ./eval)")
    p.add_argument("--per-class", action="store_true", help="also print per-class AP (default: off)")
    p.add_argument("--verbose", action="store_true", help="show pycocotools / lvis-api output (default: off)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cora.config import unknown_name_message
    from cora.engine import evaluate as ev

    with common.user_errors():
        if args.split not in ev.SPLITS:
            raise UserError(unknown_name_message("split", args.split, ev.SPLITS))
        if args.novel is not None and args.split == "lvis":
            raise UserError("--novel is for coco-ovd: LVIS' novel classes are its rare ones (frequency 'r')")
        if args.detections is not None:
            model_flags = [f for f, v in (("--checkpoint", args.checkpoint), ("--random-init", args.random_init),
                                          ("--images", args.images), ("--protocol", args.protocol),
                                          ("--novel-prior", args.novel_prior is not None)) if v]
            if model_flags:
                raise UserError(f"--detections scores an existing file: drop {', '.join(model_flags)}")
        elif args.checkpoint is None and not args.random_init:
            raise UserError("no CORA weights: pass --checkpoint DIR, --random-init (smoke runs), "
                            "or --detections FILE to score existing detections")
        common.check_output_dir(args.out, "--out")
        device = common.resolve_device(args.device) if args.detections is None else None
        gt_path = args.gt or _find(args.data, DEFAULT_GT[args.split], "ground truth", "--gt")
        written = {Path(args.out, name).resolve() for name in ("detections.json", "metrics.json")}
        clash = [str(p) for p in (gt_path, args.detections) if p is not None and Path(p).resolve() in written]
        if clash:
            raise UserError(f"--out {args.out} would overwrite the input {clash[0]}; choose another --out")
        gt = ev.load_ground_truth(gt_path, args.split)
        novel, base = ev.parse_novel(args.novel)
        split_json = common.split_file(None, common.data_dir(args)) if novel is None and args.split == "coco-ovd" \
            and "ovd_split" not in (gt.get("info") or {}) else None
        if split_json:
            novel, base = ev.parse_novel(split_json)
            print(f"novel classes from {split_json}: {', '.join(map(str, novel))}")
        if args.detections is not None:
            detections = ev.check_coco_results(ev.load_json(args.detections, "detections file"), args.detections, gt)
            result = ev.evaluate(args.split, detections, gt, novel, None, args.verbose, base)
            info = {"detections": str(args.detections)}
        else:
            result, info = _run_model(args, gt, novel, base, device)
        metrics_path = Path(args.out) / "metrics.json"
        ev.save_json(metrics_path, {**result, "gt": str(gt_path), **info})
    print(ev.format_table(result, per_class=args.per_class))
    print(f"wrote {metrics_path}")
    return 0


def protocol_settings(protocol: str, split: str, novel_prior: float | None) -> tuple[list[str], float]:
    """(config overrides, novel prior) of an evaluation protocol; `novel_prior` (the user's) wins."""
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    overrides = list(OFFICIAL_OVERRIDES) if protocol == "official" else []
    default_prior = OFFICIAL_NOVEL_PRIOR[split] if protocol == "official" else 1.0
    return overrides, default_prior if novel_prior is None else float(novel_prior)


def protocol_line(protocol: str, model, novel_prior: float) -> str:
    """One line naming the protocol and the three settings the model actually runs with."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:  # an exported model: its text encoder and TopK were fixed when it was exported
        settings = "prompt length and pre-NMS top-k as exported (re-export to change them)"
    else:
        topk = cfg.inference.pre_nms_topk
        settings = (f"prompts cut at {cfg.text_context_length} tokens, "
                    + ("every (box, class) pair above the score threshold into NMS" if topk == 0
                       else f"the best {topk} (box, class) pairs per image into NMS"))
    source = " (the official evaluation code)" if protocol == "official" else ""
    return f"protocol {protocol}{source}: {settings}, novel prior x{novel_prior:g}"


def _find(root: str | None, candidates, what: str, flag: str) -> Path:
    if root is None:
        raise UserError(f"no {what}: pass {flag} or --data DIR")
    for rel in candidates:
        if (Path(root) / rel).exists():
            return Path(root) / rel
    raise UserError(f"no {what} in {root} (looked for {', '.join(candidates)}): pass {flag}")


def _image_root(data: str | None, first: dict) -> Path:
    from cora.data.coco import image_file

    if data is None:
        raise UserError("no images: pass --images DIR or --data DIR")
    for rel in DEFAULT_IMAGES:
        if image_file(Path(data) / rel, first).is_file():
            return Path(data) / rel
    raise UserError(f"image {image_file(Path(data), first).name} not found under {data} "
                    f"(looked in {', '.join(DEFAULT_IMAGES)}): pass --images DIR")


def _run_model(args, gt: dict, novel, base, device: str) -> tuple[dict, dict]:
    """Runs the detector over the ground truth's images and scores it -> (result, info); writes detections.json."""
    from cora.config import config_to_dict
    from cora.engine import evaluate as ev
    from cora.engine.inference import evaluate_model
    from cora.runtime import is_exported, load_detector

    if not gt["images"]:
        raise UserError("the ground truth has no images")
    images_dir = Path(args.images) if args.images else _image_root(args.data, min(gt["images"], key=lambda im: im["id"]))
    protocol = args.protocol or ("official" if args.split == "coco-ovd" else "cora")
    overrides, novel_prior = protocol_settings(protocol, args.split, args.novel_prior)
    exported = is_exported(args.checkpoint)
    # An export's settings are fixed: only the prior (a runtime input) follows the protocol there.
    source = common.model_source(args, overrides=[] if exported else overrides)
    model = load_detector(**source, device=device)
    print(protocol_line(protocol, model, novel_prior))
    cfg = getattr(model, "cfg", None)
    if cfg is not None and cfg.inference.max_detections < ev.MAX_DETS[args.split]:
        print(f"note: the model keeps {cfg.inference.max_detections} detections per image; {args.split} scores up to "
              f"{ev.MAX_DETS[args.split]} (--set inference.max_detections={ev.MAX_DETS[args.split]})")
    result, detections = evaluate_model(model, args.split, gt, images_dir, novel, base, args.batch_size,
                                        novel_prior, args.limit, verbose=args.verbose)
    dets_path = Path(args.out) / "detections.json"
    ev.save_json(dets_path, detections)
    print(f"wrote {dets_path} ({len(detections)} detections)")
    info = {"detections": str(dets_path), "checkpoint": args.checkpoint, "random_init": args.random_init,
            "images": str(images_dir), "protocol": protocol, "novel_prior": novel_prior,
            "config": config_to_dict(cfg) if cfg is not None else None}
    return result, info
