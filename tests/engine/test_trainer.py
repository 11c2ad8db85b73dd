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
from cora.errors import UserError
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


AMP_TCFG = TrainConfig(epochs=1, batch_size=3, lr=1e-3, ema_decay=0.0, class_dropout=0.0)  # 2 steps


def update_norm(a: dict, b: dict) -> float:
    """||a - b|| over every learned tensor (float64)."""
    return sum(float((a[k].double() - b[k].double()).norm()) ** 2 for k in a) ** 0.5


@pytest.fixture(scope="module")
def fp32_run(data, tmp_path_factory):
    start = tiny_model().learned_state_dict()
    model = tiny_model()
    log = train_localizer(model, data, tmp_path_factory.mktemp("fp32"), AMP_TCFG, progress=False)
    return start, log, model.learned_state_dict()


# Stated bounds of autocast training against float32 over the same 2 steps (same data, same start): every
# step's loss within 2% (step 2's loss is after one update: a skipped or wrong step misses it by ~6x), and the
# weights' update within `update` of the float32 update (relative norm; Adam turns the rounding of near-zero
# gradients into full lr-sized steps, more so with bf16's 8-bit mantissa: measured 0.15 bf16, 0.036 fp16).
AMP_BOUNDS = {"bf16": dict(amp="bf16", update=0.3), "fp16": dict(amp="fp16", loss_scale=1024.0, update=0.1)}


@pytest.mark.slow
@pytest.mark.parametrize("amp", AMP_BOUNDS)
def test_autocast_training_matches_fp32_within_bounds(data, tmp_path, fp32_run, amp):
    start, ref_log, ref = fp32_run
    bound = AMP_BOUNDS[amp]
    model = tiny_model()
    tcfg = TrainConfig(**{**AMP_TCFG.__dict__, **{k: v for k, v in bound.items() if k != "update"}})
    log = train_localizer(model, data, tmp_path, tcfg, progress=False)
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in ref_log], rel=0.02)
    got = model.learned_state_dict()
    assert update_norm(got, ref) < bound["update"] * update_norm(ref, start)
    if amp == "fp16":  # a scale of 1024 never overflowed: both steps were taken
        state = trainer.load_training_state(trainer.last_checkpoint(tmp_path))
        assert state["scaler"]["scale"] == 1024.0


@pytest.mark.slow
def test_fp16_loss_scaler_state_survives_resume(data, tmp_path):
    """The default initial scale (2^16) overflows on this model: each step is skipped and halves the scale, so
    a resumed run that started a fresh scaler would end at 2^15 instead of 2^14."""
    tcfg = TrainConfig(**{**AMP_TCFG.__dict__, "amp": "fp16"})
    train_localizer(tiny_model(), data, tmp_path / "full", tcfg, progress=False)
    train_localizer(tiny_model(), data, tmp_path / "part", TrainConfig(**{**tcfg.__dict__, "max_steps": 1}),
                    progress=False)
    half = trainer.load_training_state(trainer.last_checkpoint(tmp_path / "part"))["scaler"]
    assert half["scale"] == 2.0 ** 15
    train_localizer(tiny_model(), data, tmp_path / "part", tcfg, resume=True, progress=False)
    full, resumed = (trainer.load_training_state(trainer.last_checkpoint(tmp_path / d)) for d in ("full", "part"))
    assert resumed["scaler"] == full["scaler"] and full["scaler"]["scale"] == 2.0 ** 14
    for k, v in full["learned"].items():
        assert torch.equal(resumed["learned"][k], v), k


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
    assert trainer.load_training_state(trainer.last_checkpoint(tmp_path))["step"] == 1  # intact: what --resume reads
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


