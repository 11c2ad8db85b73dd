"""`cora relabel`: CLIP-aligned labeling of the training ground truth (run before `cora train`).

    cora relabel --data shapes --preset tiny --random-init --prompt runs/prompt/prompt.pth \\
                 --out shapes/instances_train_relabel.json
    cora relabel --ann-file annotations/instances_train2017.json --images train2017 --split coco \\
                 --checkpoint ckpt/ --out annotations/instances_train2017_relabel.json
    cora train --ann-file shapes/instances_train_relabel.json --images shapes ...   # then train on it

The work is cora.engine.relabel (what is classified, what is skipped, the output's format); the run's
inputs are recorded in the output's info["cora_relabel"] beside relabel_annotations' counts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cora.cli import common
from cora.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "relabel", help="CLIP-aligned labeling: relabel training boxes with the region classifier",
        description="Classifies every training ground-truth box with the region classifier (CLIP + region "
                    "prompt) over the training vocabulary and writes a COCO json whose annotations carry the "
                    "argmax category (original_category_id kept where it changed). Run before `cora train`.",
    )
    p.add_argument("--data", default=None, help="dataset folder with instances_train.json (and split.json), e.g. "
                   "from `cora data make-synthetic`; or use --ann-file and --images (default: none)")
    p.add_argument("--ann-file", default=None, help="instances json to relabel (default: --data/instances_train.json)")
    p.add_argument("--images", default=None, help="image root that file_name is relative to (default: --data); LVIS "
                   "entries without file_name use their coco_url (<folder>/<file>)")
    p.add_argument("--split", default=None, help="base/novel split: coco, lvis or a split json (default: "
                   "--data/split.json if present, else coco)")
    p.add_argument("--vocabulary", default="base", help="candidate labels: base (default, per --split), all, "
                   "novel, base+novel, or class names (comma-separated, or a .txt / COCO-LVIS .json file); "
                   "annotations of other classes are copied unchanged")
    p.add_argument("--out", required=True, help="output json (written atomically; must differ from the input)")
    common.add_model_arguments(p, checkpoint_flags=("--checkpoint", "--init"),
                               checkpoint_help="a cora checkpoint folder (model.safetensors + config.json, e.g. a "
                               "converted release); its config replaces --preset (default: none)")
    p.add_argument("--prompt", default=None, help="region prompt file from `cora train-prompt` (prompt.pth) or an "
                   "official prompt file; replaces the checkpoint's prompt (default: the model's own)")
    p.add_argument("--min-score", type=common.PROBABILITY, default=None,
                   help="relabel only when the argmax class has at least "
                   "this softmax probability over the vocabulary, else keep the category (default: always relabel)")
    p.add_argument("--batch-size", type=common.POSITIVE_INT, default=8, help="images per forward pass (default: 8)")
    common.add_device_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cora.checkpoint import load_model
    from cora.engine.convert import load_prompt_file
    from cora.engine.relabel import relabel_annotations, relabel_dataset
    from cora.fileio import write_json

    with common.user_errors(KeyError):
        if args.ann_file is None and args.data is None:
            raise UserError("no annotations: pass --data DIR or --ann-file FILE")
        if args.images is None and args.data is None:
            raise UserError("no images: pass --images DIR (the root file_name is relative to) or --data DIR")
        data = common.data_dir(args)
        ann_file = Path(args.ann_file) if args.ann_file else data / "instances_train.json"
        common.check_output_file(args.out, "--out")
        if Path(args.out).resolve() == ann_file.resolve():
            raise UserError(f"--out {args.out} would overwrite the input annotations")
        device = common.resolve_device(args.device)
        dataset = relabel_dataset(ann_file, args.images or data, args.vocabulary, common.split_file(args.split, data))
        source = common.model_source(args)
        model = load_model(**source, device=device)
        if args.prompt:
            model.region_classifier.load_prompt(load_prompt_file(args.prompt))
        result, stats = relabel_annotations(model, dataset, batch_size=args.batch_size, min_score=args.min_score,
                                            progress=not args.no_progress)
        stats.update(ann_file=str(ann_file), checkpoint=args.checkpoint, prompt=args.prompt,
                     preset=source["preset"], random_init=args.random_init, clip_weights=args.clip_weights,
                     seed=args.seed)
        write_json(args.out, result)  # `stats` is result["info"]["cora_relabel"]: the updates are in it
    share = 100.0 * stats["changed"] / max(stats["classified"], 1)
    low = f", {stats['below_min_score']} kept below --min-score" if args.min_score is not None else ""
    print(f"{stats['changed']} of {stats['classified']} classified boxes changed category ({share:.1f}%), "
          f"{stats['skipped']} skipped{low}; wrote {args.out}")
    return 0
