"""One class-dropout training step of the localizer: CORA.forward_train against two CORA.predict_raw calls.

    python benchmarks/train_step.py                                  # RN50 (random weights), CPU, 300 queries
    python benchmarks/train_step.py --device cuda --queries 1000 --image-size 800 1344 --batch 4

Class dropout trains each image of the batch against two complementary vocabulary groups. The baseline is what
training did before `forward_train`: `CORA.predict_raw` (the detection graph before scoring) once per group
(CLIP, encoder and decoder twice, and the region classifier on every decoded box, whose logits training never
uses). `forward_train` runs CLIP and the
encoder once, decodes both groups in one batched pass and skips the region classifier. Timed: forward + backward
of the localizer's outputs (boxes and objectness summed, as a stand-in for the loss), trainable parameters as in
stage 2. Prints a table and writes JSON (median / p90 of --repeat runs after one warm-up): --json, else
train_step.json in --out-dir (default: the checkout's benchmarks/results/ for `python benchmarks/train_step.py`,
else ./benchmarks/results if it exists, else the current directory).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from cora.bench.common import default_out_dir, format_table, machine_info, measure, write_json
from cora.config import apply_overrides, get_preset
from cora.engine.train_localizer import LOCALIZER_PREFIXES
from cora.engine.trainer import freeze_except
from cora.modeling.detector import CORA


def main(argv=None, out_dir: str | None = None) -> int:
    """The command line; `out_dir`: the default of --out-dir (benchmarks/train_step.py passes its checkout's
    results folder; None: `cora.bench.common.default_out_dir()`)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="rn50_coco", help="model preset, random weights (default: rn50_coco)")
    p.add_argument("--queries", type=int, default=300, help="localizer queries Q (paper: 1000; default: 300)")
    p.add_argument("--image-size", type=int, nargs=2, default=(256, 384), metavar=("H", "W"),
                   help="padded input size in pixels (default: 256 384)")
    p.add_argument("--batch", type=int, default=2, help="images per step (default: 2)")
    p.add_argument("--classes", type=int, default=48, help="vocabulary size, split in two groups (default: 48)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per method (default: 3)")
    p.add_argument("--out-dir", default=None,
                   help="folder of the default --json (default: the checkout's benchmarks/results for "
                        "benchmarks/train_step.py; else ./benchmarks/results if it exists, else .)")
    p.add_argument("--json", default=None, help="output JSON (default: <out-dir>/train_step.json)")
    args = p.parse_args(argv)
    args.out_dir = args.out_dir or out_dir or default_out_dir()
    args.json = args.json or os.path.join(args.out_dir, "train_step.json")

    torch.manual_seed(0)
    cfg = apply_overrides(get_preset(args.preset), [f"localizer.num_queries={args.queries}"])
    model = CORA.from_config(cfg, random_init=True).to(args.device)
    freeze_except(model, LOCALIZER_PREFIXES)
    model.train()
    model.backbone.eval()
    h, w = args.image_size
    images = torch.rand(args.batch, 3, h, w, device=args.device)
    sizes = torch.tensor([[h, w]] * args.batch, device=args.device)
    text = torch.nn.functional.normalize(torch.randn(args.classes, model.backbone.embed_dim, device=args.device), dim=-1)
    groups = [text[: args.classes // 2], text[args.classes // 2:]]

    def two_forwards():
        outs = [model.predict_raw(images, sizes, g) for g in groups]
        sum(o["boxes"].sum() + o["objectness"].sum() for o in outs).backward()
        model.zero_grad(set_to_none=True)

    def forward_train():
        out = model.forward_train(images, sizes, groups)
        (out["boxes"].sum() + out["objectness"].sum()).backward()
        model.zero_grad(set_to_none=True)

    device = "cuda" if args.device.startswith("cuda") else "cpu"
    results = {"two CORA.predict_raw calls (baseline)": measure(two_forwards, device, args.repeat),
               "CORA.forward_train": measure(forward_train, device, args.repeat)}
    base = results["two CORA.predict_raw calls (baseline)"]["median_ms"]
    rows = [[name, f"{r['median_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{base / r['median_ms']:.2f}x"]
            for name, r in results.items()]
    print(f"class-dropout training step, {args.preset} (random weights), Q={args.queries}, {args.batch} x 3 x {h} x {w}, "
          f"K={args.classes} in 2 groups, {args.device}; ms per step, median / p90 of {args.repeat} after 1 warm-up")
    print(format_table(["method", "median ms", "p90 ms", "speedup"], rows))
    write_json(args.json, {"benchmark": "train_step", "machine": machine_info(device), "args": vars(args),
                           "results": results})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
