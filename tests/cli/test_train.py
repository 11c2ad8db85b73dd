"""`cora train-prompt` then `cora train` (cora.cli.train, through cora.cli.main) on synthetic data."""

import argparse
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from cora.checkpoint import load_model
from cora.cli import main
from cora.cli.train import add_parser
from cora.data.synthetic import write_synthetic


def parse(argv):
    parser = argparse.ArgumentParser(prog="cora")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_train_prompt_then_train_with_its_prompt(tmp_path):
    write_synthetic(tmp_path / "d", num_images=6, seed=2, size=(64, 64))
    common = ["--data", str(tmp_path / "d"), "--preset", "tiny", "--random-init", "--batch-size", "4",
              "--no-progress", "--device", "cpu"]
    args = parse(["train-prompt", *common, "--out", str(tmp_path / "p"), "--epochs", "1", "--lr", "1e-3"])
    assert args.run(args) == 0
    assert (tmp_path / "p" / "prompt.pth").is_file()
    args = parse(["train", *common, "--out", str(tmp_path / "l"), "--epochs", "1", "--prompt", str(tmp_path / "p" / "prompt.pth")])
    assert args.run(args) == 0
    from cora.engine.convert import PROMPT_KEY

    # stage 2 starts from stage 1's prompt and keeps it frozen
    exported = torch.load(tmp_path / "p" / "prompt.pth", weights_only=True)[PROMPT_KEY]
    stage2 = load_model(checkpoint=tmp_path / "l" / "model").region_classifier.effective_positional_embedding()
    torch.testing.assert_close(stage2, exported, rtol=0, atol=1e-7)
    fresh = load_model(preset="tiny", random_init=True).region_classifier.effective_positional_embedding()
    assert not torch.allclose(fresh, exported)  # negative control: stage 1 changed it


def weights(run) -> dict:
    return load_file(str(run / "model" / "model.safetensors"))


def losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_synthetic(root, num_images=6, seed=2, size=(64, 64))  # 5 training images
    return root


def train_args(data, out, *extra):
    """3 steps (5 images, 2 per batch), a checkpoint after each, class dropout and EMA on."""
    return ["train", "--data", str(data), "--preset", "tiny", "--batch-size", "2", "--no-progress", "--device", "cpu",
            "--epochs", "1", "--class-dropout", "0.5", "--ema-decay", "0.9", "--save-every", "1", "--out", str(out), *extra]


RANDOM = ("--random-init", "--seed", "3")


