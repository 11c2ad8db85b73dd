"""The CORA detector end to end on the tiny preset (random weights, CPU)."""

import pytest
import torch

from cora.config import get_preset
from cora.checkpoint import load_checkpoint, load_into, save_checkpoint
from cora.modeling.detector import CORA, padding_mask


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CORA.from_config(get_preset("tiny"), random_init=True).eval()


def text(k, dim, seed=0):
    t = torch.randn(k, dim, generator=torch.Generator().manual_seed(seed))
    return t / t.norm(dim=-1, keepdim=True)


def test_forward_shapes_through_every_stage(model):
    cfg = get_preset("tiny")
    images = torch.rand(2, 3, 96, 128)
    sizes = torch.tensor([[96, 128], [70, 100]])
    out = model.predict_raw(images, sizes, text(5, model.backbone.embed_dim))
    layers, q = cfg.localizer.num_decoder_layers, cfg.localizer.num_queries
    assert out["boxes"].shape == (layers, 2, q, 4) and out["objectness"].shape == (layers, 2, q)
    assert out["classes"].shape == (2, q) and out["classes"].dtype == torch.int64
    assert out["class_logits"].shape == (2, q, 5)
    assert ((out["boxes"] > 0) & (out["boxes"] < 1)).all()
    assert (out["class_logits"].abs() <= cfg.temperature + 1e-3).all()  # temperature * cosine


@pytest.mark.parametrize("k", [1, 2, 65, 1203])
def test_any_vocabulary_size(model, k):
    (det,) = model.detect([torch.rand(3, 90, 120)], text_embeddings=text(k, model.backbone.embed_dim))
    assert det["boxes"].shape[1] == 4 and det["labels"].max() < k
    assert len(det["scores"]) <= get_preset("tiny").inference.max_detections


def test_detect_with_names_and_boxes_in_original_pixels(model):
    images = [torch.rand(3, 300, 200), torch.rand(3, 64, 500)]
    dets = model.detect(images, vocabulary="cat,dog,traffic light")
    for img, det in zip(images, dets):
        h, w = img.shape[1:]
        assert (det["boxes"][:, [0, 2]] <= w).all() and (det["boxes"][:, [1, 3]] <= h).all()
        assert (det["boxes"] >= 0).all() and det["labels"].max() < 3


def test_class_prior_reaches_prematching(model):
    images, sizes = torch.rand(1, 3, 96, 96), torch.tensor([[96, 96]])
    t = text(3, model.backbone.embed_dim)
    prior = torch.tensor([0.0, 0.0, 1.0])
    out = model.predict_raw(images, sizes, t, class_prior=prior)
    assert (out["classes"] == 2).all()


def test_forward_is_predict_raw_then_scoring(model):
    """forward (the exported graph) = predict_raw + cora.modeling.scoring on the last layer's boxes in pixels."""
    from cora.modeling.scoring import boxes_to_pixels, detections

    images, sizes = torch.rand(2, 3, 96, 128), torch.tensor([[96, 128], [70, 100]])
    t = text(9, model.backbone.embed_dim)
    with torch.no_grad():
        boxes, scores, labels = model(images, sizes, t)
        raw = model.predict_raw(images, sizes, t)
    ic = model.cfg.inference
    ref = detections(raw["class_logits"], raw["objectness"][-1], boxes_to_pixels(raw["boxes"][-1], sizes),
                     score_threshold=ic.score_threshold, nms_iou=ic.nms_iou, max_detections=ic.max_detections,
                     pre_nms_topk=ic.pre_nms_topk)
    assert torch.equal(labels, ref[2]) and torch.equal(boxes, ref[0]) and torch.equal(scores, ref[1])
    assert boxes.shape == (2, ic.max_detections, 4) and (labels >= 0).any()


