"""cora.bench.startup (`python benchmarks/startup.py`) times every command's start-up and a vocabulary's text
embeddings cold and warm."""

import json

from cora.bench.startup import COMMANDS, main
from cora.cli import build_parser


def test_startup_benchmark_covers_every_command_and_both_caches(tmp_path, capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(COMMANDS) == {""} | set(sub.choices)  # a new command is timed too

    out = tmp_path / "startup.json"
    assert main(["--repeat", "1", "--names", "3", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["command"] for r in result["startup"]][:2] == ["cora --help", "cora detect --help"]
    assert all(r["median_s"] > 0 for r in result["startup"])
    text = result["text"]
    assert (text["names"], text["prompts"]) == (3, 3 * 80)
    assert text["cold_s"] > 0 and text["warm_median_s"] > 0 and text["cache_mb"] > 0
    assert "warm median s" in capsys.readouterr().out
