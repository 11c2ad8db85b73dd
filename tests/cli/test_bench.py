"""`cora bench`: the benchmarks of cora.bench with their own arguments."""

import json

from cora.cli import main


def test_bench_runs_the_benchmark_script(tmp_path):
    out = tmp_path / "vocab.json"
    assert main(["bench", "vocab", "--preset", "smoke", "--no-progress", "--json", str(out),
                 "--plot", str(tmp_path / "vocab.png")]) == 0
    result = json.loads(out.read_text())
    assert result["preset"] == "smoke" and result["results"]
    assert main(["bench", "kernels", "--device", "nonsense"]) == 2  # the script's own argument errors


def test_bench_kernels_writes_json(tmp_path):
    out = tmp_path / "kernels.json"
    assert main(["bench", "kernels", "--ops", "linear_assignment", "--repeat", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["results"] and all(r["op"] == "linear_assignment" for r in result["results"])
