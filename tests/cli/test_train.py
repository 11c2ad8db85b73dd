"""`cora train-prompt` then `cora train` (cora.cli.train, through cora.cli.main) on synthetic data."""

import argparse

import torch

from cora.cli import main
from cora.cli.train import add_parser
from cora.data.synthetic import write_synthetic


def parse(argv):
    parser = argparse.ArgumentParser(prog="cora")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_train_prompt_then_train_and_resume(tmp_path):
    write_synthetic(tmp_path / "d", num_images=6, seed=2, size=(64, 64))
    common = ["--data", str(tmp_path / "d"), "--preset", "tiny", "--random-init", "--batch-size", "4",
              "--no-progress", "--device", "cpu"]
    args = parse(["train-prompt", *common, "--out", str(tmp_path / "p"), "--epochs", "1", "--lr", "1e-3"])
    assert args.run(args) == 0
    assert (tmp_path / "p" / "prompt.pth").is_file()
    loc = ["train", *common, "--out", str(tmp_path / "l"), "--epochs", "2", "--prompt", str(tmp_path / "p" / "prompt.pth")]
    args = parse([*loc, "--max-steps", "1"])
    assert args.run(args) == 0 and not (tmp_path / "l" / "model").exists()
    args = parse([*loc, "--resume"])
    assert args.run(args) == 0
    assert (tmp_path / "l" / "model" / "model.safetensors").is_file()
    assert len((tmp_path / "l" / "log.jsonl").read_text().splitlines()) == 4
    st = torch.load(next((tmp_path / "l" / "checkpoints").iterdir()) / "training_state.pt", weights_only=True)
    assert st["step"] == 4 and st["epoch"] == 2


def test_bad_data_exits_1(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--preset", "tiny", "--random-init",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "cora train:" in capsys.readouterr().err


def test_checkpoint_loads_into_a_fresh_model(tmp_path):
    from cora.config import get_preset
    from cora.checkpoint import load_checkpoint, load_into
    from cora.modeling.detector import CORA

    write_synthetic(tmp_path / "d", num_images=4, seed=3, size=(64, 64))
    args = parse(["train", "--data", str(tmp_path / "d"), "--preset", "tiny", "--random-init", "--batch-size", "4",
                  "--epochs", "1", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "l")])
    assert args.run(args) == 0
    state, cfg = load_checkpoint(tmp_path / "l" / "model")
    assert cfg == get_preset("tiny")
    load_into(CORA.from_config(cfg, random_init=True), state)


def test_missing_images_are_reported_before_training(tmp_path, capsys):
    write_synthetic(tmp_path / "d", num_images=4, seed=3, size=(64, 64))
    assert main(["train", "--ann-file", str(tmp_path / "d" / "instances_train.json"), "--preset", "tiny",
                 "--random-init", "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "--ann-file and --images" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "d"), "--preset", "tiny", "--random-init", "--eval-every", "1",
                 "--val-images", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress", "--device", "cpu"]) == 1
    assert "validation images not found" in capsys.readouterr().err and not (tmp_path / "o" / "log.jsonl").exists()
