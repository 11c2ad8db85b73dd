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
    assert [f.arg for f in EXPORT_FORMATS] == ["onnx", "engine", "triton"]
    assert [f.suffix for f in EXPORT_FORMATS] == [".onnx", ".engine", ""]  # a Triton repository is a folder
    onnx, engine, triton = EXPORT_FORMATS
    assert onnx.cpu and not engine.cpu and triton.cpu
    assert set(onnx.options) < set(engine.options)
    assert set(triton.options) < set(onnx.options) and "vocab" not in triton.options  # vocabularies come per request


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


def test_checkpoint_dynamic_size_and_text_encoder_reach_the_export(tmp_path, monkeypatch):
    """The flags' wiring into cora.export.onnx (an export takes ~30-60 s here: the export functions are
    recorded, not run; tests/export and tests/runtime export for real, dynamic sizes and text encoder included):
    --checkpoint's weights are the exported detector's, --dynamic-size is no static size, --text-encoder is
    exported first and named in the detector's export."""
    import torch

    import cora.export.lint as lint
    import cora.export.onnx as onnx_export
    from cora.checkpoint import load_model, save_checkpoint

    trained = load_model(preset="tiny", random_init=True, seed=7)  # learned weights other than seed 0's
    save_checkpoint(tmp_path / "ckpt", trained.learned_state_dict(), trained.cfg)
    calls = []
    monkeypatch.setattr(onnx_export, "export_detector", lambda det, out, **kw: calls.append(("detector", det, out, kw)))
    monkeypatch.setattr(onnx_export, "export_text_encoder", lambda det, out, **kw: calls.append(("text", det, out, kw)))
    monkeypatch.setattr(lint, "lint_tensorrt", lambda path: [])
    out, text = str(tmp_path / "det.onnx"), str(tmp_path / "text.onnx")
    assert run(["--checkpoint", str(tmp_path / "ckpt"), "--dynamic-size", "--text-encoder", text, "--out", out]) == 0
    assert [c[0] for c in calls] == ["text", "detector"]  # the detector's metadata names the text encoder
    (_, text_det, text_out, text_kw), (_, det, det_out, kw) = calls
    assert text_det is det and (text_out, det_out) == (text, out) and kw["text_encoder"] == text
    assert kw["image_size"] is None and kw["check"] and text_kw["check"]
    assert kw["source"]["checkpoint"] == str(tmp_path / "ckpt") and not kw["source"]["random_init"]
    for k, v in trained.learned_state_dict().items():
        assert torch.equal(det.learned_state_dict()[k], v), k
    # negative controls: a static size, no text encoder, and seed 0's random weights differ from the checkpoint's
    calls.clear()
    assert run(["--random-init", "--preset", "tiny", "--image-size", "96", "128", "--out", str(tmp_path / "s.onnx")]) == 0
    assert [c[0] for c in calls] == ["detector"] and calls[0][3]["image_size"] == (96, 128)
    assert calls[0][3]["text_encoder"] is None
    assert not torch.equal(calls[0][1].learned_state_dict()["localizer.query_embed.weight"],
                           trained.learned_state_dict()["localizer.query_embed.weight"])
