"""cora.modeling.region_classifier against open_clip's own pieces (torchvision RoIAlign, layer4, attnpool)."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision

from cora.modeling.backbone import build_backbone
from cora.modeling.region_classifier import RegionClassifier

BOX_COUNTS = (3, 0, 4)  # boxes per image; image 1 has none


def tiny_backbone(dtype):
    """The tiny random CLIP with non-trivial BatchNorms (open_clip zero-inits each block's bn3)."""
    torch.manual_seed(0)
    backbone, clip = build_backbone("tiny")
    with torch.no_grad():
        for m in clip.visual.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        clip.visual.attnpool.q_proj.bias.normal_(0.0, 0.1)  # biases that matter
        clip.visual.attnpool.v_proj.bias.normal_(0.0, 0.1)
    return backbone.to(dtype), clip.visual


@pytest.fixture(scope="module")
def setup():
    backbone, visual = tiny_backbone(torch.float64)
    g = torch.Generator().manual_seed(1)
    # A random (non-negative, as after ReLU) layer3 map of 128 x 96 images: the tiny random CLIP's own maps
    # are nearly constant over space, which would hide box-placement errors.
    features = torch.randn(len(BOX_COUNTS), backbone.layer3_channels, 6, 8, generator=g, dtype=torch.float64).relu()
    with torch.no_grad():
        images = torch.rand(len(BOX_COUNTS), 3, 96, 128, generator=g, dtype=torch.float64)
        assert backbone.features(backbone.normalize(images)).shape == features.shape
    boxes = []
    for n in BOX_COUNTS:  # pixel xyxy, some reaching past the 128 x 96 image
        xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([128.0, 96.0], dtype=torch.float64)
        wh = 4 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 60
        boxes.append(torch.cat([xy - 10, xy + wh], dim=1))
    text = torch.randn(5, backbone.embed_dim, generator=g, dtype=torch.float64)
    side, channels = backbone.pool_side, backbone.layer4_channels
    prompt = torch.randn(side, side, channels, generator=g, dtype=torch.float64) * 0.5
    return backbone, visual, features, boxes, text, prompt


def reference_embeddings(backbone, visual, features, boxes, prompt):
    """One box at a time: torchvision RoIAlign -> visual.layer4 -> visual.attnpool(x + P) -> normalise."""
    rows = []
    with torch.no_grad():
        for i, image_boxes in enumerate(boxes):
            for box in image_boxes:
                crop = torchvision.ops.roi_align(features[i:i + 1], [box[None]], backbone.roi_side, 1 / 16,
                                                 sampling_ratio=-1, aligned=True)
                x = visual.layer4(crop) + prompt.permute(2, 0, 1)[None]
                rows.append(F.normalize(visual.attnpool(x), dim=-1)[0])
    return torch.stack(rows)


def make_classifier(backbone, prompt, dtype=torch.float64):
    classifier = RegionClassifier(backbone).to(dtype)
    classifier.load_prompt(prompt.to(dtype))
    return classifier


def test_matches_open_clip_pieces_float64(setup):
    backbone, visual, features, boxes, text, prompt = setup
    classifier = make_classifier(backbone, prompt)
    expected_emb = reference_embeddings(backbone, visual, features, boxes, prompt)
    expected = 100 * expected_emb @ F.normalize(text, dim=-1).T
    logits = classifier(features, boxes, text)
    assert logits.shape == (sum(BOX_COUNTS), len(text)) and logits.dtype == torch.float64
    torch.testing.assert_close(classifier.region_embeddings(features, boxes), expected_emb, rtol=0, atol=1e-10)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-8)
    # The prompt matters: without it the logits differ.
    assert (RegionClassifier(backbone).double()(features, boxes, text) - expected).abs().max() > 1e-2


def test_float32_within_tolerance(setup):
    backbone64, visual64, features, boxes, text, prompt = setup
    backbone32, _ = tiny_backbone(torch.float32)
    classifier = make_classifier(backbone32, prompt, torch.float32)
    logits = classifier(features.float(), [b.float() for b in boxes], text.float())
    assert logits.dtype == torch.float32
    expected = 100 * reference_embeddings(backbone64, visual64, features, boxes, prompt) @ F.normalize(text, dim=-1).T
    torch.testing.assert_close(logits.double(), expected, rtol=0, atol=2e-3)


def test_temperature_no_boxes_and_gradient_to_prompt(setup):
    backbone, _, features, boxes, text, prompt = setup
    classifier = make_classifier(backbone, prompt)
    empty = classifier(features, [b[:0] for b in boxes], text)
    assert empty.shape == (0, len(text))
    scaled = RegionClassifier(backbone, temperature=10.0).double()
    scaled.load_prompt(prompt)
    torch.testing.assert_close(scaled(features, boxes, text) * 10, classifier(features, boxes, text))
    classifier(features, boxes, text).logsumexp(dim=1).sum().backward()
    assert classifier.pool.prompt.grad is not None and classifier.pool.prompt.grad.abs().max() > 0
    assert all(p.grad is None for p in backbone.parameters())
    assert [n for n, p in classifier.named_parameters() if p.requires_grad] == ["pool.prompt"]


