"""`cora convert`: import the official CORA release (github.com/tgxs002/CORA) into a cora checkpoint.

    cora convert --localizer official_localizer.pth --prompt official_region_prompt.pth --preset rn50_coco \\
                 --out ckpt/
    cora detect photo.jpg --vocab cat,dog --checkpoint ckpt/          # then any command takes --checkpoint ckpt/
"""

from __future__ import annotations

import argparse

from cora.cli import common


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert", help="import the official CORA release into a cora checkpoint",
        description="Converts the official localizer checkpoint + region-prompt file (github.com/tgxs002/CORA) "
                    "into a cora checkpoint folder (model.safetensors + config.json). Loads with "
                    "torch.load(weights_only=True): no arbitrary code is unpickled.",
    )
    p.add_argument("--localizer", required=True,
                   help="official localizer checkpoint (.pth with a 'model' / 'model_ema' entry)")
    p.add_argument("--prompt", required=True,
                   help="official region-prompt file ({'attnpool.positional_embedding': [S*S+1, C]})")
    p.add_argument("--preset", default=common.DEFAULT_PRESET,
                   help=f"the architecture of the release (default: {common.DEFAULT_PRESET})")
    p.add_argument("--no-ema", action="store_true", help="use the 'model' weights even if 'model_ema' is present "
                   "(default: the EMA weights, which the official evaluation uses)")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cora.config import get_preset
    from cora.engine.convert import convert_to_checkpoint

    with common.user_errors():
        common.check_output_dir(args.out, "--out")
        unused = convert_to_checkpoint(args.localizer, args.prompt, get_preset(args.preset), args.out,
                                       not args.no_ema)
    if unused:
        print(f"not used ({len(unused)}): {', '.join(unused[:20])}" + (" ..." if len(unused) > 20 else ""))
    print(f"wrote {args.out}")
    return 0
