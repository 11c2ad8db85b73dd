"""cora.modeling.prematch against a loop over anchors (torchvision RoIAlign + open_clip attnpool + softmax)."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from cora.modeling.backbone import build_backbone
from cora.modeling.mlp import MLP
from cora.modeling.prematch import AnchorPreMatcher
from cora.ops import PromptedAttentionPool

PADDED = (128, 160)                   # (H, W) of the padded batch
IMAGE_SIZES = ((128, 160), (96, 100))  # (h, w) un-padded; image 1 is smaller than the padding
NUM_ANCHORS = 20


def tiny_setup(dtype):
    """Tiny random CLIP, a layer4 map of its shape, a random prompt, a pre-matcher."""
    torch.manual_seed(0)
    backbone, clip = build_backbone("tiny")
    visual = clip.visual
    backbone.to(dtype)
    pool = PromptedAttentionPool(backbone.attnpool).to(dtype)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        pool.prompt.copy_(torch.randn(pool.prompt.shape, generator=g, dtype=torch.float64) * 0.5)  # same in both dtypes
        images = torch.rand(len(IMAGE_SIZES), 3, *PADDED, generator=g, dtype=torch.float64).to(dtype)
        real_map = backbone.layer4_map(backbone.features(backbone.normalize(images)))  # [2, 512, 4, 5]
    # A random non-negative map of that shape: the tiny random CLIP's own maps are nearly constant over
    # space, which would hide box-placement errors.
    layer4_map = torch.randn(real_map.shape, generator=g, dtype=torch.float64).relu().to(dtype)
    matcher = AnchorPreMatcher(backbone, pool, text_dim=backbone.embed_dim).to(dtype)
    return backbone, visual, pool, matcher, layer4_map


@pytest.fixture(scope="module")
def setup64():
    return tiny_setup(torch.float64)


@pytest.fixture(scope="module")
def setup32():
    return tiny_setup(torch.float32)


def random_inputs(num_classes, dtype, num_anchors=NUM_ANCHORS, seed=2):
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(num_anchors, 2, generator=g, dtype=dtype)
    sizes = 0.05 + 0.9 * torch.rand(num_anchors, 2, generator=g, dtype=dtype)  # some reach past the image
    anchors = torch.cat([centers, sizes], dim=1)
    text = torch.randn(num_classes, 64, generator=g, dtype=dtype)
    return anchors, torch.tensor(IMAGE_SIZES), text


def reference(visual, prompt, layer4_map, anchors, image_sizes, text, class_prior=None):
    """Per image, per anchor: box in pixels -> RoIAlign -> attnpool(x + P) -> cosine -> softmax -> argmax."""
    text = F.normalize(text, dim=-1)
    prior = torch.ones(len(text), dtype=text.dtype) if class_prior is None else class_prior
    classes, scores, probs = [], [], []
    with torch.no_grad():
        for b, (h, w) in enumerate(image_sizes.tolist()):
            for cx, cy, bw, bh in anchors.tolist():
                box = torch.tensor([[(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]],
                                   dtype=layer4_map.dtype)
                crop = torchvision.ops.roi_align(layer4_map[b:b + 1], [box], 2, 1 / 32, sampling_ratio=-1, aligned=True)
                v = visual.attnpool(crop + prompt.permute(2, 0, 1)[None])[0]
                cos = F.normalize(v, dim=-1) @ text.T
                p = torch.softmax(torch.cat([100 * cos, cos.new_zeros(1)]), dim=0)[:-1]
                c = int(torch.argmax(p * prior))
                classes.append(c)
                scores.append(p[c])
                probs.append(p)
    batch, queries = len(image_sizes), len(anchors)
    return (torch.tensor(classes).view(batch, queries), torch.stack(scores).view(batch, queries),
            torch.stack(probs).view(batch, queries, -1))


def test_matches_reference_loop_float64(setup64):
    backbone, visual, pool, matcher, layer4_map = setup64
    anchors, image_sizes, text = random_inputs(7, torch.float64)
    out = matcher(layer4_map, anchors, image_sizes, PADDED, text)
    classes, scores, _ = reference(visual, pool.prompt.detach(), layer4_map, anchors, image_sizes, text)
    assert set(out) == {"classes", "content_queries", "scores"}
    assert out["classes"].dtype == torch.int64
    torch.testing.assert_close(out["classes"], classes, rtol=0, atol=0)
    torch.testing.assert_close(out["scores"], scores, rtol=0, atol=1e-10)
    assert len(out["classes"].unique()) > 1  # a meaningful comparison: not every anchor on one class
    # Anchors are scaled by each image's un-padded size: with the padded size, image 1's regions differ.
    _, _, probs = reference(visual, pool.prompt.detach(), layer4_map, anchors, image_sizes, text)
    padded = torch.tensor([PADDED, PADDED])
    _, _, padded_probs = reference(visual, pool.prompt.detach(), layer4_map, anchors, padded, text)
    torch.testing.assert_close(padded_probs[0], probs[0], rtol=0, atol=0)
    assert (padded_probs[1] - probs[1]).abs().max() > 1e-3


def test_content_queries_gather_text_proj(setup64):
    _, _, pool, matcher, layer4_map = setup64
    anchors, image_sizes, text = random_inputs(7, torch.float64)
    out = matcher(layer4_map, anchors, image_sizes, PADDED, text)
    expected = matcher.text_proj(text)[out["classes"]]  # [B, Q, 256]
    assert out["content_queries"].shape == (2, NUM_ANCHORS, 256)
    torch.testing.assert_close(out["content_queries"], expected, rtol=0, atol=0)
    # Gradients reach text_proj only (matching runs without gradient).
    out["content_queries"].square().sum().backward()
    assert matcher.text_proj.layers[0].weight.grad is not None and pool.prompt.grad is None
    assert not out["scores"].requires_grad
    matcher.zero_grad(set_to_none=True)


def test_class_prior(setup64):
    _, visual, pool, matcher, layer4_map = setup64
    anchors, image_sizes, text = random_inputs(7, torch.float64)
    _, _, probs = reference(visual, pool.prompt.detach(), layer4_map, anchors, image_sizes, text)
    plain = matcher(layer4_map, anchors, image_sizes, PADDED, text)
    # A huge prior on one class makes every anchor pick it (scores stay the unweighted probability).
    huge = torch.ones(7, dtype=torch.float64)
    huge[3] = 1e200
    out = matcher(layer4_map, anchors, image_sizes, PADDED, text, class_prior=huge)
    assert (out["classes"] == 3).all()
    torch.testing.assert_close(out["scores"], probs[..., 3], rtol=0, atol=1e-10)
    # Zero prior on the most frequent winner moves its anchors to their runner-up class; others keep theirs.
    winner = int(plain["classes"].flatten().mode().values)
    zero = torch.ones(7, dtype=torch.float64)
    zero[winner] = 0.0
    out = matcher(layer4_map, anchors, image_sizes, PADDED, text, class_prior=zero)
    runner_up = probs.topk(2, dim=-1).indices[..., 1]
    moved = plain["classes"] == winner
    assert moved.any() and (~moved).any()
    torch.testing.assert_close(out["classes"], torch.where(moved, runner_up, plain["classes"]), rtol=0, atol=0)
    # A prior matching the reference's weighted argmax.
    prior = torch.linspace(0.5, 8.0, 7, dtype=torch.float64)
    classes, scores, _ = reference(visual, pool.prompt.detach(), layer4_map, anchors, image_sizes, text, prior)
    out = matcher(layer4_map, anchors, image_sizes, PADDED, text, class_prior=prior)
    torch.testing.assert_close(out["classes"], classes, rtol=0, atol=0)
    torch.testing.assert_close(out["scores"], scores, rtol=0, atol=1e-10)


@pytest.mark.parametrize("num_classes", [1, 2, 65, 1203])
def test_any_vocabulary_size(setup32, num_classes):
    _, _, _, matcher, layer4_map = setup32
    anchors, image_sizes, text = random_inputs(num_classes, torch.float32)
    out = matcher(layer4_map, anchors, image_sizes, PADDED, text)
    assert out["classes"].shape == (2, NUM_ANCHORS) and out["classes"].dtype == torch.int64
    assert out["scores"].shape == (2, NUM_ANCHORS) and out["scores"].dtype == torch.float32
    assert out["content_queries"].shape == (2, NUM_ANCHORS, 256) and out["content_queries"].dtype == torch.float32
    assert ((out["classes"] >= 0) & (out["classes"] < num_classes)).all()
    assert ((out["scores"] > 0) & (out["scores"] <= 1)).all()
    if num_classes == 1:
        assert (out["classes"] == 0).all()


def test_float32_agrees_with_float64_and_handles_1000_anchors(setup32, setup64):
    _, _, _, matcher32, layer4_map32 = setup32
    _, _, _, matcher64, layer4_map64 = setup64
    anchors, image_sizes, text = random_inputs(5, torch.float64, num_anchors=1000)
    out64 = matcher64(layer4_map64, anchors, image_sizes, PADDED, text)
    out32 = matcher32(layer4_map32, anchors.float(), image_sizes, PADDED, text.float())
    assert out32["classes"].shape == (2, 1000) and out32["content_queries"].shape == (2, 1000, 256)
    # Equal classes except where two classes' probabilities are within float32 rounding.
    agree = (out32["classes"] == out64["classes"]).float().mean()
    assert agree > 0.99, agree
    torch.testing.assert_close(out32["scores"].double(), out64["scores"], rtol=0, atol=1e-3)


def test_text_proj_official_names_and_mlp():
    mlp = MLP(64, 128, 256, 2)
    assert [type(m) for m in mlp.layers] == [torch.nn.Linear, torch.nn.Linear]
    x = torch.randn(3, 64)
    torch.testing.assert_close(mlp(x), mlp.layers[1](F.relu(mlp.layers[0](x))))
    assert len(MLP(4, 8, 2, 3).layers) == 3 and MLP(4, 8, 2, 1)(torch.zeros(5, 4)).shape == (5, 2)
    with pytest.raises(ValueError, match="num_layers must be an int >= 1"):
        MLP(4, 8, 2, 0)
    with pytest.raises(ValueError, match="hidden_dim must be a positive int"):
        MLP(4, 0, 2, 2)
    torch.manual_seed(0)
    backbone, _ = build_backbone("tiny")
    matcher = AnchorPreMatcher(backbone, PromptedAttentionPool(backbone.attnpool), text_dim=64)
    shapes = {k: tuple(v.shape) for k, v in matcher.state_dict().items() if k.startswith("text_proj")}
    # tgxs002/CORA models/fast_detr.py: self.text_proj = MLP(text_dim, condition_bottleneck (128), hidden_dim, 2)
    assert shapes == {"text_proj.layers.0.weight": (128, 64), "text_proj.layers.0.bias": (128,),
                      "text_proj.layers.1.weight": (256, 128), "text_proj.layers.1.bias": (256,)}


def test_bad_inputs_raise(setup32):
    backbone, _, pool, matcher, layer4_map = setup32
    anchors, image_sizes, text = random_inputs(3, torch.float32)
    cases = [
        ((layer4_map[:, :511], anchors, image_sizes, PADDED, text), r"layer4_map must be Tensor\[B, 512, H/32, W/32\]"),
        ((layer4_map, anchors[:, :3], image_sizes, PADDED, text), r"anchors must be Tensor\[Q, 4\]"),
        ((layer4_map, anchors, image_sizes[:1], PADDED, text), r"image_sizes must be Tensor\[B, 2\] = \[2, 2\]"),
        ((layer4_map, anchors, image_sizes, 128, text), r"padded_size must be a pair"),
        ((layer4_map, anchors, image_sizes, (96, 160), text), r"image_sizes\[0\] = \[128, 160\] must be positive"),
        ((layer4_map, anchors, image_sizes, PADDED, text[:, :63]), r"text_embeddings must be Tensor\[K, 64\] with K"),
        ((layer4_map, anchors, image_sizes, PADDED, text[:0]), r"text_embeddings must be Tensor\[K, 64\] with K"),
        ((layer4_map, anchors, image_sizes, PADDED, text, torch.ones(4)), r"class_prior must be Tensor\[K\] = \[3\]"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            matcher(*args)
    with pytest.raises(ValueError, match="text_dim must equal the attention pool's output dim 64"):
        AnchorPreMatcher(backbone, pool, text_dim=32)
    with pytest.raises(ValueError, match="pool must be a cora.ops.PromptedAttentionPool"):
        AnchorPreMatcher(backbone, backbone.attnpool, text_dim=64)
