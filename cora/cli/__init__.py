"""The `cora` command line: `cora <command> --help` (or `python -m cora ...`).

One module per command, each an `add_parser(sub)` / `run(args)` pair with its heavy imports inside `run`;
cora.cli.common holds the flags several commands share (model source, device, vocabulary).

Exit codes: 0 success; 1 failure, reported as one line `cora <command>: <message>` on stderr (a
cora.errors.UserError; `main` is the only place that prints one); 2 usage error (argparse). Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from cora.errors import UserError, worker_message
from cora.openmp import short_spin


def build_parser() -> argparse.ArgumentParser:
    # The command modules import only argparse and cora.cli.common at module level: building the parser
    # stays fast (no torch), and a benchmark can set its OpenMP policy before torch loads.
    from cora.cli import bench, check, convert, data, detect, export, relabel, serve, train
    from cora.cli import eval as eval_command

    parser = argparse.ArgumentParser(prog="cora", description="CORA open-vocabulary detection toolkit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for command in (detect, eval_command, train, relabel, export, serve, check, data, convert, bench):
        command.add_parser(sub)  # train adds train-prompt and train
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one `cora` command; returns its exit code (argparse exits 2 itself on a usage error)."""
    short_spin("cora")  # before any command imports torch
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None):  # flag values: defaults < --config file < command line
            from cora.cli.common import load_config_file, user_errors

            with user_errors():
                args.config_parser.set_defaults(**load_config_file(args.config, args.config_parser))
            args = parser.parse_args(argv)
        return args.run(args)
    except UserError as e:
        print(f"cora {args.command}: {worker_message(str(e))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
