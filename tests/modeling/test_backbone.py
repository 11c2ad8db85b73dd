import contextlib
import logging

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from torchvision.transforms import Normalize

from cora.modeling.backbone import CLIP_RN_CONFIGS, CLIPBackbone, build_backbone, build_clip

LOGGER = "cora.modeling.backbone"


@contextlib.contextmanager
def captured(logger_name):
    """Records of one logger (works with `-p no:logging`, where pytest's caplog is unavailable)."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def randomize(model, seed=0):
    """Random BatchNorm statistics and affine parameters: a fresh CLIP's are identity-like (and bn3 = 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    with captured(LOGGER):
        backbone, clip = build_backbone("tiny")
    randomize(clip)
    return backbone, clip


def test_pieces_equal_open_clip_visual(tiny):
    backbone, clip = tiny
    visual = clip.visual
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    x = Normalize(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)(images)
    torch.testing.assert_close(backbone.normalize(images), x)
    with torch.no_grad():
        ref3 = visual.layer3(visual.layer2(visual.layer1(visual.stem(x))))
        ref4 = visual.layer4(ref3)
        feats = backbone.features(backbone.normalize(images))
        # features run channels-last: the same convolutions, summed in another order (float32 rounding).
        assert feats.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(feats, ref3, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(backbone(images), ref3, rtol=1e-5, atol=1e-6)
        assert feats.shape == (2, backbone.layer3_channels, 64 // 16, 96 // 16)
        l4 = backbone.layer4_map(feats)
        torch.testing.assert_close(l4, ref4, rtol=1e-5, atol=1e-6)
        assert l4.shape == (2, backbone.layer4_channels, 2, 3)
        # Regions of the pool's side go through layer4 and the attention pool exactly like CLIP's image path.
        square = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
        xs = backbone.normalize(square)
        pooled = backbone.attnpool(backbone.layer4(backbone.features(xs)))
        torch.testing.assert_close(pooled, visual(xs), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pooled, clip.encode_image(xs), rtol=1e-5, atol=1e-6)
    assert backbone.attnpool is visual.attnpool


def test_tiny_attributes(tiny):
    backbone, clip = tiny
    assert backbone.stride == 16
    assert (backbone.layer3_channels, backbone.layer4_channels) == (256, 512)
    assert (backbone.pool_side, backbone.roi_side) == (2, 4)
    assert backbone.embed_dim == 64 == clip.text_projection.shape[1]
    assert backbone.num_heads == 8


def test_frozen_and_batchnorm_stays_eval(tiny):
    backbone, clip = tiny
    assert all(not p.requires_grad for p in backbone.parameters())
    assert all(not p.requires_grad for p in clip.visual.parameters())
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = backbone(images)
    stats = [m.running_mean.clone() for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    parent = torch.nn.ModuleDict({"backbone": backbone})  # train() reaching it through a parent module
    for module in (backbone, parent):
        module.train()
        assert backbone.training
        assert not any(m.training for m in backbone.visual.modules())
        with torch.no_grad():
            torch.testing.assert_close(backbone(images), ref, rtol=0, atol=0)
    after = [m.running_mean for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(stats, after))
    backbone.eval()
    assert not backbone.training


def test_gradients_reach_inputs_only(tiny):
    backbone, _ = tiny
    regions = torch.randn(3, backbone.layer3_channels, 4, 4, requires_grad=True)
    backbone.layer4(regions).sum().backward()
    assert regions.grad is not None and regions.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


def test_input_checks(tiny):
    backbone, _ = tiny
    with pytest.raises(ValueError, match=r"images must be Tensor\[B, 3, H, W\], got \[3, 64, 64\]"):
        backbone.normalize(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="images_normalized must be a floating-point"):
        backbone.features(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"x must be Tensor\[N, 256, h, w\]"):
        backbone.layer4(torch.rand(2, 512, 4, 4))
    with pytest.raises(ValueError, match=r"features must be Tensor\[N, 256, h, w\]"):
        backbone.layer4_map(torch.rand(256, 4, 4))
    with pytest.raises(TypeError, match="visual must be an open_clip ModifiedResNet"):
        CLIPBackbone(torch.nn.Conv2d(3, 3, 1))


def test_random_init_warns():
    with captured(LOGGER) as records:
        clip = build_clip("tiny")
    assert isinstance(clip, open_clip.CLIP) and not clip.training
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "randomly initialised" in warnings[0].getMessage()


def test_name_and_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"model_name must be one of \['RN50', 'RN50x4', 'tiny'\].*Did you mean 'RN50'"):
        build_clip("RN5O")
    with pytest.raises(ValueError, match=r"Did you mean 'RN50x4'"):
        build_backbone("rn50x4")
    with pytest.raises(ValueError, match="not both"):
        build_clip("tiny", pretrained="openai", weights_path="x.pt")
    with pytest.raises(ValueError, match=r"pretrained must be one of the open_clip tags of 'RN50'.*openai.*"
                                         r"Did you mean 'openai'"):
        build_clip("RN50", pretrained="opnai")
    with pytest.raises(ValueError, match=r"tags of 'tiny': \[\]"):
        build_clip("tiny", pretrained="openai")
    local = tmp_path / "w.pt"
    local.write_bytes(b"")
    with pytest.raises(ValueError, match="use weights_path"):
        build_clip("tiny", pretrained=str(local))
    with pytest.raises(FileNotFoundError, match="weights_path"):
        build_clip("tiny", weights_path=str(tmp_path / "missing.pt"))


def _outputs(clip):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    tokens = open_clip.get_tokenizer("RN50")(["a photo of a cat.", "a dog"])
    with torch.no_grad():
        return clip.encode_image(images), clip.encode_text(tokens)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", ["torch", "torch_wrapped", "safetensors", "torchscript"])
def test_local_weights_round_trip(tmp_path, fmt):
    torch.manual_seed(5)
    with captured(LOGGER):
        source = randomize(build_clip("tiny"), seed=5)
    with torch.no_grad():
        source.logit_scale.fill_(3.0)
    state = source.state_dict()
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pt")
    if fmt == "torch":
        torch.save(state, path)
    elif fmt == "torch_wrapped":  # DistributedDataParallel training checkpoint
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    elif fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:  # OpenAI's checkpoints are TorchScript archives
        torch.jit.script(source).save(str(path))

    torch.manual_seed(6)  # a different random init underneath
    with captured(LOGGER) as records:
        loaded = build_clip("tiny", weights_path=str(path))
    assert not records
    for key, value in state.items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    for got, want in zip(_outputs(loaded), _outputs(source)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_local_weights_of_another_model(tmp_path):
    torch.manual_seed(7)
    with captured(LOGGER):
        state = build_clip("tiny").state_dict()
    state["visual.attnpool.positional_embedding"] = torch.zeros(50, 512)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"(?s)does not hold a 'tiny' CLIP.*positional_embedding"):
        build_clip("tiny", weights_path=str(tmp_path / "bad.pt"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="must hold a non-empty state_dict, got list"):
        build_clip("tiny", weights_path=str(tmp_path / "list.pt"))


def test_published_configs():
    for name in ("RN50", "RN50x4"):
        cfg = dict(CLIP_RN_CONFIGS[name])
        assert cfg.pop("quick_gelu") is True
        assert cfg == open_clip.get_model_config(name)


def test_rn50_builds_offline_with_its_shapes():
    with captured(LOGGER):
        backbone, clip = build_backbone("RN50")
    assert isinstance(clip, open_clip.CLIP)
    assert (backbone.layer3_channels, backbone.layer4_channels) == (1024, 2048)
    assert (backbone.pool_side, backbone.roi_side, backbone.embed_dim, backbone.num_heads) == (7, 14, 1024, 32)
    with torch.no_grad():
        feats = backbone(torch.rand(1, 3, 64, 96))
        assert feats.shape == (1, 1024, 4, 6)
        assert backbone.layer4_map(feats).shape == (1, 2048, 2, 3)


def test_rn50x4_shapes():
    cfg = CLIP_RN_CONFIGS["RN50x4"]
    vision = open_clip.CLIPVisionCfg(**cfg["vision_cfg"])
    visual = open_clip.modified_resnet.ModifiedResNet(  # open_clip's vision tower for this config, text tower skipped
        vision.layers, cfg["embed_dim"], vision.width * 32 // vision.head_width, vision.image_size, vision.width)
    backbone = CLIPBackbone(visual)
    assert (backbone.layer3_channels, backbone.layer4_channels) == (1280, 2560)
    assert (backbone.pool_side, backbone.roi_side, backbone.embed_dim, backbone.num_heads) == (9, 18, 640, 40)


def test_pretrained_tag_goes_through_open_clip(monkeypatch):
    calls = []

    def create_model(name, **kwargs):  # stands in for the download
        calls.append((name, kwargs))
        return open_clip.CLIP(**CLIP_RN_CONFIGS["tiny"]).train()

    monkeypatch.setattr(open_clip, "create_model", create_model)
    clip = build_clip("RN50", pretrained="OpenAI")
    assert calls == [("RN50", {"pretrained": "OpenAI", "force_quick_gelu": True})]
    assert not clip.training