@pytest.mark.parametrize("field, value, match", [
    ("max_steps", 0, r"max_steps must be an integer >= 1, got 0"),
    ("max_steps", -3, r"max_steps must be an integer >= 1, got -3"),
    ("lr", math.inf, r"lr must be a number in \(0, inf\), got inf"),
    ("lr", 0.0, r"lr must be a number in \(0, inf\)"),
    ("ema_decay", 2.0, r"ema_decay must be a number in \[0, 1\)"),
    ("class_dropout", 1.5, r"class_dropout must be a number in \[0, 1\]"),
    ("clip_max_norm", math.nan, r"clip_max_norm must be a number in \[0, inf\), 0 = off, got nan"),
    ("save_every", -1, r"save_every must be an integer >= 0 \(0 = off\), got -1"),
    ("epochs", 1.5, r"epochs must be an integer >= 1, got 1.5"),
    ("loss_scale", 0.0, r"loss_scale must be a number in \(0, inf\)"),
    ("amp", "fp8", r"amp must be one of off, bf16, fp16"),
])
def test_train_config_refuses_bad_values(field, value, match):
    with pytest.raises(UserError, match=match):
        TrainConfig(**{field: value})


def test_train_config_accepts_the_edges():
    """The negative control of the refusals: every boundary value that is valid."""
    TrainConfig(max_steps=1, lr=1e-12, ema_decay=0.0, class_dropout=1.0, clip_max_norm=0.0, save_every=0,
                repeat_factor_threshold=1.0, relaxed_match_threshold=0.0, lr_drop_epoch=0, amp="fp16")


def fake_run(out: Path, pointer: str) -> Path:
    """A run folder whose last_checkpoint says `pointer`, with a real-looking checkpoint beside it."""
    (out / "checkpoints" / "step_00000002").mkdir(parents=True)
    torch.save({"step": 2}, out / "checkpoints" / "step_00000002" / "training_state.pt")
    (out / "last_checkpoint").write_text(pointer)
    return out


@pytest.mark.parametrize("pointer", ["../../elsewhere/step_00000002", "/tmp/step_00000002", "step_00000002/../..",
                                     "step_2", "outside"])
def test_last_checkpoint_never_leads_outside_the_run(tmp_path, pointer):
    out = fake_run(tmp_path / "run", pointer)
    with pytest.raises(UserError, match=r"last_checkpoint must name a checkpoint folder in .*checkpoints"):
        trainer.last_checkpoint(out)


def test_last_checkpoint_refuses_a_link_out_and_a_bad_state(tmp_path):
    out = fake_run(tmp_path / "run", "step_00000002\n")
    assert trainer.load_training_state(trainer.last_checkpoint(out)) == {"step": 2}  # negative control
    (tmp_path / "elsewhere").mkdir()
    (out / "checkpoints" / "step_00000003").symlink_to(tmp_path / "elsewhere")
    (out / "last_checkpoint").write_text("step_00000003")
    with pytest.raises(UserError, match="must name a checkpoint folder in"):
        trainer.last_checkpoint(out)
    (out / "checkpoints" / "step_00000002" / "training_state.pt").write_bytes(b"half a file")
    with pytest.raises(UserError, match=r"training_state.pt is not a PyTorch file torch.load can read"):
        trainer.load_training_state(out / "checkpoints" / "step_00000002")


def test_max_steps_writes_the_model_it_stopped_at(data, tmp_path):
    """A run stopped by max_steps ends with model/ = its last checkpoint; a resume that has nothing left to do
    writes it again (a kill between the two leaves none), and one asking for fewer steps than done is refused."""
    tcfg = TrainConfig(epochs=2, batch_size=3, lr=1e-3, ema_decay=0.5, max_steps=1)
    model = tiny_model()
    train_localizer(model, data, tmp_path, tcfg, progress=False)
    saved = load_file(str(tmp_path / "model" / "model.safetensors"))
    last = load_file(str(tmp_path / "checkpoints" / "step_00000001" / "model.safetensors"))
    assert saved.keys() == last.keys() and all(torch.equal(saved[k], last[k]) for k in saved)
    assert not torch.equal(saved["localizer.query_embed.weight"], tiny_model().localizer.query_embed.weight)
    import shutil

    shutil.rmtree(tmp_path / "model")
    log = train_localizer(tiny_model(), data, tmp_path, tcfg, resume=True, progress=False)
    assert [r["step"] for r in log] == [1] and (tmp_path / "model" / "model.safetensors").is_file()
    train_localizer(tiny_model(), data, tmp_path / "two", TrainConfig(**{**tcfg.__dict__, "max_steps": 2}), progress=False)
    with pytest.raises(UserError, match=r"is at step 2, past the 1 steps this one asks for"):
        train_localizer(tiny_model(), data, tmp_path / "two", tcfg, resume=True, progress=False)
