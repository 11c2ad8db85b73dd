"""`cora data`: the dataset command group: `cora data make-synthetic`, `cora data make-ovd-json`.

    cora data make-synthetic shapes --images 200 --seed 0 --size 128 128
    cora data make-ovd-json --instances instances_train2017.json --split train --out instances_train2017_base.json
    cora data make-ovd-json --instances instances_val2017.json --split val --out instances_val2017_ovd.json

The work is cora.data (synthetic, splits); each verb here is an add_parser / run pair, with heavy imports
inside run.
"""

from __future__ import annotations

import argparse

from cora.cli import common
from cora.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="datasets: synthetic shapes, COCO / LVIS OVD jsons",
                       description="Prepare datasets for training and evaluation.")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="data-command")
    add_make_synthetic_parser(data_sub)
    add_make_ovd_json_parser(data_sub)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    verbs = {"make-synthetic": run_make_synthetic, "make-ovd-json": run_make_ovd_json}
    return verbs[args.data_command](args)


def add_make_synthetic_parser(sub) -> None:
    p = sub.add_parser(
        "make-synthetic", help="draw a shapes dataset (COCO + LVIS jsons) for tests and demos",
        description="Writes OUT/images/*.png, OUT/instances_{train,val}.json (COCO), OUT/lvis_{train,val}.json "
                    "(LVIS) and OUT/split.json (base / novel class names). The same seed gives the same files.",
    )
    p.add_argument("out", help="output folder (created; existing files of the same names are replaced)")
    p.add_argument("--images", type=common.POSITIVE_INT, default=100,
                   help="number of images, train + val (default: 100)")
    p.add_argument("--seed", type=common.SEED, default=0, help="random seed (default: 0)")
    p.add_argument("--size", type=common.number(int, 32), nargs=2, default=(128, 128), metavar=("H", "W"),
                   help="image height and width in pixels, each >= 32 (default: 128 128)")
    p.add_argument("--val-fraction", type=common.FRACTION, default=0.2,
                   help="fraction of the images in the validation set (default: 0.2)")
    p.add_argument("--max-objects", type=common.POSITIVE_INT, default=6,
                   help="most shapes per image, besides a crowd (default: 6)")
    p.add_argument("--colour-classes", action="store_true",
                   help='name classes "<colour> <shape>" (48 classes) instead of by shape only (8 classes)')


def run_make_synthetic(args: argparse.Namespace) -> int:
    import json

    from cora.data.synthetic import write_synthetic

    with common.user_errors():
        common.check_output_dir(args.out, "out")
        written = write_synthetic(args.out, num_images=args.images, seed=args.seed, size=tuple(args.size),
                                  val_fraction=args.val_fraction, colour_classes=args.colour_classes,
                                  max_objects=args.max_objects)
    with open(written["split"], encoding="utf-8") as f:
        split = json.load(f)
    print(f"wrote {args.images} images to {args.out}: {', '.join(p.name for p in written.values())}; "
          f"base: {', '.join(split['base'])}; novel: {', '.join(split['novel'])}")
    return 0


def add_make_ovd_json_parser(sub) -> None:
    p = sub.add_parser(
        "make-ovd-json", help="write the base-only training json or the base + novel evaluation json",
        description="From a full instances json: --split train keeps the base categories and their annotations "
                    "and drops images without any; --split val keeps base + novel categories (COCO: 65) and "
                    "their annotations, and every image. Category ids are unchanged; the write is atomic.",
    )
    p.add_argument("--instances", required=True, help="input instances json, e.g. instances_train2017.json")
    p.add_argument("--split", required=True, choices=("train", "val"), help="train: base only; val: base + novel")
    p.add_argument("--out", required=True, help="output json path")
    p.add_argument("--classes", default="coco",
                   help='base / novel classes: "coco" (48 / 17), "lvis" (rare = novel) or a split file '
                        '{"base": [...], "novel": [...]} (default: coco)')


def run_make_ovd_json(args: argparse.Namespace) -> int:
    import json
    import os

    from cora.data.splits import load_categories, load_split, ovd_instances
    from cora.fileio import write_json

    if os.path.abspath(args.out) == os.path.abspath(args.instances):
        raise UserError(f"--out {args.out} would overwrite the input --instances; choose another path")
    common.check_output_file(args.out, "--out")
    try:
        with open(args.instances, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"{args.instances} is not an instances json (expected an object)")
        split = load_split(args.classes, load_categories(data, where=repr(args.instances)))
        out = ovd_instances(data, split, args.split)
        write_json(args.out, out)
    except json.JSONDecodeError as e:  # a ValueError without the file's name
        raise UserError(f"{args.instances}: {e}") from e
    except (ValueError, OSError) as e:
        raise UserError(common.first_line(e)) from e
    print(f"wrote {args.out}: {len(out['categories'])} categories, {len(out['images'])} images, "
          f"{len(out['annotations'])} annotations")
    return 0
