"""cora.cli.export: `cora export`, driven by EXPORT_FORMATS."""

import argparse

import pytest

from cora.cli.export import EXPORT_FORMATS, add_parser
from cora.errors import UserError
from cora.export.tensorrt import tensorrt_missing


def run(argv):
    parser = argparse.ArgumentParser(prog="cora")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", *argv])
    return args.run(args)


def test_formats_table():
    assert [f.arg for f in EXPORT_FORMATS] == ["onnx", "engine"]
    assert {f.suffix for f in EXPORT_FORMATS} == {".onnx", ".engine"}
    onnx, engine = EXPORT_FORMATS
    assert onnx.cpu and not engine.cpu and set(onnx.options) < set(engine.options)


def test_unknown_format_lists_choices_and_a_hint(capsys):
    with pytest.raises(SystemExit) as exit_:
        run(["--format", "engien", "--out", "x"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "choose from onnx, engine" in err and "did you mean 'engine'" in err


def test_engine_flags_with_onnx_format_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(["--out", str(tmp_path / "x.onnx"), "--random-init", "--preset", "tiny", "--fp16"])
    assert exit_.value.code == 2 and "--fp16: only for --format engine" in capsys.readouterr().err


@pytest.mark.skipif(tensorrt_missing(None) is None, reason="TensorRT and a GPU are present")
def test_engine_without_tensorrt_fails_fast_with_one_line(tmp_path):
    with pytest.raises(UserError, match="--format onnx") as err:
        run(["--format", "engine", "--out", str(tmp_path / "x.engine"), "--random-init", "--preset", "tiny"])
    assert len(str(err.value).splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # failed before exporting anything
