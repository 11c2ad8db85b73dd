"""cora.bench.train_step (`python benchmarks/train_step.py`) runs on the tiny preset and reports both methods."""

import json

from cora.bench.train_step import main


def test_train_step_benchmark_writes_both_methods(tmp_path, capsys):
    out = tmp_path / "train_step.json"
    assert main(["--preset", "tiny", "--queries", "20", "--image-size", "64", "96", "--classes", "6",
                 "--repeat", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["results"]) == {"two CORA.predict_raw calls (baseline)", "CORA.forward_train"}
    assert all(r["median_ms"] > 0 for r in result["results"].values())
    assert "speedup" in capsys.readouterr().out
