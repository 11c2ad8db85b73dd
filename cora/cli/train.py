"""`cora train` (stage 2: localizer) and `cora train-prompt` (stage 1: region prompt).

    cora train-prompt --data shapes --preset tiny --random-init --out runs/prompt --epochs 5
    cora train --data shapes --preset tiny --random-init --prompt runs/prompt/prompt.pth --out runs/loc
    cora train ... --resume          # continue from runs/loc/last_checkpoint
    cora train --config configs/coco_localizer.yaml --data datasets/coco --prompt ... --out runs/loc
    torchrun --nproc_per_node 8 -m cora train --config configs/coco_localizer.yaml ...   # 8 processes

Flag values come from (later wins): the defaults, --config FILE (cora.cli.common.load_config_file, applied by
cora.cli.main), the command line. The work is cora.engine (train_prompt, train_localizer, trainer).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cora.cli import common
from cora.errors import UserError


def _common(p: argparse.ArgumentParser, epochs: int, lr_drop: int | None, ema: float, dropout: float, clip: float) -> None:
    p.add_argument("--config", default=None, help="a YAML or JSON file of flag values (keys: the flag names, e.g. "
                   "batch_size: 32, set: [inference.max_detections=300]); flags given on the command line win; "
                   "configs/*.yaml hold the paper's settings")
    p.add_argument("--data", default=None, help="dataset folder with instances_train.json and split.json "
                   "(e.g. from `cora data make-synthetic`), or use --ann-file / --images (required)")
    p.add_argument("--ann-file", default=None, help="training instances json (default: --data/instances_train.json)")
    p.add_argument("--images", default=None, help="image root that file_name is relative to (default: --data)")
    p.add_argument("--split", default=None, help="base/novel split: coco, lvis or a split json (default: --data/split.json "
                   "if present, else coco); training uses the base classes only")
    p.add_argument("--lvis", action="store_true", help="the data is LVIS (federated annotations, rare = novel)")
    common.add_model_arguments(p, checkpoint_flags=("--init",), seed=False,
                               checkpoint_help="a cora checkpoint folder to start from, e.g. a converted release; "
                               "its config replaces --preset (default: none, the learned weights start fresh)",
                               random_init_help="random CLIP weights too (drawn after --seed): smoke runs without "
                               "weights (default: off)")
    p.add_argument("--out", default=None, help="output folder (log.jsonl, loss.png, checkpoints/, best/, model/) (required)")
    p.add_argument("--epochs", type=common.POSITIVE_INT, default=epochs, help=f"epochs (default: {epochs})")
    p.add_argument("--batch-size", type=common.POSITIVE_INT, default=32,
                   help="images per iteration, over all processes (default: 32)")
    p.add_argument("--lr", type=common.POSITIVE, default=1e-4, help="AdamW learning rate (default: 1e-4)")
    p.add_argument("--weight-decay", type=common.NON_NEGATIVE, default=1e-4, help="AdamW weight decay (default: 1e-4)")
    p.add_argument("--lr-drop-epoch", type=common.POSITIVE_INT, default=lr_drop,
                   help=f"lr x 0.1 from this epoch (default: {lr_drop})")
    p.add_argument("--clip-max-norm", type=common.NON_NEGATIVE, default=clip,
                   help=f"gradient clipping, 0 = off (default: {clip})")
    p.add_argument("--ema-decay", type=common.FRACTION, default=ema,
                   help=f"EMA decay of the trained weights, 0 = off (default: {ema})")
    p.add_argument("--class-dropout", type=common.FRACTION, default=dropout,
                   help=f"class dropout probability (default: {dropout})")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off",
                   help="autocast the forward pass: bf16, or fp16 with dynamic loss scaling (default: off)")
    p.add_argument("--sampled-classes", type=common.NON_NEGATIVE_INT, default=0,
                   help="stage 1: classes per iteration, those in the batch "
                   "plus uniformly sampled others (LVIS: 100; default: 0 = the whole vocabulary)")
    p.add_argument("--repeat-factor-threshold", type=common.PROBABILITY, default=0.0,
                   help="LVIS repeat-factor sampling threshold "
                   "(LVIS: 0.001; default: 0 = off)")
    p.add_argument("--relaxed-match-threshold", type=common.PROBABILITY, default=0.0,
                   help="stage 2: also match ground truths of "
                   "classes whose text cosine with the query's class exceeds this (LVIS: 0.7; default: 0 = off)")
    p.add_argument("--seed", type=common.SEED, default=0,
                   help="seed of the fresh weights, data order, transforms and class "
                   "dropout (default: 0)")
    p.add_argument("--workers", type=common.NON_NEGATIVE_INT, default=0,
                   help="DataLoader workers per process (default: 0)")
    p.add_argument("--save-every", type=common.NON_NEGATIVE_INT, default=0,
                   help="steps between checkpoints, 0 = end of epoch (default: 0)")
    p.add_argument("--max-steps", type=common.POSITIVE_INT, default=None,
                   help="stop after this many steps (default: none)")
    p.add_argument("--resume", action="store_true", help="continue from --out/last_checkpoint")
    p.add_argument("--eval-every", type=common.NON_NEGATIVE_INT, default=0,
                   help="evaluate the EMA weights every N epochs on the "
                   "validation data and keep the best checkpoint in --out/best (default: 0 = never)")
    p.add_argument("--val-gt", default=None, help="validation ground truth (default: --data/instances_val.json)")
    p.add_argument("--val-images", default=None, help="validation image root (default: --images, else --data)")
    p.add_argument("--eval-metric", default=None, help="metric that picks best/ (default: AP50_novel; with --lvis: APr)")
    p.add_argument("--eval-batch-size", type=common.POSITIVE_INT, default=8,
                   help="images per forward pass in evaluation (default: 8)")
    common.add_device_argument(p, "; under torchrun each process takes cuda:LOCAL_RANK")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(config_parser=p)


def add_parser(sub) -> None:
    """Adds both stages: `train-prompt` (stage 1) and `train` (stage 2)."""
    add_train_prompt_parser(sub)
    add_train_parser(sub)


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="stage 2: train the localizer (CLIP and the region prompt frozen)",
                       description="Trains CORA's localizer with per-class Hungarian matching, EMA and class dropout. "
                       "Several processes: torchrun --nproc_per_node N -m cora train ...")
    _common(p, epochs=35, lr_drop=None, ema=0.99996, dropout=0.2, clip=0.1)
    p.add_argument("--prompt", default=None, help="region prompt file from `cora train-prompt` (prompt.pth) or an "
                   "official prompt file (default: the --init checkpoint's, else CLIP's attention pool)")
    p.set_defaults(run=run, stage="localizer")


def add_train_prompt_parser(sub) -> None:
    p = sub.add_parser("train-prompt", help="stage 1: train the region prompt (everything else frozen)",
                       description="Cross-entropy over the training vocabulary on ground-truth boxes; exports prompt.pth.")
    _common(p, epochs=5, lr_drop=4, ema=0.0, dropout=0.0, clip=0.0)
    p.set_defaults(run=run, stage="prompt", prompt=None)


def run(args: argparse.Namespace) -> int:
    from cora.data.coco import build_dataset
    from cora.data.lvis import build_lvis_dataset
    from cora.data.transforms import scaled_train_transforms
    from cora.engine import distributed
    from cora.engine.convert import load_prompt_file
    from cora.engine.train_localizer import train_localizer
    from cora.engine.train_prompt import train_prompt
    from cora.engine.trainer import TrainConfig

    with common.user_errors(KeyError):
        if args.data is None and (args.ann_file is None or args.images is None) or args.out is None:
            raise UserError("--data (or --ann-file and --images) and --out are required (flags or --config keys)")
        common.check_output_dir(args.out, "--out")
        info = distributed.init_distributed(common.resolve_device(args.device))
        data = common.data_dir(args)
        split = common.split_file(args.split, data)
        model = training_model(args, info.device)
        if args.prompt:
            model.region_classifier.load_prompt(load_prompt_file(args.prompt))
        build = build_lvis_dataset if args.lvis else build_dataset
        sizes = model.cfg.inference
        ds = build(args.ann_file or data / "instances_train.json", args.images or data, train=True, split=split,
                   transforms=scaled_train_transforms(sizes.min_size, sizes.max_size))
        val_split = "lvis" if args.lvis else "coco-ovd"
        tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                           clip_max_norm=args.clip_max_norm, ema_decay=args.ema_decay, class_dropout=args.class_dropout,
                           lr_drop_epoch=args.lr_drop_epoch, amp=args.amp, seed=args.seed, num_workers=args.workers,
                           save_every=args.save_every, max_steps=args.max_steps, eval_every=args.eval_every,
                           eval_metric=args.eval_metric or ("APr" if args.lvis else "AP50_novel"),
                           sampled_classes=args.sampled_classes, repeat_factor_threshold=args.repeat_factor_threshold,
                           relaxed_match_threshold=args.relaxed_match_threshold)
        evaluator = _evaluator(args, data, split, val_split) if args.eval_every else None
        fn = train_prompt if args.stage == "prompt" else train_localizer
        log = fn(model, ds, args.out, tcfg, resume=args.resume, progress=not args.no_progress and info.is_main,
                 evaluator=evaluator)
    if info.is_main:
        last = log[-1]["loss"] if log else float("nan")
        print(f"{len(log)} steps, last loss {last:.4f}; wrote {args.out}")
    return 0


def training_model(args: argparse.Namespace, device):
    """The model to train, on `device`: the --init checkpoint (its config), else the preset with fresh CORA
    weights drawn after --seed and CLIP weights from --clip-weights or the config's tag (random with
    --random-init)."""
    from cora.checkpoint import load_model

    return load_model(**common.model_source(args), device=device, fresh=True)


def _evaluator(args, data: Path | None, split: str | None, val_split: str):
    """evaluator(model) -> metrics (process 0) / None, on the validation ground truth."""
    from cora.engine import evaluate as ev
    from cora.engine.inference import evaluate_model, image_files

    gt_path = args.val_gt or (data / "instances_val.json" if data else None)
    if gt_path is None:
        raise UserError("--eval-every needs --val-gt (or --data holding instances_val.json)")
    gt = ev.load_ground_truth(str(gt_path), val_split)
    novel, base = ev.parse_novel(split) if val_split == "coco-ovd" and split and split.endswith(".json") else (None, None)
    images = Path(args.val_images or args.images or data)
    image_files(gt["images"], images, "validation images", ": pass --val-images")  # now, not after an epoch

    def evaluator(model):
        result, _ = evaluate_model(model, val_split, gt, images, novel, base, args.eval_batch_size, progress=False)
        return result["metrics"] if result is not None else None

    return evaluator