def test_padding_mask():
    mask = padding_mask(torch.tensor([[32, 48]]), (3, 4), 16)
    expected = torch.tensor([[[0, 0, 0, 1], [0, 0, 0, 1], [1, 1, 1, 1]]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_save_load_round_trip_is_exact(model, tmp_path):
    with torch.no_grad():
        for p in model.learned_state_dict().values():
            p.add_(torch.randn_like(p) * 0.01)  # not the initial values
    save_checkpoint(tmp_path / "ckpt", model.learned_state_dict(), model.cfg)
    state, cfg = load_checkpoint(tmp_path / "ckpt")
    assert cfg == model.cfg
    torch.manual_seed(1)
    fresh = CORA.from_config(cfg, random_init=True).eval()
    fresh.backbone.load_state_dict(model.backbone.state_dict())  # same (random) CLIP weights
    load_into(fresh, state)
    images, sizes, t = torch.rand(1, 3, 64, 96), torch.tensor([[64, 96]]), text(4, model.backbone.embed_dim)
    a, b = model.predict_raw(images, sizes, t), fresh.predict_raw(images, sizes, t)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not list(tmp_path.joinpath("ckpt").glob("*.tmp"))


def test_bad_input(model):
    with pytest.raises(ValueError, match="exactly one of vocabulary"):
        model.detect([torch.rand(3, 64, 64)])
    with pytest.raises(ValueError, match=r"images\[0\] must be \[3, H, W\] RGB"):
        model.detect([torch.rand(64, 64)], vocabulary=["cat"])
    with pytest.raises(ValueError, match=r"text_embeddings must be \[K, \d+\] with K >= 1, got shape \[0, 64\]"):
        model.detect([torch.rand(3, 64, 64)], text_embeddings=torch.zeros(0, 64))
    # the runtimes' checks (cora.preprocess): the same refusals from the PyTorch model
    t = text(2, model.backbone.embed_dim)
    with pytest.raises(ValueError, match=r"class_prior must hold finite weights >= 0"):
        model.detect([torch.rand(3, 64, 64)], text_embeddings=t, class_prior=torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match=r"text_embeddings must be finite: 1 of 2 rows"):
        model.detect([torch.rand(3, 64, 64)], text_embeddings=torch.cat([t[:1], torch.full_like(t[:1], float("inf"))]))
    with pytest.raises(ValueError, match=r"images\[0\] must be float RGB in \[0, 1\].*divide 0..255 images by 255"):
        model.detect([torch.rand(3, 64, 64) * 255], text_embeddings=t)
    with pytest.raises(FileNotFoundError, match="not a cora checkpoint"):
        load_checkpoint("/nonexistent/ckpt")


@pytest.mark.needs_cuda
def test_cuda_forward_matches_cpu():
    """Every stage on the GPU (backbone, the cora ops, pre-matching, localizer) against the CPU path."""
    cpu_model = CORA.from_config(get_preset("tiny"), random_init=True).eval()
    gpu_model = CORA.from_config(get_preset("tiny"), random_init=True).eval()
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.cuda()
    images, sizes = torch.rand(2, 3, 96, 128), torch.tensor([[96, 128], [70, 100]])
    t = text(7, cpu_model.backbone.embed_dim)
    with torch.no_grad():
        a = cpu_model.predict_raw(images, sizes, t)
        b = gpu_model.predict_raw(images.cuda(), sizes.cuda(), t.cuda())
    assert torch.equal(a["classes"], b["classes"].cpu())
    for key in ("boxes", "objectness", "class_logits"):
        torch.testing.assert_close(b[key].cpu(), a[key], rtol=1e-3, atol=1e-3, msg=key)


def test_forward_train_decodes_groups_like_separate_forwards(model):
    """Class dropout's batched path (CLIP and encoder once, two query groups) equals two forward calls."""
    images, sizes = torch.rand(2, 3, 96, 128), torch.tensor([[96, 128], [70, 100]])
    t = text(6, model.backbone.embed_dim)
    groups = [t[[0, 2, 5]], t[[1, 3, 4]]]
    with torch.no_grad():
        both = model.forward_train(images, sizes, groups)
        separate = [model.predict_raw(images, sizes, g) for g in groups]
    for key in ("boxes", "objectness"):
        torch.testing.assert_close(both[key], torch.cat([s[key] for s in separate], dim=1), msg=key)
    assert torch.equal(both["classes"], torch.cat([s["classes"] for s in separate]))


def test_text_context_length_truncates_long_prompts_as_the_official_15_token_encoder():
    """text_context_length=15 (the official evaluation): long prompts change, short ones do not, and the
    embedding equals CLIP's text tower run on 15 positions."""
    from cora.checkpoint import load_model

    full = load_model(preset="tiny", random_init=True)
    short = load_model(preset="tiny", random_init=True, overrides=["text_context_length=15"])
    long_name = "a very long class name with many words in it, more than fifteen tokens for sure"
    assert (full.encode_vocabulary([long_name]) - short.encode_vocabulary([long_name])).abs().max() > 1e-3
    torch.testing.assert_close(full.encode_vocabulary(["cat"]), short.encode_vocabulary(["cat"]))
    import open_clip

    clip = short.text_embedder.clip_model
    prompt = ["a photo of a cat with a long long long long long long long description."]
    tokens = open_clip.get_tokenizer("RN50")(prompt, context_length=15)
    with torch.no_grad():
        x = clip.token_embedding(tokens) + clip.positional_embedding[:15]
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:15, :15]))
        ref = x[torch.arange(1), tokens.argmax(-1)] @ clip.text_projection
        got = clip.encode_text(short.text_embedder.tokenizer(prompt))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
