"""The frozen CLIP ResNet of CORA: open_clip model configs, weight loading and the backbone wrapper.

    clip = build_clip("RN50", pretrained="openai")          # open_clip tag (downloads)
    clip = build_clip("RN50", weights_path="rn50.pt")       # local file: state_dict, safetensors, TorchScript
    backbone, clip = build_backbone("tiny")                  # random init (tests), logs a warning

`CLIPBackbone` splits CLIP's `ModifiedResNet` where CORA needs it: stem + layer1..3 once per image
(stride 16), layer4 per region (or on the whole map for anchor pre-matching) and the attention pool.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import os
import warnings
import zipfile

import open_clip
import torch
from open_clip.modified_resnet import ModifiedResNet
from torch import Tensor, nn

logger = logging.getLogger(__name__)


def _published_rn_config(name: str) -> dict:
    cfg = open_clip.get_model_config(name)
    # Every published ResNet CLIP (OpenAI's, open_clip's yfcc15m / cc12m) was trained with QuickGELU in
    # the text tower; open_clip's RN*.json omit it and apply it per pretrained tag instead. Loading those
    # weights into a plain-GELU text tower silently changes the text embeddings.
    cfg["quick_gelu"] = True
    return cfg


# Architecture only (open_clip's config schema); weights come from `build_clip`'s pretrained / weights_path.
CLIP_RN_CONFIGS: dict[str, dict] = {
    "RN50": _published_rn_config("RN50"),
    "RN50x4": _published_rn_config("RN50x4"),
    # Unit tests: layer3 256 ch, layer4 512 ch, attention pool 8 heads, 2x2 pool side, 64-d embeddings.
    "tiny": {
        "embed_dim": 64,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
    },
}

# Extra entries of OpenAI's TorchScript archives that are not parameters.
_OPENAI_JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def build_clip(model_name: str, pretrained: str | None = None, weights_path: str | None = None) -> open_clip.CLIP:
    """Build an open_clip ResNet CLIP (fp32, CPU) with its weights.

    Args:
        model_name: a key of `CLIP_RN_CONFIGS` ("RN50", "RN50x4", "tiny").
        pretrained: an open_clip pretrained tag (e.g. "openai"); downloaded by open_clip.
        weights_path: a local checkpoint of the whole CLIP model: a `torch.save`d state_dict (optionally
            under a "state_dict" key, "module." prefixes stripped), a `.safetensors` file, or an OpenAI
            TorchScript archive (e.g. OpenAI's RN50.pt). Loaded strictly; pickles with weights_only=True.

    With neither, the model is randomly initialised and a warning is logged (tests and shape checks only).
    Returns an `open_clip.CLIP` in eval mode.
    """
    if model_name not in CLIP_RN_CONFIGS:
        raise ValueError(f"model_name must be one of {sorted(CLIP_RN_CONFIGS)}, got {model_name!r}"
                         f"{_hint(model_name, CLIP_RN_CONFIGS)}")
    if pretrained is not None and weights_path is not None:
        raise ValueError(f"pass pretrained or weights_path, not both (got pretrained={pretrained!r}, "
                         f"weights_path={weights_path!r})")
    cfg = copy.deepcopy(CLIP_RN_CONFIGS[model_name])

    if pretrained is not None:
        tags = open_clip.list_pretrained_tags_by_model(model_name)  # [] for "tiny"
        if not isinstance(pretrained, str) or pretrained.lower().replace("-", "_") not in tags:
            if isinstance(pretrained, str) and os.path.isfile(pretrained):
                raise ValueError(f"pretrained must be an open_clip tag; for the local file {pretrained!r} "
                                 "use weights_path")
            raise ValueError(f"pretrained must be one of the open_clip tags of {model_name!r}: {tags}, "
                             f"got {pretrained!r}{_hint(pretrained, tags)}")
        model = open_clip.create_model(model_name, pretrained=pretrained, force_quick_gelu=cfg["quick_gelu"])
        return model.eval()

    model = open_clip.CLIP(**cfg)
    if weights_path is None:
        logger.warning("build_clip(%r): no pretrained weights given (pretrained=None, weights_path=None); "
                       "the model is randomly initialised", model_name)
        return model.eval()

    state_dict = _load_state_dict(weights_path)
    # Non-persistent buffers (the text causal mask) are rebuilt, not loaded; TorchScript archives carry them.
    persistent = model.state_dict().keys()
    for name, _ in model.named_buffers():
        if name not in persistent:
            state_dict.pop(name, None)
    if "logit_scale" in state_dict and state_dict["logit_scale"].shape != model.logit_scale.shape:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(model.logit_scale.shape)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise ValueError(f"weights_path {weights_path!r} does not hold a {model_name!r} CLIP: {e}") from e
    return model.eval()


def _load_state_dict(path: str) -> dict[str, Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights_path {path!r} is not a file")
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state_dict = load_file(path, device="cpu")
    elif _is_torchscript(path):
        # OpenAI's original checkpoints are TorchScript archives, which torch.load(weights_only=True) refuses.
        with warnings.catch_warnings():  # torch.jit is deprecated, but these archives exist only in its format
            warnings.simplefilter("ignore", FutureWarning)
            state_dict = torch.jit.load(path, map_location="cpu").state_dict()
        for key in _OPENAI_JIT_EXTRA_KEYS:
            state_dict.pop(key, None)
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
            state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict) or not state_dict:
        raise ValueError(f"weights_path {path!r} must hold a non-empty state_dict, got {type(state_dict).__name__}")
    if all(k.startswith("module.") for k in state_dict):  # saved from DistributedDataParallel
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in archive.namelist())


def _hint(value, choices) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    return f". Did you mean {close[0]!r}?" if close else ""


class CLIPBackbone(nn.Module):
    """CLIP's ModifiedResNet, frozen, cut into the pieces CORA uses.

    The wrapped module is shared (not copied): its parameters are set to requires_grad=False in place
    and its BatchNorms stay in eval mode whatever `train()` says (CLIP stays frozen in CORA; batch
    statistics of detection batches would corrupt it). Gradients still flow to the *inputs* of each
    piece (the region prompt is trained through layer4's output).

    Attributes (RN50 / RN50x4):
        stride: 16, the stride of `features`.
        layer3_channels: 1024 / 1280. layer4_channels: 2048 / 2560.
        pool_side: 7 / 9, the attention pool's spatial side S (positional embedding [S*S+1, layer4_channels]).
        roi_side: 2 * pool_side = 14 / 18, the RoIAlign side on layer3 (layer4 halves it).
        embed_dim: 1024 / 640, the attention pool's output dim (= the text embedding dim D).
        num_heads: 32 / 40, the attention pool's heads.
    """

    stride = 16

    def __init__(self, visual: ModifiedResNet):
        super().__init__()
        if not isinstance(visual, ModifiedResNet):
            raise TypeError(f"visual must be an open_clip ModifiedResNet (a ResNet CLIP's `.visual`), "
                            f"got {type(visual).__name__}")
        self.visual = visual
        self.requires_grad_(False)

        tokens, channels = visual.attnpool.positional_embedding.shape
        side = math.isqrt(tokens - 1)
        if side * side != tokens - 1:
            raise ValueError(f"visual.attnpool.positional_embedding must be [S*S+1, C], got [{tokens}, {channels}]")
        self.layer3_channels = visual.layer3[-1].conv3.out_channels
        self.layer4_channels = channels
        self.pool_side = side
        self.roi_side = 2 * side
        self.embed_dim = visual.attnpool.c_proj.out_features
        self.num_heads = visual.attnpool.num_heads

        # open_clip stores the pretrained tag's preprocessing on the visual tower (create_model).
        preprocess = getattr(visual, "preprocess_cfg", None) or {}
        mean = preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = preprocess.get("std", open_clip.OPENAI_DATASET_STD)
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.train(False)

    def train(self, mode: bool = True) -> CLIPBackbone:
        """Sets `self.training`; the ResNet (all its BatchNorms) always stays in eval mode."""
        super().train(mode)
        self.visual.eval()
        return self

    @property
    def attnpool(self) -> nn.Module:
        """open_clip's `AttentionPool2d`: Tensor[N, layer4_channels, S, S] -> Tensor[N, embed_dim]."""
        return self.visual.attnpool

    def normalize(self, images: Tensor) -> Tensor:
        """Tensor[B, 3, H, W] RGB in [0, 1] -> CLIP-normalised Tensor[B, 3, H, W] (same dtype)."""
        self._check_images(images, "images")
        return (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)

    def features(self, images_normalized: Tensor) -> Tensor:
        """Stem + layer1..3: Tensor[B, 3, H, W] (normalised) -> Tensor[B, layer3_channels, H/16, W/16].

        Sizes are floored by the strided layers; multiples of 32 keep every later map exact. The map comes
        out channels-last (convolutions keep their input's memory format): the RoIAlign kernels' fast path,
        and layer4 on the regions runs ~1.4x faster on CPU (oneDNN) in that format than in NCHW.
        """
        self._check_images(images_normalized, "images_normalized")
        v = self.visual
        x = images_normalized.contiguous(memory_format=torch.channels_last)
        return v.layer3(v.layer2(v.layer1(v.stem(x))))

    def layer4(self, x: Tensor) -> Tensor:
        """CLIP's layer4 on regions: Tensor[N, layer3_channels, S, S] -> Tensor[N, layer4_channels, S/2, S/2]."""
        self._check_layer3(x, "x")
        return self.visual.layer4(x)

    def layer4_map(self, features: Tensor) -> Tensor:
        """layer4 on whole maps: Tensor[B, layer3_channels, H/16, W/16] -> Tensor[B, layer4_channels, H/32, W/32]."""
        self._check_layer3(features, "features")
        return self.visual.layer4(features)

    def forward(self, images: Tensor) -> Tensor:
        """Tensor[B, 3, H, W] RGB in [0, 1] -> layer3 features Tensor[B, layer3_channels, H/16, W/16]."""
        return self.features(self.normalize(images))

    @staticmethod
    def _check_images(images, name: str) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            got = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"{name} must be Tensor[B, 3, H, W], got {got}")
        if not images.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {images.dtype}")

    def _check_layer3(self, x, name: str) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.layer3_channels:
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be Tensor[N, {self.layer3_channels}, h, w] (layer3 features), got {got}")


def build_backbone(model_name: str, pretrained: str | None = None,
                   weights_path: str | None = None) -> tuple[CLIPBackbone, open_clip.CLIP]:
    """`build_clip` + `CLIPBackbone(clip.visual)`. The backbone shares (and freezes) the CLIP's visual tower."""
    clip = build_clip(model_name, pretrained=pretrained, weights_path=weights_path)
    return CLIPBackbone(clip.visual), clip
