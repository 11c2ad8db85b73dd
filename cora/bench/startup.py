"""The waits a person feels: `cora --help` and `cora <command> --help` start-up (each a fresh process), and
the text embeddings of a 1203-name vocabulary (LVIS's size) on a preset with random weights, cold (empty
text cache: every name encoded) and warm (a fresh embedder on the filled cache: the weights hashed and the
names read back, as a second `cora` run does).

    python benchmarks/startup.py                      # tiny preset, 5 start-ups per command, cold once, warm 5x
    python benchmarks/startup.py --skip-text          # start-up only

The names are synthetic ("object 17 of a kind"): CLIP's text tower always runs 77 positions, so the cost does
not depend on which names they are. Goals (issue #15): `cora --help` < 1 s, `cora <command> --help` < 2 s,
1203 names <= 60 s cold and <= 2 s warm.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

# Before torch loads (cora.openmp has the measurements); the JSON records the setting.
from cora.openmp import short_spin

OPENMP_SETTING = short_spin("cora.bench.startup")

from cora.bench.common import default_out_dir, format_table, machine_info, percentile, write_json  # noqa: E402

COMMANDS = ("", "detect", "eval", "train", "train-prompt", "relabel", "export", "serve", "check", "data", "convert",
            "bench")


def cli_command() -> list[str]:
    """The installed `cora` script beside this Python, else `python -m cora`."""
    script = os.path.join(os.path.dirname(sys.executable), "cora")
    return [script] if os.path.isfile(script) else [sys.executable, "-m", "cora"]


def time_help(command: str, repeat: int) -> dict:
    """Wall time of `cora [command] --help` in a fresh process, `repeat` times: median / p90 in s."""
    argv = cli_command() + ([command] if command else []) + ["--help"]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    times.sort()
    return {"command": " ".join(["cora", command, "--help"]).replace("  ", " "), "median_s": statistics.median(times),
            "p90_s": percentile(times, 0.9), "runs": repeat}


def time_text(preset: str, num_names: int, warm_repeat: int) -> dict:
    """Seconds to embed `num_names` names: cold (empty cache) once, then warm `warm_repeat` times."""
    import torch

    from cora.checkpoint import load_model
    from cora.modeling.text import TextEmbedder
    from cora.text_cache import TextCache

    names = [f"object {i} of a kind" for i in range(num_names)]
    model = load_model(preset=preset, random_init=True)
    base = model.text_embedder
    with tempfile.TemporaryDirectory() as folder:
        cache = TextCache(os.path.join(folder, "text.sqlite3"))

        def fresh():  # what a new `cora` process builds: nothing remembered but the cache file
            return TextEmbedder(base.clip_model, base.tokenizer, base.model_key, cache=cache,
                                context_length=base.context_length)

        start = time.perf_counter()
        cold = fresh()(names)
        cold_s = time.perf_counter() - start
        warm = []
        for _ in range(warm_repeat):
            start = time.perf_counter()
            again = fresh()(names)
            warm.append(time.perf_counter() - start)
        if not torch.equal(again, cold):
            raise AssertionError("warm embeddings differ from cold ones")
        warm.sort()
        return {"preset": preset, "names": num_names, "prompts": num_names * len(base.templates),
                "cold_s": cold_s, "warm_median_s": statistics.median(warm), "warm_p90_s": percentile(warm, 0.9),
                "warm_runs": warm_repeat, "cache_mb": cache.total_bytes() / 2**20}


def main(argv=None, out_dir: str | None = None) -> int:
    """The command line; `out_dir`: the default of --out-dir (benchmarks/startup.py passes its checkout's
    results folder; None: `cora.bench.common.default_out_dir()`)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5, help="start-ups per command and warm encodings (default: 5)")
    p.add_argument("--preset", default="tiny", help="model preset for the text encoding, random weights (default: tiny)")
    p.add_argument("--names", type=int, default=1203, help="vocabulary size to encode (default: 1203, LVIS)")
    p.add_argument("--skip-text", action="store_true", help="time the CLI start-up only")
    p.add_argument("--out-dir", default=None,
                   help="folder of the default --json (default: the checkout's benchmarks/results for "
                        "benchmarks/startup.py; else ./benchmarks/results if it exists, else .)")
    p.add_argument("--json", default=None, help="output JSON (default: <out-dir>/startup.json)")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.names < 1:
        p.error("--repeat and --names must be >= 1")
    args.json = args.json or os.path.join(args.out_dir or out_dir or default_out_dir(), "startup.json")

    startup = [time_help(c, args.repeat) for c in COMMANDS]
    print(format_table(["command", "median s", "p90 s"],
                       [[r["command"], f"{r['median_s']:.3f}", f"{r['p90_s']:.3f}"] for r in startup]))
    # The load average says how much of the machine other work took (shared development machines).
    result = {"machine": {**machine_info("cpu"), "load_average_1_5_15": os.getloadavg(), "openmp": OPENMP_SETTING},
              "cli": cli_command()[0], "startup": startup}
    if not args.skip_text:
        text = time_text(args.preset, args.names, args.repeat)
        print()
        print(format_table(["preset", "names", "prompts", "cold s", "warm median s", "warm p90 s"],
                           [[text["preset"], str(text["names"]), str(text["prompts"]), f"{text['cold_s']:.1f}",
                             f"{text['warm_median_s']:.3f}", f"{text['warm_p90_s']:.3f}"]]))
        result["text"] = text
    result["load_average_after"] = os.getloadavg()
    print(f"OpenMP: {OPENMP_SETTING}; load average before / after: {result['machine']['load_average_1_5_15'][0]:.1f} / "
          f"{result['load_average_after'][0]:.1f} (cores: {os.cpu_count()})")
    write_json(args.json, result)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