@pytest.fixture(scope="module")
def uninterrupted(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    assert main(train_args(shapes, out, *RANDOM)) == 0
    return out


def test_the_same_command_gives_the_same_run(shapes, uninterrupted, tmp_path):
    """--seed draws the fresh weights (and the random CLIP) too: equal losses from step 1 and equal weights;
    another seed differs from step 1 on."""
    assert main(train_args(shapes, tmp_path / "again", *RANDOM)) == 0
    assert losses(tmp_path / "again") == losses(uninterrupted) and len(losses(uninterrupted)) == 3
    got, ref = weights(tmp_path / "again"), weights(uninterrupted)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    assert main(train_args(shapes, tmp_path / "other", "--random-init", "--seed", "4", "--max-steps", "1")) == 0
    assert losses(tmp_path / "other")[0] != losses(uninterrupted)[0]  # negative control


@pytest.mark.slow
def test_resume_after_sigkill_equals_the_uninterrupted_run(shapes, uninterrupted, tmp_path):
    """`python -m cora train` (a subprocess) killed with SIGKILL mid-run, then --resume: the random frozen CLIP is
    drawn again from --seed, so the weights and losses are those of the run that was never interrupted."""
    killed = tmp_path / "killed"
    argv = train_args(shapes, killed, *RANDOM)
    proc = subprocess.Popen([sys.executable, "-m", "cora", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (killed / "last_checkpoint").is_file():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        proc.kill()  # SIGKILL: no handler runs, a write may be cut anywhere
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (killed / "model").exists()  # it was killed mid-run
    assert main([*argv, "--resume"]) == 0
    assert losses(killed) == pytest.approx(losses(uninterrupted), rel=1e-5)
    got, ref = weights(killed), weights(uninterrupted)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-6, rtol=1e-5, msg=k)


def test_clip_weights_file_and_resume_without_random_init(shapes, uninterrupted, tmp_path):
    """--clip-weights: the frozen CLIP is the file's (not a random one), the fresh CORA weights come from --seed,
    and a resumed run equals the uninterrupted one."""
    from cora.modeling.backbone import build_clip

    torch.manual_seed(123)
    clip = build_clip("tiny")
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    flags = ["--clip-weights", str(tmp_path / "clip.pt"), "--seed", "3"]
    model = load_model(preset="tiny", clip_weights=str(tmp_path / "clip.pt"), random_init=True)
    for k, v in clip.visual.state_dict().items():
        assert torch.equal(model.backbone.visual.state_dict()[k], v), k
    assert main(train_args(shapes, tmp_path / "part", *flags, "--max-steps", "1")) == 0
    assert main(train_args(shapes, tmp_path / "part", *flags, "--resume")) == 0
    assert main(train_args(shapes, tmp_path / "full", *flags)) == 0
    assert losses(tmp_path / "part") == losses(tmp_path / "full")
    got, ref = weights(tmp_path / "part"), weights(tmp_path / "full")
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    assert losses(tmp_path / "full")[0] != losses(uninterrupted)[0]  # the file's CLIP, not seed 3's random one


@pytest.fixture(scope="module")
def lvis_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("lvis")
    write_synthetic(root, num_images=7, seed=6, size=(64, 64), val_fraction=0.15, colour_classes=True)
    return root


def lvis_run(stage, root, out, *extra) -> dict:
    """`cora <stage> --lvis` on the synthetic LVIS json; returns its saved train_config.json."""
    argv = [stage, "--ann-file", str(root / "lvis_train.json"), "--images", str(root), "--preset", "tiny",
            "--random-init", "--lvis", "--batch-size", "3", "--no-progress", "--device", "cpu", "--epochs", "1",
            "--out", str(out), *extra]
    assert main(argv) == 0
    return json.loads((out / "train_config.json").read_text())


def test_lvis_flags_reach_the_trainer_and_change_the_run(lvis_shapes, tmp_path, capsys):
    # --lvis: the LVIS json with its frequency split (rare = novel); read as COCO it names no COCO class
    assert main(["train", "--ann-file", str(lvis_shapes / "lvis_train.json"), "--images", str(lvis_shapes),
                 "--preset", "tiny", "--random-init", "--out", str(tmp_path / "coco"), "--no-progress"]) == 1
    assert "COCO OVD split names not among the json's" in capsys.readouterr().err
    assert lvis_run("train", lvis_shapes, tmp_path / "l0", "--max-steps", "1")["eval_metric"] == "APr"
    # --sampled-classes: stage 1's cross-entropy over the batch's classes (+ sampled ones) only: at step 1 (the
    # same logits) a softmax over fewer classes gives a lower loss
    assert lvis_run("train-prompt", lvis_shapes, tmp_path / "p0", "--max-steps", "1")["sampled_classes"] == 0
    assert lvis_run("train-prompt", lvis_shapes, tmp_path / "p2", "--max-steps", "1", "--sampled-classes", "2")[
        "sampled_classes"] == 2
    assert losses(tmp_path / "p2")[0] < losses(tmp_path / "p0")[0]
    # --relaxed-match-threshold: queries also match ground truths of similar classes: another matching
    tcfg = lvis_run("train", lvis_shapes, tmp_path / "l1", "--max-steps", "1", "--relaxed-match-threshold", "0.1")
    assert tcfg["relaxed_match_threshold"] == 0.1 and losses(tmp_path / "l1")[0] != losses(tmp_path / "l0")[0]
    # --repeat-factor-threshold: with t above every class's image frequency, images repeat: more steps an epoch
    tcfg = lvis_run("train", lvis_shapes, tmp_path / "r", "--repeat-factor-threshold", "0.9")
    assert tcfg["repeat_factor_threshold"] == 0.9 and len(losses(tmp_path / "r")) > 2  # 6 images / 3 = 2 without


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
