"""CORA's localizer: a DAB-DETR whose decoder queries are learnable anchor boxes plus pre-matched content queries.

Mirrors CORA's official code (github.com/tgxs002/CORA: `models/fast_detr.py` FastDETR with
`--anchor_pre_matching --condition_on_text`, `models/dab_transformer.py`, `models/position_encoding.py`,
and the settings of `configs/COCO/R50_dab_ovd_3enc_apm128_splcls0.2_relabel_noinit.sh`):

- Input: layer3 features (stride 16) -> `input_proj` (1x1 conv to hidden_dim; no GroupNorm, as the
  official code for >= 25 epochs without `--add_gn`). Positional encoding: normalised sine of the padding
  mask, temperature 20 (`position_encoding.sine_position_embedding`).
- Encoder (3 post-norm layers, PReLU FFN: DAB-DETR's `activation='prelu'`): before every layer the
  positional encoding is scaled element-wise by `query_scale(x)` (an MLP of the current features).
- Decoder (6 post-norm layers, conditional cross-attention): each query's positional part is the sine
  embedding of its current anchor (temperature 10000, ordered y, x, w, h) through `ref_point_head`; the
  (y, x) sine half, scaled by `query_scale(output)` from the 2nd layer on (cond_elewise), is projected by
  `ca_qpos_sine_proj` and concatenated per head with the content query; keys concatenate content and
  positional parts per head (so each head's q.k has 2 * d / heads dims, scaled by its inverse square root).
  Modulated HW attention: the x half is multiplied by w_ref / w and the y half by h_ref / h, with
  (w_ref, h_ref) = sigmoid(`ref_anchor_head(output)`). Only the first layer adds the content-free
  positional query `ca_qpos_proj(query_pos)` (keep_query_pos=False: the other layers have no
  `ca_qpos_proj`).
- Iterative anchor refinement, one box MLP per decoder layer (`bbox_embed_diff_each_layer=True`, last
  Linear zero-initialised): after layer l the anchor becomes `sigmoid(logit(a_l) + bbox_embed[l](x_l))` on
  the *un-normalised* layer output, detached before the next layer. The returned boxes use the
  *normalised* output: `sigmoid(logit(a_l) + bbox_embed[l](norm(x_l)))`, where the first anchor a_0 =
  sigmoid(query_embed) keeps its gradient. `logit` clamps at 1e-3 inside the decoder and at 1e-5 for the
  returned boxes (the two `inverse_sigmoid`s of the official code).
- Objectness: one class-agnostic `Linear(hidden_dim, 1)` on every layer's normalised output, default
  init (the official config passes `--disable_init`, so no focal-loss prior bias).
- Initialisation: xavier-uniform on every >1-dim transformer weight (as `Transformer._reset_parameters`),
  attention output biases 0, `query_embed` N(0, 1) (nn.Embedding).

Deviations (none changes the function for the default hidden_dim=256):
- The official code hard-codes 128 sine features per anchor coordinate and the encoder's `query_scale`
  width 256; here both follow hidden_dim (hidden_dim // 2 features per coordinate).
- The official decoder shares the `bbox_embed` modules with the detector (`transformer.decoder.bbox_embed
  = self.bbox_embed`), so its state dict holds each box MLP twice. Here the decoder receives them as an
  argument; `map_official_state_dict` drops the duplicate `transformer.decoder.bbox_embed.*` keys (after
  checking they equal `bbox_embed.*`). Every other official key loads unchanged.
- The official code re-orders each image's anchors by pre-matched class before decoding; the decoder is
  permutation-equivariant over queries, so keeping the `query_embed` order gives the same boxes, reordered.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cora.modeling.mlp import MLP
from cora.modeling.position_encoding import anchor_sine_embedding, sine_position_embedding

PE_TEMPERATURE = 20.0  # feature-map sine encoding (official `--pe_temperature` default)
ANCHOR_PE_TEMPERATURE = 10000.0  # anchor sine encoding (`gen_sineembed_for_position`)
# State-dict prefixes of the localizer inside the official FastDETR checkpoint.
OFFICIAL_PREFIXES = ("query_embed.", "input_proj.", "transformer.", "bbox_embed.", "objectness_embed.")
OFFICIAL_DUPLICATE_PREFIX = "transformer.decoder.bbox_embed."  # alias of "bbox_embed." in the official model


def inverse_sigmoid(x: Tensor, eps: float) -> Tensor:
    """log(x / (1 - x)) with x clamped to [0, 1] and both x and 1 - x to >= eps (as the official code)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer; positions are added to queries and keys, not values."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.activation = nn.PReLU()
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: Tensor, key_padding_mask: Tensor, pos: Tensor) -> Tensor:
        """src, pos: Tensor[S, B, d] (S = h*w cells); key_padding_mask: Tensor[B, S] bool. Returns Tensor[S, B, d]."""
        q = k = src + pos
        attn = self.self_attn(q, k, value=src, key_padding_mask=key_padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class Encoder(nn.Module):
    """Encoder layers; each layer's positional encoding is scaled by `query_scale` of its input."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, num_heads, dim_feedforward, dropout)
                                    for _ in range(num_layers))
        self.query_scale = MLP(d_model, d_model, d_model, 2)

    def forward(self, src: Tensor, key_padding_mask: Tensor, pos: Tensor) -> Tensor:
        """src, pos: Tensor[S, B, d]; key_padding_mask: Tensor[B, S] bool. Returns memory Tensor[S, B, d]."""
        for layer in self.layers:
            src = layer(src, key_padding_mask, pos * self.query_scale(src))
        return src


class ProjectedAttention(nn.Module):
    """Multi-head attention on already-projected q, k, v (Conditional DETR's `MultiheadAttention`).

    Query/key width `embed_dim` and value width `value_dim` may differ; only the output projection
    `out_proj: Linear(value_dim, value_dim)` is a parameter. Scores use 1/sqrt(embed_dim / num_heads).
    """

    def __init__(self, embed_dim: int, value_dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.out_proj = nn.Linear(value_dim, value_dim)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """q: Tensor[L, B, E]; k: Tensor[S, B, E]; v: Tensor[S, B, Ev]; key_padding_mask: Tensor[B, S] bool
        (True = ignore). Returns Tensor[L, B, Ev]."""
        heads = self.num_heads
        q = q.unflatten(-1, (heads, -1)).permute(1, 2, 0, 3)  # [L, B, E] -> [B, H, L, E/H]
        k = k.unflatten(-1, (heads, -1)).permute(1, 2, 0, 3)  # [S, B, E] -> [B, H, S, E/H]
        v = v.unflatten(-1, (heads, -1)).permute(1, 2, 0, 3)  # [S, B, Ev] -> [B, H, S, Ev/H]
        attend = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # [B, 1, 1, S]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.permute(2, 0, 1, 3).flatten(-2)  # [B, H, L, Ev/H] -> [L, B, Ev]
        return self.out_proj(out)


def _concat_heads(a: Tensor, b: Tensor, heads: int) -> Tensor:
    """Tensor[..., d] twice -> Tensor[..., 2d]: per head, a's head features then b's."""
    return torch.cat((a.unflatten(-1, (heads, -1)), b.unflatten(-1, (heads, -1))), dim=-1).flatten(-2)


class DecoderLayer(nn.Module):
    """DAB-DETR decoder layer: self-attention, conditional cross-attention, FFN; post-norm."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float, is_first: bool):
        super().__init__()
        self.num_heads = num_heads
        self.is_first = is_first
        self.sa_qcontent_proj = nn.Linear(d_model, d_model)
        self.sa_qpos_proj = nn.Linear(d_model, d_model)
        self.sa_kcontent_proj = nn.Linear(d_model, d_model)
        self.sa_kpos_proj = nn.Linear(d_model, d_model)
        self.sa_v_proj = nn.Linear(d_model, d_model)
        self.self_attn = ProjectedAttention(d_model, d_model, num_heads, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)

        self.ca_qcontent_proj = nn.Linear(d_model, d_model)
        # Only the first layer adds the box's positional query to the content query (keep_query_pos=False).
        self.ca_qpos_proj = nn.Linear(d_model, d_model) if is_first else None
        self.ca_kcontent_proj = nn.Linear(d_model, d_model)
        self.ca_kpos_proj = nn.Linear(d_model, d_model)
        self.ca_v_proj = nn.Linear(d_model, d_model)
        self.ca_qpos_sine_proj = nn.Linear(d_model, d_model)
        self.cross_attn = ProjectedAttention(2 * d_model, d_model, num_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout2 = nn.Dropout(dropout)

        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.activation = nn.PReLU()
        self.dropout = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, memory: Tensor, memory_key_padding_mask: Tensor, pos: Tensor,
                query_pos: Tensor, query_sine_embed: Tensor) -> Tensor:
        """tgt, query_pos, query_sine_embed: Tensor[Q, B, d]; memory, pos: Tensor[S, B, d];
        memory_key_padding_mask: Tensor[B, S] bool. Returns Tensor[Q, B, d]."""
        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, self.sa_v_proj(tgt))))

        q = self.ca_qcontent_proj(tgt)
        k = self.ca_kcontent_proj(memory)
        k_pos = self.ca_kpos_proj(pos)
        if self.ca_qpos_proj is not None:
            q = q + self.ca_qpos_proj(query_pos)
            k = k + k_pos
        q = _concat_heads(q, self.ca_qpos_sine_proj(query_sine_embed), self.num_heads)  # [Q, B, 2d]
        k = _concat_heads(k, k_pos, self.num_heads)  # [S, B, 2d]
        attn = self.cross_attn(q, k, self.ca_v_proj(memory), memory_key_padding_mask)
        tgt = self.norm2(tgt + self.dropout2(attn))

        ffn = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class Decoder(nn.Module):
    """DAB-DETR decoder: anchor-conditioned positional queries, modulated HW attention, anchor refinement."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float, num_layers: int):
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(DecoderLayer(d_model, num_heads, dim_feedforward, dropout, is_first=i == 0)
                                    for i in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.query_scale = MLP(d_model, d_model, d_model, 2)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.ref_anchor_head = MLP(d_model, d_model, 2, 2)

    def forward(self, tgt: Tensor, memory: Tensor, memory_key_padding_mask: Tensor, pos: Tensor,
                anchors: Tensor, bbox_embed: nn.ModuleList) -> tuple[Tensor, Tensor]:
        """tgt: Tensor[Q, B, d] content queries; memory, pos: Tensor[S, B, d]; memory_key_padding_mask:
        Tensor[B, S] bool; anchors: Tensor[Q, B, 4] normalised cxcywh; bbox_embed: one box MLP per layer.

        Returns (hidden Tensor[L, Q, B, d]: each layer's normalised output, references Tensor[L, Q, B, 4]:
        the anchor each layer started from; only references[0] = anchors carries a gradient).
        """
        d = self.d_model
        output, reference = tgt, anchors
        hidden, references = [], [anchors]
        for i, layer in enumerate(self.layers):
            sine = anchor_sine_embedding(reference, d // 2, ANCHOR_PE_TEMPERATURE)  # [Q, B, 2d] (y, x, w, h)
            query_pos = self.ref_point_head(sine)
            sine_yx = sine[..., :d] if i == 0 else sine[..., :d] * self.query_scale(output)
            ref_wh = self.ref_anchor_head(output).sigmoid()  # [Q, B, 2] (w, h)
            sine_yx = torch.cat((sine_yx[..., : d // 2] * (ref_wh[..., 1] / reference[..., 3]).unsqueeze(-1),
                                 sine_yx[..., d // 2:] * (ref_wh[..., 0] / reference[..., 2]).unsqueeze(-1)), -1)
            output = layer(output, memory, memory_key_padding_mask, pos, query_pos, sine_yx)
            hidden.append(self.norm(output))
            refined = (bbox_embed[i](output) + inverse_sigmoid(reference, 1e-3)).sigmoid()
            if i < len(self.layers) - 1:
                references.append(refined)
            reference = refined.detach()
        return torch.stack(hidden), torch.stack(references)


class DABTransformer(nn.Module):
    """Encoder + decoder, xavier-initialised as the official `Transformer`."""

    def __init__(self, d_model: int, num_heads: int, num_encoder_layers: int, num_decoder_layers: int,
                 dim_feedforward: int, dropout: float):
        super().__init__()
        self.encoder = Encoder(d_model, num_heads, dim_feedforward, dropout, num_encoder_layers)
        self.decoder = Decoder(d_model, num_heads, dim_feedforward, dropout, num_decoder_layers)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"DABLocalizer: {name} must be a positive int, got {value!r}")


class DABLocalizer(nn.Module):
    """CORA's class-agnostic DAB-DETR localizer (see the module docstring for what it mirrors).

    Args:
        in_channels: channels of the input features (CLIP layer3: 1024 for RN50, 1280 for RN50x4).
        hidden_dim: transformer width d; divisible by num_heads and by 4.
        num_queries: Q, the number of learnable anchors.
        num_heads, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout: transformer sizes.

    Parameter names equal the official checkpoint's (`query_embed.weight`, `input_proj.0.0.*`,
    `transformer.encoder.*`, `transformer.decoder.*`, `bbox_embed.{l}.layers.*`, `objectness_embed.*`);
    load one with `load_state_dict(map_official_state_dict(checkpoint["model"]))`.
    """

    def __init__(self, in_channels: int, hidden_dim: int = 256, num_queries: int = 1000, num_heads: int = 8,
                 num_encoder_layers: int = 3, num_decoder_layers: int = 6, dim_feedforward: int = 1024,
                 dropout: float = 0.1):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("hidden_dim", hidden_dim), ("num_queries", num_queries),
                            ("num_heads", num_heads), ("num_encoder_layers", num_encoder_layers),
                            ("num_decoder_layers", num_decoder_layers), ("dim_feedforward", dim_feedforward)):
            _check_positive_int(name, value)
        if hidden_dim % num_heads or hidden_dim % 4:
            raise ValueError(f"DABLocalizer: hidden_dim must be divisible by num_heads ({num_heads}) and by 4 "
                             f"(sine features per axis must be even), got {hidden_dim}")
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"DABLocalizer: dropout must be a float in [0, 1), got {dropout!r}")
        self.in_channels = in_channels
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.num_decoder_layers = num_decoder_layers

        self.query_embed = nn.Embedding(num_queries, 4)  # anchors (cx, cy, w, h) before the sigmoid
        self.input_proj = nn.ModuleList([nn.Sequential(nn.Conv2d(in_channels, hidden_dim, kernel_size=1))])
        self.transformer = DABTransformer(hidden_dim, num_heads, num_encoder_layers, num_decoder_layers,
                                          dim_feedforward, dropout)
        self.bbox_embed = nn.ModuleList(MLP(hidden_dim, hidden_dim, 4, 3) for _ in range(num_decoder_layers))
        for head in self.bbox_embed:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        self.objectness_embed = nn.Linear(hidden_dim, 1)

    def anchors(self) -> Tensor:
        """Tensor[Q, 4]: the learnable anchors, normalised cxcywh in (0, 1) (sigmoid of `query_embed`)."""
        return self.query_embed.weight.sigmoid()

    def forward(self, features: Tensor, mask: Tensor, content_queries: Tensor) -> dict[str, Tensor]:
        """Decode the anchors into boxes.

        Args:
            features: Tensor[B, in_channels, h, w] CLIP layer3 features of the padded batch.
            mask: Tensor[B, h, w] bool, True on padding (each image's valid cells are a top-left block and
                at least one cell is valid).
            content_queries: Tensor[B, Q, hidden_dim] pre-matched content queries (Q = num_queries, in
                `query_embed` order); or Tensor[G*B, Q, hidden_dim], G query sets per image (set g of image b
                at row g * B + b) decoded against the same encoder output (class dropout's two vocabulary
                groups: the encoder runs once).

        Returns:
            dict with
            - "boxes": Tensor[L, G*B, Q, 4] (L = num_decoder_layers) normalised cxcywh in (0, 1), relative to
              each image's un-padded extent (the positional encoding only counts valid cells), one entry
              per decoder layer (the last is the final prediction);
            - "objectness": Tensor[L, G*B, Q] class-agnostic objectness logits per decoder layer.
        """
        self._check_inputs(features, mask, content_queries)
        src = self.input_proj[0](features)  # [B, d, h, w]
        pos = sine_position_embedding(mask, self.hidden_dim // 2, PE_TEMPERATURE).to(src.dtype)  # [B, d, h, w]
        src = src.flatten(2).permute(2, 0, 1)  # [B, d, h, w] -> [S, B, d]
        pos = pos.flatten(2).permute(2, 0, 1)  # [B, d, h, w] -> [S, B, d]
        key_padding_mask = mask.flatten(1)  # [B, S]
        memory = self.transformer.encoder(src, key_padding_mask, pos)

        rows = content_queries.shape[0]  # G * B
        groups = rows // features.shape[0]
        if groups > 1:  # every group decodes against the same encoder output
            memory, pos, key_padding_mask = (memory.repeat(1, groups, 1), pos.repeat(1, groups, 1),
                                             key_padding_mask.repeat(groups, 1))
        anchors = self.anchors().unsqueeze(1).expand(-1, rows, -1)  # [Q, 4] -> [Q, G*B, 4]
        tgt = content_queries.transpose(0, 1)  # [G*B, Q, d] -> [Q, G*B, d]
        hidden, references = self.transformer.decoder(tgt, memory, key_padding_mask, pos, anchors, self.bbox_embed)
        hidden = hidden.transpose(1, 2)  # [L, Q, G*B, d] -> [L, G*B, Q, d]
        references = references.transpose(1, 2)  # [L, Q, G*B, 4] -> [L, G*B, Q, 4]
        offsets = torch.stack([head(h) for head, h in zip(self.bbox_embed, hidden)])  # [L, G*B, Q, 4]
        boxes = (inverse_sigmoid(references, 1e-5) + offsets).sigmoid()
        objectness = self.objectness_embed(hidden).squeeze(-1)  # [L, G*B, Q, 1] -> [L, G*B, Q]
        return {"boxes": boxes, "objectness": objectness}

    def _check_inputs(self, features: Tensor, mask: Tensor, content_queries: Tensor) -> None:
        if not isinstance(features, Tensor) or features.dim() != 4 or features.shape[1] != self.in_channels:
            got = list(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"features must be Tensor[B, {self.in_channels}, h, w], got {got}")
        b, _, h, w = features.shape
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (b, h, w):
            got = f"{mask.dtype} {list(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a bool Tensor[{b}, {h}, {w}] (True = padding), got {got}")
        shape = tuple(content_queries.shape) if isinstance(content_queries, Tensor) else None
        if shape is None or len(shape) != 3 or shape[1:] != (self.num_queries, self.hidden_dim) \
                or shape[0] < b or shape[0] % b:
            got = list(shape) if shape is not None else type(content_queries).__name__
            raise ValueError(f"content_queries must be Tensor[{b}, {self.num_queries}, {self.hidden_dim}] "
                             f"(B, num_queries, hidden_dim), or G*B rows for G query sets, got {got}")


def map_official_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The localizer's part of an official CORA checkpoint (`torch.load(path)["model"]`), keyed for DABLocalizer.

    Keeps the keys under `OFFICIAL_PREFIXES` (the backbone, classifier and `text_proj` keys belong to other
    modules and are left out) and drops `transformer.decoder.bbox_embed.*`, the official decoder's alias of
    `bbox_embed.*` (if only the alias is present it is used for `bbox_embed.*`). Raises ValueError if the
    alias disagrees with `bbox_embed.*`, or for an input_proj with GroupNorm (`--add_gn`, not used by CORA).
    """
    out: dict[str, Tensor] = {}
    aliases: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(OFFICIAL_DUPLICATE_PREFIX):
            aliases["bbox_embed." + key[len(OFFICIAL_DUPLICATE_PREFIX):]] = value
        elif key.startswith(OFFICIAL_PREFIXES):
            if key.startswith("input_proj.") and not key.startswith("input_proj.0.0."):
                raise ValueError(f"state_dict key {key!r}: only input_proj = [Conv2d 1x1] is supported "
                                 "(a GroupNorm input_proj comes from --add_gn or < 25 epochs)")
            out[key] = value
    for key, value in aliases.items():
        if key not in out:
            out[key] = value
        elif out[key].shape != value.shape or not torch.equal(out[key], value):
            raise ValueError(f"state_dict: {OFFICIAL_DUPLICATE_PREFIX}{key[len('bbox_embed.'):]} differs from {key}; "
                             "the official model shares these modules, so they must be equal")
    return out
