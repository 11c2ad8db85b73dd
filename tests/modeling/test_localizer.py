import math

import pytest
import torch

from cora.modeling.localizer import DABLocalizer, map_official_state_dict

SMALL = dict(in_channels=24, hidden_dim=32, num_queries=50, num_heads=4, num_encoder_layers=3,
             num_decoder_layers=6, dim_feedforward=48, dropout=0.1)


def _small_model(seed: int = 0, dtype=torch.float32, **overrides) -> DABLocalizer:
    torch.manual_seed(seed)
    model = DABLocalizer(**{**SMALL, **overrides}).to(dtype)
    with torch.no_grad():  # make refinement, PReLU slopes and norms non-trivial (defaults are 0 / 0.25 / 1, 0)
        for head in model.bbox_embed:
            head.layers[-1].weight.normal_(0, 0.05)
            head.layers[-1].bias.normal_(0, 0.05)
        for name, p in model.named_parameters():
            if name.endswith("activation.weight"):
                p.uniform_(0.05, 0.5)
            elif ".norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _inputs(model: DABLocalizer, sizes, seed: int = 1, dtype=torch.float32):
    """Padded features / mask for images whose feature maps have the given (h, w); garbage in the padding."""
    g = torch.Generator().manual_seed(seed)
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    feats = torch.randn(len(sizes), model.in_channels, h, w, generator=g, dtype=dtype) * 3
    mask = torch.ones(len(sizes), h, w, dtype=torch.bool)
    for i, (hi, wi) in enumerate(sizes):
        mask[i, :hi, :wi] = False
    queries = torch.randn(len(sizes), model.num_queries, model.hidden_dim, generator=g, dtype=dtype)
    return feats, mask, queries


def test_output_shapes_dtypes_and_box_range():
    model = _small_model().eval()
    feats, mask, queries = _inputs(model, [(6, 7), (4, 5)])
    out = model(feats, mask, queries)
    assert set(out) == {"boxes", "objectness"}
    assert out["boxes"].shape == (6, 2, 50, 4) and out["boxes"].dtype == torch.float32
    assert out["objectness"].shape == (6, 2, 50) and out["objectness"].dtype == torch.float32
    assert torch.isfinite(out["objectness"]).all()
    assert (out["boxes"] > 0).all() and (out["boxes"] < 1).all()
    # Refinement changes boxes from layer to layer.
    assert (out["boxes"][1:] - out["boxes"][:-1]).abs().amax() > 1e-3


def test_default_init_predicts_the_anchors():
    # The last Linear of each box MLP starts at zero (official init): every layer returns the anchors.
    torch.manual_seed(0)
    model = DABLocalizer(**SMALL).eval()
    feats, mask, queries = _inputs(model, [(5, 5), (3, 4)])
    boxes = model(feats, mask, queries)["boxes"]
    anchors = model.anchors()
    assert anchors.shape == (50, 4) and ((anchors > 0) & (anchors < 1)).all()
    torch.testing.assert_close(boxes, anchors.expand_as(boxes), atol=1e-6, rtol=0)


def test_padding_does_not_change_the_unpadded_image():
    model = _small_model().eval()
    feats, mask, queries = _inputs(model, [(4, 5), (7, 8)])
    batched = model(feats, mask, queries)
    alone = model(feats[:1, :, :4, :5], mask[:1, :4, :5], queries[:1])
    for key in ("boxes", "objectness"):
        torch.testing.assert_close(batched[key][:, 0], alone[key][:, 0], atol=2e-5, rtol=0)
    # The check has teeth: ignoring the mask (padding treated as image) changes the result.
    unmasked = model(feats, torch.zeros_like(mask), queries)
    assert (unmasked["boxes"][:, 0] - alone["boxes"][:, 0]).abs().amax() > 1e-3