def test_paper_and_official_prompt_forms_agree(setup):
    backbone, visual, features, boxes, text, prompt = setup
    pe = visual.attnpool.positional_embedding.detach()
    tokens = prompt.reshape(-1, prompt.shape[-1])
    official = pe + torch.cat([tokens.mean(dim=0, keepdim=True), tokens])  # [S*S+1, C]
    paper = make_classifier(backbone, prompt)
    from_official = RegionClassifier(backbone).double()
    from_official.load_prompt(official)
    assert from_official.pool.prompt.abs().max() == 0
    torch.testing.assert_close(from_official(features, boxes, text), paper(features, boxes, text), rtol=0, atol=1e-9)
    torch.testing.assert_close(paper.effective_positional_embedding(), official, rtol=0, atol=1e-12)
    torch.testing.assert_close(from_official.effective_positional_embedding(), official, rtol=0, atol=0)
    # The equivalence itself, with open_clip: pooling x with pe' equals pooling x + P with pe.
    pool = copy.deepcopy(visual.attnpool)
    with torch.no_grad():
        pool.positional_embedding.copy_(official)
        x = torch.randn(3, backbone.layer4_channels, backbone.pool_side, backbone.pool_side, dtype=torch.float64)
        torch.testing.assert_close(pool(x), visual.attnpool(x + prompt.permute(2, 0, 1)[None]), rtol=0, atol=1e-10)
    # Loading the paper form afterwards resets the positional embedding to CLIP's.
    from_official.load_prompt(prompt)
    torch.testing.assert_close(from_official(features, boxes, text), paper(features, boxes, text), rtol=0, atol=1e-9)


def test_official_form_with_freely_tuned_row_0_is_kept_exactly(setup):
    """The official code fine-tunes every row of pe', row 0 included: no prompt P represents that."""
    backbone, visual, features, boxes, text, _ = setup
    pe = visual.attnpool.positional_embedding.detach()
    official = pe + 0.05 * torch.randn(pe.shape, dtype=pe.dtype, generator=torch.Generator().manual_seed(3))
    classifier = RegionClassifier(backbone).double()
    classifier.load_prompt(official)
    reference_pool = copy.deepcopy(visual.attnpool)
    with torch.no_grad():
        reference_pool.positional_embedding.copy_(official)
        regions = torchvision.ops.roi_align(features, boxes, backbone.roi_side, 1 / backbone.stride, -1, True)
        emb = torch.nn.functional.normalize(reference_pool(visual.layer4(regions)), dim=-1)
        expected = 100 * emb @ torch.nn.functional.normalize(text, dim=-1).T
    torch.testing.assert_close(classifier(features, boxes, text), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("shape", [(2, 2, 511), (2, 2), (4, 512), (6, 512), (5, 511), (1, 2, 2, 512)])
def test_load_prompt_wrong_shapes_raise(setup, shape):
    classifier = RegionClassifier(setup[0]).double()
    with pytest.raises(ValueError, match=r"load_prompt: state must be the prompt Tensor\[S, S, C\] = \[2, 2, 512\]"):
        classifier.load_prompt(torch.zeros(shape, dtype=torch.float64))


def test_load_prompt_bad_values_raise(setup):
    classifier = RegionClassifier(setup[0]).double()
    with pytest.raises(ValueError, match="floating-point Tensor"):
        classifier.load_prompt([[0.0]])
    with pytest.raises(ValueError, match="floating-point Tensor"):
        classifier.load_prompt(torch.zeros(2, 2, 512, dtype=torch.int64))
    bad = torch.zeros(2, 2, 512, dtype=torch.float64)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        classifier.load_prompt(bad)


def test_bad_inputs_raise(setup):
    backbone, _, features, boxes, text, _ = setup
    classifier = RegionClassifier(backbone).double()
    with pytest.raises(ValueError, match=r"features must be the layer3 map Tensor\[B, 256, h, w\], got \[3, 255"):
        classifier(features[:, :255], boxes, text)
    with pytest.raises(ValueError, match=r"boxes must be a list of B = 3 Tensor\[N_i, 4\].*length 2"):
        classifier(features, boxes[:2], text)
    with pytest.raises(ValueError, match=r"boxes\[0\] must be Tensor\[L, 4\]"):
        classifier(features, [boxes[0][:, :3], boxes[1], boxes[2]], text)
    with pytest.raises(ValueError, match=r"text_embeddings must be Tensor\[K, 64\]"):
        classifier(features, boxes, text[:, :63])
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        RegionClassifier(backbone, temperature=0.0)
