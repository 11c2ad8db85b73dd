"""cora.cli.common: the shared model / device / vocabulary flags and the one conversion to UserError."""

import argparse
from pathlib import Path

import pytest

from cora.cli import common
from cora.errors import UserError


def parser(**kwargs):
    p = argparse.ArgumentParser(prog="cora x")
    common.add_model_arguments(p, **kwargs)
    common.add_device_argument(p)
    common.add_vocabulary_arguments(p, required=False)
    return p


def test_model_source_is_load_model_kwargs():
    from inspect import signature

    from cora.checkpoint import load_model

    args = parser().parse_args([])
    source = common.model_source(args)
    assert source == {"checkpoint": None, "preset": "rn50_coco", "clip_weights": None, "random_init": False,
                      "seed": 0, "overrides": []}
    assert set(source) | {"device"} <= set(signature(load_model).parameters)
    args = parser().parse_args(["--checkpoint", "ckpt", "--preset", "tiny", "--set", "a=1", "--seed", "3"])
    # a checkpoint's config replaces the preset; the user's --set comes after the command's own overrides
    assert common.model_source(args, overrides=["b=2"]) == {
        "checkpoint": "ckpt", "preset": None, "clip_weights": None, "random_init": False, "seed": 3,
        "overrides": ["b=2", "a=1"]}


def test_checkpoint_aliases_and_own_seed():
    p = parser(checkpoint_flags=("--checkpoint", "--init"), seed=False)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(["--init", "ckpt"])
    assert common.model_source(args)["checkpoint"] == "ckpt" and common.model_source(args)["seed"] == 7


def test_every_flag_has_help_and_a_default():
    for action in parser()._actions:
        if action.dest != "help":
            assert action.help and "default" in action.help.lower() or action.dest in ("vocab", "vocab_file"), \
                action.dest


def test_device_rule(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert common.resolve_device(None) == "cpu"
    assert common.resolve_device("cpu") == "cpu"
    for device, message in (("cuda", "torch sees no CUDA GPU"), ("cuda:0", "torch sees no CUDA GPU"), ("bogus", "expected cpu"),
                            ("meta", "expected cpu")):
        with pytest.raises(UserError, match=f"^--device '?{device}'?: {message}"):
            common.resolve_device(device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert common.resolve_device(None) == "cuda"
    assert common.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(UserError, match="sees 2 CUDA GPU"):
        common.resolve_device("cuda:2")


def test_vocabulary_source():
    assert common.vocabulary_source(parser().parse_args(["--vocab", "cat,dog"])) == "cat,dog"
    # --vocab-file is a Path: load_vocabulary reads it as a file whatever its name
    assert common.vocabulary_source(parser().parse_args(["--vocab-file", "x.txt"])) == Path("x.txt")
    with pytest.raises(SystemExit):
        parser().parse_args(["--vocab", "cat", "--vocab-file", "x.txt"])


def test_user_errors_converts_library_errors_to_one_line():
    with pytest.raises(UserError, match="^bad value$"):
        with common.user_errors():
            raise ValueError("bad value\nmore detail")
    with pytest.raises(UserError, match="no such file"):
        with common.user_errors():
            raise FileNotFoundError("no such file")
    with pytest.raises(UserError, match="^'key'$"):
        with common.user_errors(KeyError):
            raise KeyError("key")
    with pytest.raises(RuntimeError):  # anything else is a bug: its traceback is kept
        with common.user_errors():
            raise RuntimeError("bug")