def test_gradients_reach_anchors_content_queries_and_input_proj():
    model = _small_model().train()
    feats, mask, queries = _inputs(model, [(4, 5), (5, 3)])
    queries.requires_grad_(True)
    out = model(feats, mask, queries)
    (out["boxes"].sum() + out["objectness"].sum()).backward()
    for name, grad in (("query_embed", model.query_embed.weight.grad), ("content_queries", queries.grad),
                       ("input_proj", model.input_proj[0][0].weight.grad),
                       ("objectness_embed", model.objectness_embed.weight.grad)):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    # Each decoder layer's box MLP is trained by its own layer's boxes.
    for head in model.bbox_embed:
        assert head.layers[-1].weight.grad.abs().sum() > 0


def test_eval_is_deterministic_and_train_uses_dropout():
    model = _small_model().eval()
    feats, mask, queries = _inputs(model, [(4, 6), (6, 4)])
    a, b = model(feats, mask, queries), model(feats, mask, queries)
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["objectness"], b["objectness"])
    model.train()
    torch.manual_seed(3)
    c = model(feats, mask, queries)
    assert not torch.equal(a["objectness"], c["objectness"])


def test_default_config_builds_and_runs_with_1000_queries():
    torch.manual_seed(0)
    model = DABLocalizer(1024).eval()
    assert model.anchors().shape == (1000, 4)
    assert model.transformer.decoder.layers[0].cross_attn.num_heads == 8
    with torch.no_grad():
        out = model(torch.randn(1, 1024, 3, 4), torch.zeros(1, 3, 4, dtype=torch.bool), torch.randn(1, 1000, 256))
    assert out["boxes"].shape == (6, 1, 1000, 4) and out["objectness"].shape == (6, 1, 1000)


# ---------------------------------------------------------------------------------------------------------
# Official checkpoint layout, written down from github.com/tgxs002/CORA (models/fast_detr.py FastDETR with
# aux_loss, no rpn, >= 25 epochs, no add_gn; models/dab_transformer.py Transformer with activation='prelu',
# normalize_before=False, keep_query_pos=False, query_scale_type='cond_elewise', modulate_hw_attn=True,
# bbox_embed_diff_each_layer=True; models/attention.py MultiheadAttention = out_proj only).


def official_localizer_shapes(in_channels=1024, d=256, num_queries=1000, ffn=1024, enc=3, dec=6):
    shapes = {"query_embed.weight": (num_queries, 4),
              "input_proj.0.0.weight": (d, in_channels, 1, 1), "input_proj.0.0.bias": (d,),
              "objectness_embed.weight": (1, d), "objectness_embed.bias": (1,)}

    def linear(prefix, n_in, n_out):
        shapes[prefix + ".weight"] = (n_out, n_in)
        shapes[prefix + ".bias"] = (n_out,)

    def mlp(prefix, dims):
        for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
            linear(f"{prefix}.layers.{i}", n_in, n_out)

    def norm(prefix):
        shapes[prefix + ".weight"] = shapes[prefix + ".bias"] = (d,)

    for i in range(enc):
        p = f"transformer.encoder.layers.{i}"
        shapes[p + ".self_attn.in_proj_weight"] = (3 * d, d)
        shapes[p + ".self_attn.in_proj_bias"] = (3 * d,)
        linear(p + ".self_attn.out_proj", d, d)
        linear(p + ".linear1", d, ffn)
        linear(p + ".linear2", ffn, d)
        norm(p + ".norm1")
        norm(p + ".norm2")
        shapes[p + ".activation.weight"] = (1,)
    mlp("transformer.encoder.query_scale", [d, d, d])
    for i in range(dec):
        p = f"transformer.decoder.layers.{i}"
        for name in ("sa_qcontent_proj", "sa_qpos_proj", "sa_kcontent_proj", "sa_kpos_proj", "sa_v_proj",
                     "ca_qcontent_proj", "ca_kcontent_proj", "ca_kpos_proj", "ca_v_proj", "ca_qpos_sine_proj",
                     "self_attn.out_proj", "cross_attn.out_proj"):
            linear(f"{p}.{name}", d, d)
        if i == 0:
            linear(p + ".ca_qpos_proj", d, d)
        linear(p + ".linear1", d, ffn)
        linear(p + ".linear2", ffn, d)
        for name in ("norm1", "norm2", "norm3"):
            norm(f"{p}.{name}")
        shapes[p + ".activation.weight"] = (1,)
    norm("transformer.decoder.norm")
    mlp("transformer.decoder.query_scale", [d, d, d])
    mlp("transformer.decoder.ref_point_head", [2 * d, d, d])
    mlp("transformer.decoder.ref_anchor_head", [d, d, 2])
    for i in range(dec):
        mlp(f"bbox_embed.{i}", [d, d, d, 4])
    return shapes


