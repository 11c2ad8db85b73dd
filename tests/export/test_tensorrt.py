"""cora.export.tensorrt (through export/to_trt.py's entry, cora.cli.export.trt_main) and cora.runtime.tensorrt
where TensorRT is missing (always, on the development machines)."""

import importlib.util

import pytest

from cora.cli.export import trt_main as main
from cora.export.tensorrt import tensorrt_missing

needs_no_tensorrt = pytest.mark.skipif(tensorrt_missing("x.onnx") is None, reason="TensorRT and a GPU are present")


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not parsed: the TensorRT check comes first")
    return path


@needs_no_tensorrt
def test_without_tensorrt_exits_1_with_one_line(onnx_file, tmp_path, capsys):
    code = main(["--onnx", str(onnx_file), "--out", str(tmp_path / "model.engine"), "--fp16"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert ("TensorRT is not installed" in err or "no CUDA GPU" in err) and f"{onnx_file} is still usable" in err
    assert not (tmp_path / "model.engine").exists()


def test_missing_onnx_file_exits_1(tmp_path, capsys):
    assert main(["--onnx", str(tmp_path / "none.onnx"), "--out", str(tmp_path / "e.engine")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--vocab-profile", "80", "1", "4096"], ["--image-profile", "100", "64", "64", "64", "64", "64"],
                                   ["--workspace", "0"]])
def test_bad_profiles_are_usage_errors(onnx_file, tmp_path, flags):
    with pytest.raises(SystemExit) as exit_:
        main(["--onnx", str(onnx_file), "--out", str(tmp_path / "e.engine"), *flags])
    assert exit_.value.code == 2


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
def test_tensorrt_runtime_imports_without_tensorrt_and_says_what_is_missing(tmp_path):
    from cora.runtime.tensorrt import TensorRTDetector

    with pytest.raises(ImportError, match="TensorRT 10 .* not installed.*OnnxDetector"):
        TensorRTDetector(tmp_path / "model.engine")
