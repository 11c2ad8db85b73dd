"""`cora train` (stage 2: localizer) and `cora train-prompt` (stage 1: region prompt).

    cora train-prompt --data shapes --preset tiny --random-init --out runs/prompt --epochs 5
    cora train --data shapes --preset tiny --random-init --prompt runs/prompt/prompt.pth --out runs/loc
    cora train ... --resume          # continue from runs/loc/last_checkpoint

The lead wires them into cora/cli.py: `add_train_parser(sub)` and `add_train_prompt_parser(sub)`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _common(p: argparse.ArgumentParser, epochs: int, lr_drop: int | None, ema: float, dropout: float, clip: float) -> None:
    p.add_argument("--data", required=True, help="dataset folder with instances_train.json and split.json "
                   "(e.g. from `cora data make-synthetic`), or use --ann-file / --images")
    p.add_argument("--ann-file", default=None, help="training instances json (default: --data/instances_train.json)")
    p.add_argument("--images", default=None, help="image root that file_name is relative to (default: --data)")
    p.add_argument("--split", default=None, help="base/novel split: coco, lvis or a split json (default: --data/split.json "
                   "if present, else coco)")
    p.add_argument("--preset", default="rn50_coco", help="model preset (default: rn50_coco)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    p.add_argument("--clip-weights", default=None, help="a local open_clip checkpoint file for the CLIP backbone")
    p.add_argument("--random-init", action="store_true", help="random CLIP weights (smoke runs)")
    p.add_argument("--out", required=True, help="output folder (log.jsonl, loss.png, checkpoints/, model/)")
    p.add_argument("--epochs", type=int, default=epochs, help=f"epochs (default: {epochs})")
    p.add_argument("--batch-size", type=int, default=32, help="images per iteration (default: 32)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default: 1e-4)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default: 1e-4)")
    p.add_argument("--lr-drop-epoch", type=int, default=lr_drop, help=f"lr x 0.1 from this epoch (default: {lr_drop})")
    p.add_argument("--clip-max-norm", type=float, default=clip, help=f"gradient clipping, 0 = off (default: {clip})")
    p.add_argument("--ema-decay", type=float, default=ema, help=f"EMA decay of the trained weights, 0 = off (default: {ema})")
    p.add_argument("--class-dropout", type=float, default=dropout, help=f"class dropout probability (default: {dropout})")
    p.add_argument("--seed", type=int, default=0, help="seed of data order, transforms and class dropout (default: 0)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (default: 0)")
    p.add_argument("--save-every", type=int, default=0, help="steps between checkpoints, 0 = end of epoch (default: 0)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (default: none)")
    p.add_argument("--resume", action="store_true", help="continue from --out/last_checkpoint")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="stage 2: train the localizer (CLIP and the region prompt frozen)",
                       description="Trains CORA's localizer with per-class Hungarian matching, EMA and class dropout.")
    _common(p, epochs=35, lr_drop=None, ema=0.99996, dropout=0.2, clip=0.1)
    p.add_argument("--prompt", default=None, help="region prompt file from `cora train-prompt` (prompt.pth) or an "
                   "official prompt file")
    p.add_argument("--init", default=None, help="a cora checkpoint folder to start from (e.g. a converted release)")
    p.set_defaults(run=run_train, stage="localizer")


def add_train_prompt_parser(sub) -> None:
    p = sub.add_parser("train-prompt", help="stage 1: train the region prompt (everything else frozen)",
                       description="Cross-entropy over the training vocabulary on ground-truth boxes; exports prompt.pth.")
    _common(p, epochs=5, lr_drop=4, ema=0.0, dropout=0.0, clip=0.0)
    p.set_defaults(run=run_train, stage="prompt", prompt=None, init=None)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from cora.config import apply_overrides, get_preset
    from cora.data.coco import build_dataset
    from cora.data.transforms import scaled_train_transforms
    from cora.engine.checkpoint import load_checkpoint, load_into, load_official_file
    from cora.engine.convert import PROMPT_KEY
    from cora.engine.train_localizer import train_localizer
    from cora.engine.trainer import TrainConfig
    from cora.engine.train_prompt import train_prompt
    from cora.modeling.detector import CORA

    try:
        cfg = apply_overrides(get_preset(args.preset), args.overrides)
        data = Path(args.data)
        split = args.split or (str(data / "split.json") if (data / "split.json").is_file() else None)
        ds = build_dataset(args.ann_file or data / "instances_train.json", args.images or data, train=True, split=split,
                           transforms=scaled_train_transforms(cfg.inference.min_size, cfg.inference.max_size))
        model = CORA.from_config(cfg, clip_weights=args.clip_weights, random_init=args.random_init)
        if args.init:
            state, _ = load_checkpoint(args.init)
            load_into(model, state)
        if args.prompt:
            prompt = load_official_file(args.prompt)
            model.region_classifier.load_prompt(prompt[PROMPT_KEY] if isinstance(prompt, dict) else prompt)
        model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                           clip_max_norm=args.clip_max_norm, ema_decay=args.ema_decay, class_dropout=args.class_dropout,
                           lr_drop_epoch=args.lr_drop_epoch, seed=args.seed, num_workers=args.workers,
                           save_every=args.save_every, max_steps=args.max_steps)
        fn = train_prompt if args.stage == "prompt" else train_localizer
        log = fn(model, ds, args.out, tcfg, resume=args.resume, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, KeyError, OSError) as e:
        print(f"cora {args.command}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    last = log[-1]["loss"] if log else float("nan")
    print(f"{len(log)} steps, last loss {last:.4f}; wrote {args.out}")
    return 0


if __name__ == "__main__":  # python -m cora.engine.train_cli train ... (until the lead wires cora/cli.py)
    parser = argparse.ArgumentParser(prog="cora")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub), add_train_prompt_parser(sub)
    a = parser.parse_args()
    sys.exit(a.run(a))