def _official_checkpoint(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    for k in list(sd):  # the official decoder holds the same box MLPs under a second name
        if k.startswith("bbox_embed."):
            sd["transformer.decoder." + k] = sd[k].clone()
    # Keys of other modules in the same checkpoint: the mapping leaves them out.
    sd["backbone.0.body.layer1.0.conv1.weight"] = torch.randn(64, 64, 1, 1, generator=g)
    sd["text_proj.layers.0.weight"] = torch.randn(128, 1024, generator=g)
    return sd


@pytest.mark.parametrize("in_channels", [1024, 1280])  # RN50, RN50x4 layer3
def test_official_state_dict_loads_strictly(in_channels):
    shapes = official_localizer_shapes(in_channels=in_channels)
    model = DABLocalizer(in_channels)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = _official_checkpoint(shapes)
    mapped = map_official_state_dict(official)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == ours == shapes
    model.load_state_dict(mapped, strict=True)
    for key in ("query_embed.weight", "transformer.decoder.layers.0.ca_qpos_proj.weight",
                "transformer.decoder.ref_point_head.layers.0.weight", "bbox_embed.5.layers.2.bias"):
        assert torch.equal(model.state_dict()[key], official[key])


def test_official_mapping_checks_the_alias_and_input_proj():
    shapes = official_localizer_shapes(in_channels=16, d=32, num_queries=5, ffn=48, enc=1, dec=2)
    sd = _official_checkpoint(shapes)
    only_alias = {k: v for k, v in sd.items() if not k.startswith("bbox_embed.")}
    assert set(map_official_state_dict(only_alias)) == set(shapes)
    sd["transformer.decoder.bbox_embed.1.layers.0.weight"] += 1
    with pytest.raises(ValueError, match="differs from bbox_embed.1.layers.0.weight"):
        map_official_state_dict(sd)
    with pytest.raises(ValueError, match="GroupNorm"):
        map_official_state_dict({"input_proj.0.1.weight": torch.ones(32)})


# ---------------------------------------------------------------------------------------------------------
# float64 references, one image at a time, written from the official equations with per-head loops.


def _lin(x, layer):
    return x @ layer.weight.T + layer.bias


def _mlp(x, mlp):
    for i, layer in enumerate(mlp.layers):
        x = _lin(x, layer)
        x = x.clamp(min=0) if i < len(mlp.layers) - 1 else x
    return x


def _ln(x, norm):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _prelu(x, act):
    return torch.where(x >= 0, x, act.weight * x)


def _attention(q, k, v, heads, ignore=None):
    """q: [L, E], k: [S, E], v: [S, Ev]; ignore: [S] bool. Per head softmax(q_h k_h^T / sqrt(E/H)) v_h."""
    dq, dv = q.shape[1] // heads, v.shape[1] // heads
    out = []
    for h in range(heads):
        s = q[:, h * dq:(h + 1) * dq] @ k[:, h * dq:(h + 1) * dq].T / math.sqrt(dq)
        if ignore is not None:
            s = s.masked_fill(ignore[None, :], float("-inf"))
        out.append(torch.softmax(s, dim=-1) @ v[:, h * dv:(h + 1) * dv])
    return torch.cat(out, dim=1)


def _ref_encoder_layer(layer, x, pos, ignore, heads):
    w_q, w_k, w_v = layer.self_attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = layer.self_attn.in_proj_bias.chunk(3)
    a = _attention((x + pos) @ w_q.T + b_q, (x + pos) @ w_k.T + b_k, x @ w_v.T + b_v, heads, ignore)
    x = _ln(x + _lin(a, layer.self_attn.out_proj), layer.norm1)
    return _ln(x + _lin(_prelu(_lin(x, layer.linear1), layer.activation), layer.linear2), layer.norm2)


def _per_head_concat(a, b, heads):
    return torch.cat([torch.cat([x, y], dim=1) for x, y in zip(a.chunk(heads, 1), b.chunk(heads, 1))], dim=1)


def _ref_decoder_layer(layer, first, t, memory, pos, ignore, query_pos, sine, heads):
    q = _lin(t, layer.sa_qcontent_proj) + _lin(query_pos, layer.sa_qpos_proj)
    k = _lin(t, layer.sa_kcontent_proj) + _lin(query_pos, layer.sa_kpos_proj)
    a = _attention(q, k, _lin(t, layer.sa_v_proj), heads)
    t = _ln(t + _lin(a, layer.self_attn.out_proj), layer.norm1)
    q, k, k_pos = _lin(t, layer.ca_qcontent_proj), _lin(memory, layer.ca_kcontent_proj), _lin(pos, layer.ca_kpos_proj)
    if first:
        q, k = q + _lin(query_pos, layer.ca_qpos_proj), k + k_pos
    q = _per_head_concat(q, _lin(sine, layer.ca_qpos_sine_proj), heads)
    k = _per_head_concat(k, k_pos, heads)
    a = _attention(q, k, _lin(memory, layer.ca_v_proj), heads, ignore)
    t = _ln(t + _lin(a, layer.cross_attn.out_proj), layer.norm2)
    return _ln(t + _lin(_prelu(_lin(t, layer.linear1), layer.activation), layer.linear2), layer.norm3)


def _sine(values, n, temperature):
    """values: [...] -> [..., n]: feature i = sin/cos(values / T^(2*(i//2)/n)) for even/odd i."""
    feats = [values / temperature ** (2 * (i // 2) / n) for i in range(n)]
    return torch.stack([f.sin() if i % 2 == 0 else f.cos() for i, f in enumerate(feats)], dim=-1)


def _logit(x, eps):
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _ref_forward(model, feats, h, w, content, heads):
    """One image with an h x w valid block: only its valid cells are used (padding never enters)."""
    d = model.hidden_dim
    conv = model.input_proj[0][0]
    x = feats[:, :h, :w].flatten(1).T @ conv.weight.flatten(1).T + conv.bias  # [h*w, d], row-major cells
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    y = (ys.flatten() + 0.5) / (h + 1e-6) * 2 * math.pi
    xx = (xs.flatten() + 0.5) / (w + 1e-6) * 2 * math.pi
    pos = torch.cat([_sine(y, d // 2, 20.0), _sine(xx, d // 2, 20.0)], dim=1)
    enc = model.transformer.encoder
    for layer in enc.layers:
        x = _ref_encoder_layer(layer, x, pos * _mlp(x, enc.query_scale), None, heads)
    dec = model.transformer.decoder
    t, ref = content, torch.sigmoid(model.query_embed.weight)
    boxes, objectness = [], []
    for i, layer in enumerate(dec.layers):
        cx, cy, bw, bh = (2 * math.pi * ref).unbind(1)
        sine = torch.cat([_sine(v, d // 2, 10000.0) for v in (cy, cx, bw, bh)], dim=1)
        query_pos = _mlp(sine, dec.ref_point_head)
        s = sine[:, :d] * (_mlp(t, dec.query_scale) if i > 0 else 1.0)
        wh = torch.sigmoid(_mlp(t, dec.ref_anchor_head))
        # Modulated HW attention: y features by h_ref / h, x features by w_ref / w.
        s = torch.cat([s[:, :d // 2] * (wh[:, 1] / ref[:, 3])[:, None],
                       s[:, d // 2:] * (wh[:, 0] / ref[:, 2])[:, None]], dim=1)
        t = _ref_decoder_layer(layer, i == 0, t, x, pos, None, query_pos, s, heads)
        normed = _ln(t, dec.norm)
        boxes.append(torch.sigmoid(_logit(ref, 1e-5) + _mlp(normed, model.bbox_embed[i])))
        objectness.append(_lin(normed, model.objectness_embed)[:, 0])
        ref = torch.sigmoid(_logit(ref, 1e-3) + _mlp(t, model.bbox_embed[i]))
    return torch.stack(boxes), torch.stack(objectness)


def test_encoder_layer_matches_float64_reference():
    model = _small_model(dtype=torch.float64).eval()
    layer = model.transformer.encoder.layers[1]
    g = torch.Generator().manual_seed(5)
    src = torch.randn(12, 2, 32, generator=g, dtype=torch.float64)
    pos = torch.randn(12, 2, 32, generator=g, dtype=torch.float64)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[1, 7:] = True
    got = layer(src, mask, pos)
    for b in range(2):
        expected = _ref_encoder_layer(layer, src[:, b], pos[:, b], mask[b], heads=4)
        torch.testing.assert_close(got[:, b], expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("index", [0, 3])  # the first layer has the extra positional query
def test_decoder_layer_matches_float64_reference(index):
    model = _small_model(dtype=torch.float64).eval()
    layer = model.transformer.decoder.layers[index]
    g = torch.Generator().manual_seed(6)
    t, qp, sine = (torch.randn(9, 2, 32, generator=g, dtype=torch.float64) for _ in range(3))
    memory, pos = (torch.randn(12, 2, 32, generator=g, dtype=torch.float64) for _ in range(2))
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, 10:] = True
    got = layer(t, memory, mask, pos, qp, sine)
    for b in range(2):
        expected = _ref_decoder_layer(layer, index == 0, t[:, b], memory[:, b], pos[:, b], mask[b], qp[:, b],
                                      sine[:, b], heads=4)
        torch.testing.assert_close(got[:, b], expected, atol=1e-10, rtol=0)


def test_full_forward_matches_float64_reference():
    model = _small_model(dtype=torch.float64).eval()
    sizes = [(5, 6), (3, 4)]
    feats, mask, queries = _inputs(model, sizes, dtype=torch.float64)
    out = model(feats, mask, queries)
    with torch.no_grad():
        for b, (h, w) in enumerate(sizes):
            boxes, objectness = _ref_forward(model, feats[b], h, w, queries[b], heads=4)
            # 1e-6, not 1e-10: the feature-map encoding is computed in float32, as in the official code.
            torch.testing.assert_close(out["boxes"][:, b], boxes, atol=1e-6, rtol=0)
            torch.testing.assert_close(out["objectness"][:, b], objectness, atol=1e-6, rtol=0)


def test_bad_inputs_raise():
    model = _small_model()
    feats, mask, queries = _inputs(model, [(4, 4), (3, 3)])
    with pytest.raises(ValueError, match=r"features must be Tensor\[B, 24, h, w\]"):
        model(feats[:, :10], mask, queries)
    with pytest.raises(ValueError, match=r"mask must be a bool Tensor\[2, 4, 4\]"):
        model(feats, mask.float(), queries)
    with pytest.raises(ValueError, match=r"content_queries must be Tensor\[2, 50, 32\]"):
        model(feats, mask, queries[:, :10])
    with pytest.raises(ValueError, match="hidden_dim must be divisible by num_heads"):
        DABLocalizer(8, hidden_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="num_queries must be a positive int"):
        DABLocalizer(8, num_queries=0)
    with pytest.raises(ValueError, match="dropout must be a float"):
        DABLocalizer(8, dropout=1.5)
