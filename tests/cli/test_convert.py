"""`cora convert`: importing an official-format CORA release (made here with the official key names and shapes)."""

import argparse

import pytest
import torch

from cora.cli import main
from cora.config import get_preset
from cora.checkpoint import load_checkpoint, load_into
from cora.modeling.detector import CORA


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """An official-format release of a tiny model with non-trivial weights, and that model."""
    torch.manual_seed(0)
    model = CORA.from_config(get_preset("tiny"), random_init=True).eval()
    with torch.no_grad():
        for v in model.learned_state_dict().values():
            v.add_(torch.randn_like(v) * 0.02)
        model.region_classifier.pool.prompt.zero_()  # the official form has no separate prompt ...
        pe = model.region_classifier.pool.positional_embedding
        pe.add_(torch.randn_like(pe) * 0.05)  # ... it tunes every row of the positional embedding
    learned = model.learned_state_dict()
    official = {k[len("localizer."):]: v.clone() for k, v in learned.items() if k.startswith("localizer.")}
    official.update({k[len("prematcher."):]: v.clone() for k, v in learned.items() if k.startswith("prematcher.text_proj.")})
    # The official decoder holds a second reference to the box MLPs; CLIP copies live under backbone./classifier.
    official.update({f"transformer.decoder.{k}": v.clone() for k, v in official.items() if k.startswith("bbox_embed.")})
    official["backbone.0.body.layer1.0.conv1.weight"] = torch.zeros(3)
    official["classifier.logit_scale"] = torch.zeros(())
    official["label_enc.weight"] = torch.zeros(2, 2)  # not part of CORA: reported as unused
    path = tmp_path_factory.mktemp("release")
    stale = {k: torch.zeros_like(v) for k, v in official.items()}
    torch.save({"model": stale, "model_ema": official, "args": argparse.Namespace(lr=1e-4, epochs=35)}, path / "loc.pth")
    torch.save({"attnpool.positional_embedding": pe.detach().clone()}, path / "prompt.pth")
    return model, path


def run(model, images, sizes, text):
    with torch.no_grad():
        return model(images, sizes, text)


def test_converts_and_loads_with_no_missing_keys(release, tmp_path, capsys):
    model, path = release
    code = main(["convert", "--localizer", str(path / "loc.pth"), "--prompt", str(path / "prompt.pth"),
                 "--preset", "tiny", "--out", str(tmp_path / "ckpt")])
    out = capsys.readouterr().out
    assert code == 0 and "label_enc.weight" in out and "backbone." not in out
    state, cfg = load_checkpoint(tmp_path / "ckpt")
    fresh = CORA.from_config(cfg, random_init=True).eval()
    fresh.backbone.load_state_dict(model.backbone.state_dict())
    load_into(fresh, state)  # raises on any missing / unexpected key
    images, sizes = torch.rand(1, 3, 64, 96), torch.tensor([[64, 96]])
    text = torch.nn.functional.normalize(torch.randn(4, model.backbone.embed_dim), dim=-1)
    a, b = run(model, images, sizes, text), run(fresh, images, sizes, text)  # (boxes, scores, labels) each
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_refuses_arbitrary_pickles(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"model": {}, "payload": Evil()}, tmp_path / "evil.pth")
    torch.save({"attnpool.positional_embedding": torch.zeros(5, 8)}, tmp_path / "prompt.pth")
    code = main(["convert", "--localizer", str(tmp_path / "evil.pth"), "--prompt", str(tmp_path / "prompt.pth"),
                 "--preset", "tiny", "--out", str(tmp_path / "ckpt")])
    captured = capsys.readouterr()
    assert code == 1 and "unpickled!" not in captured.out
    assert not (tmp_path / "ckpt").exists()


def test_nan_weights_are_refused_and_nothing_is_written(release, tmp_path, capsys):
    _, path = release
    loc = torch.load(path / "loc.pth", weights_only=False)
    key = next(k for k in loc["model_ema"] if k.startswith("transformer.encoder."))
    loc["model_ema"][key] = torch.full_like(loc["model_ema"][key], float("nan"))
    torch.save(loc, tmp_path / "nan.pth")
    code = main(["convert", "--localizer", str(tmp_path / "nan.pth"), "--prompt", str(path / "prompt.pth"),
                 "--preset", "tiny", "--out", str(tmp_path / "ckpt")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "holds NaN or infinite values" in err, err
    assert not (tmp_path / "ckpt").exists()
