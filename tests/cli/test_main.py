"""cora.cli.main: the commands, one-line errors (exit 1), usage errors (exit 2), and the import layers."""

import subprocess
import sys
from pathlib import Path

import pytest

from cora.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def test_every_command_is_registered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) >= {"detect", "eval", "train-prompt", "train", "relabel", "export", "check", "data",
                                "convert", "bench"}


def test_user_error_is_one_line_and_exit_1(capsys):
    assert main(["eval", "--split", "coco_ovd", "--random-init", "--gt", "x.json"]) == 1
    err = capsys.readouterr().err
    assert err == "cora eval: unknown split 'coco_ovd'; choose from coco-ovd, lvis (did you mean 'coco-ovd'?)\n"


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["detect"])
    assert e.value.code == 2


def test_bad_config_file_is_one_line(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("batch_sise: 4\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cora train: --config") and "did you mean 'batch_size'" in err and err.count("\n") == 1


def test_building_the_parser_imports_no_torch():
    code = "import sys; from cora.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_python_dash_m_cora_runs_the_cli():
    """`python -m cora` (cora/__main__.py) in a subprocess: help exits 0, a user error is one line and exit 1
    (tests/cli/test_train.py also trains through it and kills it)."""
    ok = subprocess.run([sys.executable, "-m", "cora", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "detect" in ok.stdout and "train-prompt" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "cora", "eval", "--split", "coco_ovd", "--random-init", "--gt", "x.json"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == "cora eval: unknown split 'coco_ovd'; choose from coco-ovd, lvis (did you mean 'coco-ovd'?)\n"
