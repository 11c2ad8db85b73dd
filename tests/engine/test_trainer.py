"""The shared training loop: autocast, periodic evaluation + best checkpoint, interrupted checkpoint writes,
and the --config file of `cora train`."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cora.engine.trainer as trainer
from cora.cli import build_parser, main
from cora.cli.common import load_config_file
from cora.config import get_preset
from cora.data.coco import build_dataset
from cora.data.synthetic import write_synthetic
from cora.data.transforms import Resize
from cora.engine.train_localizer import localizer_step, train_localizer
from cora.engine.trainer import TrainConfig
from cora.modeling.detector import CORA
from cora.modeling.losses import SetCriterion


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_synthetic(root, num_images=7, seed=6, size=(64, 64), val_fraction=0.15)  # 6 training images
    return root


@pytest.fixture(scope="module")
def data(root):
    return build_dataset(root / "instances_train.json", root, train=True, split=root / "split.json", transforms=Resize(64))


def tiny_model():
    torch.manual_seed(0)
    return CORA.from_config(get_preset("tiny"), random_init=True)


def test_bf16_autocast_changes_the_arithmetic_not_the_loss(data):
    model = tiny_model()
    text = model.encode_vocabulary(list(data.vocabulary))
    images, targets = zip(*[data[i] for i in range(4)])
    ctx = {"tcfg": TrainConfig(class_dropout=0.0), "step_rng": torch.Generator(), "criterion": SetCriterion()}
    ref, _ = localizer_step(model, list(images), list(targets), text, ctx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp, terms = localizer_step(model, list(images), list(targets), text, ctx)
    assert amp.dtype == torch.float32 and amp.item() != ref.item()  # bf16 matmuls ran, losses in float32
    assert amp.item() == pytest.approx(ref.item(), rel=0.05)
    amp.backward()  # gradients flow through the autocast graph (custom ops included)
    assert all(torch.isfinite(p.grad).all() for n, p in model.named_parameters() if n.startswith("localizer.")
               and p.grad is not None)


def test_fp16_run_with_loss_scaling(data, tmp_path):
    log = train_localizer(tiny_model(), data, tmp_path, TrainConfig(epochs=1, batch_size=3, lr=1e-3, amp="fp16"),
                          progress=False)
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    state = torch.load(tmp_path / "checkpoints" / "step_00000002" / "training_state.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0  # the scaler's state is saved for --resume


def test_periodic_evaluation_keeps_the_best_ema_checkpoint(data, tmp_path):
    scores = iter([0.1, 0.3, 0.2])
    seen = []

    def evaluator(model):  # records the weights it is given: they must be the EMA ones
        seen.append(model.localizer.query_embed.weight.detach().clone())
        return {"AP50_novel": next(scores), "AP50_base": math.nan}  # NaN: a group without ground truth

    model = tiny_model()
    tcfg = TrainConfig(epochs=3, batch_size=3, lr=1e-3, ema_decay=0.5, eval_every=1)
    train_localizer(model, data, tmp_path, tcfg, progress=False, evaluator=evaluator)
    strict = lambda c: pytest.fail(f"non-standard JSON constant {c}")  # noqa: E731
    rows = [json.loads(x, parse_constant=strict) for x in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert all(r["AP50_base"] is None for r in rows)
    assert [(r["epoch"], r["step"], r["AP50_novel"]) for r in rows] == [(1, 2, 0.1), (2, 4, 0.3), (3, 6, 0.2)]
    assert json.loads((tmp_path / "best" / "best.json").read_text())["epoch"] == 2
    best = load_file(str(tmp_path / "best" / "model.safetensors"))
    assert torch.equal(best["localizer.query_embed.weight"], seen[1])
    final = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert torch.equal(final["localizer.query_embed.weight"], seen[2])
    assert not torch.equal(model.localizer.query_embed.weight.detach(), seen[2])  # raw weights back after eval
    with pytest.raises(ValueError, match="eval_every > 0 needs an evaluator"):
        train_localizer(tiny_model(), data, tmp_path / "x", tcfg, progress=False)


def test_interrupted_checkpoint_write_keeps_the_previous_one(data, tmp_path, monkeypatch):
    tcfg = TrainConfig(epochs=2, batch_size=3, lr=1e-3, ema_decay=0.9, save_every=1)
    train_localizer(tiny_model(), data, tmp_path, TrainConfig(**{**tcfg.__dict__, "max_steps": 1}), progress=False)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):  # the process dies while writing step 2's training state
        with open(f, "wb") as out:
            out.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train_localizer(tiny_model(), data, tmp_path, tcfg, resume=True, progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "last_checkpoint").read_text() == "step_00000001"
    assert trainer.load_training_state(tmp_path)["step"] == 1  # intact, and what --resume continues from
    log = train_localizer(tiny_model(), data, tmp_path, tcfg, resume=True, progress=False)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="--resume with amp='bf16', but the run .* used 'off'"):
        train_localizer(tiny_model(), data, tmp_path, TrainConfig(**{**tcfg.__dict__, "amp": "bf16"}), resume=True)


def test_config_file_then_command_line(root, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(f"data: {root}\npreset: tiny\nrandom_init: true\nbatch-size: 3\n"
                                     "epochs: 1\nlr: 0.002\nno_progress: true\ndevice: cpu\nset: [inference.nms_iou=0.6]\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(out), "--lr", "0.003"]) == 0
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["batch_size"], saved["epochs"], saved["lr"]) == (3, 1, 0.003)  # the flag beats the file
    assert json.loads((out / "model" / "config.json").read_text())["inference"]["nms_iou"] == 0.6
    (tmp_path / "bad.yaml").write_text("batch_sise: 3\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml"), "--out", str(out)]) == 1
    assert "unknown flag 'batch_sise'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["coco_prompt", "coco_localizer", "lvis_prompt", "lvis_localizer"])
def test_shipped_configs_name_real_flags(name):
    args = build_parser().parse_args(["train-prompt" if "prompt" in name else "train"])
    values = load_config_file(str(Path(__file__).parents[2] / "configs" / f"{name}.yaml"), args.config_parser)
    assert values["batch_size"] == 32 and values["preset"] in {"rn50_coco", "rn50x4_lvis"}


def test_lvis_options_resume_exactly(data, tmp_path):
    """Repeat-factor sampling (t above every class frequency, so images repeat), relaxed matching and class
    dropout together: an interrupted and resumed run ends where an uninterrupted one does."""
    from cora.data.sampling import repeat_factors

    tcfg = TrainConfig(epochs=2, batch_size=3, lr=1e-3, ema_decay=0.9, class_dropout=0.5,
                       repeat_factor_threshold=0.9, relaxed_match_threshold=0.2)
    factors = repeat_factors(data, tcfg.repeat_factor_threshold)
    assert (factors > 1).any()
    full = tiny_model()
    log = train_localizer(full, data, tmp_path / "a", tcfg, progress=False)
    steps = len(log)
    assert steps > 2 * -(-len(data) // tcfg.batch_size)  # more steps than without repeats (on average)
    part = tiny_model()
    train_localizer(part, data, tmp_path / "b", TrainConfig(**{**tcfg.__dict__, "max_steps": steps // 2}), progress=False)
    resumed = tiny_model()
    log_b = train_localizer(resumed, data, tmp_path / "b", tcfg, resume=True, progress=False)
    assert [r["loss"] for r in log_b] == pytest.approx([r["loss"] for r in log], rel=1e-5)
    for k, v in full.learned_state_dict().items():
        torch.testing.assert_close(resumed.learned_state_dict()[k], v, atol=1e-6, rtol=1e-5, msg=k)
