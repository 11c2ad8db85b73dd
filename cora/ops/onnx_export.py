"""ONNX translations of the cora ops for the dynamo exporter.

    torch.onnx.export(model, args, dynamo=True, opset_version=18,
                      custom_translation_table=cora.ops.onnx_export.ONNX_TRANSLATIONS)

Every cora op becomes standard ONNX operators, so no custom op reaches the file and ONNX Runtime
and TensorRT's parser read it as is.
"""

from __future__ import annotations

import torch
from onnxscript import INT64
from onnxscript import opset18 as op

ONNX_OPSET = 18


def roi_align(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool):
    """cora::roi_align -> ONNX RoiAlign (opset >= 16).

    `coordinate_transformation_mode` is always written: its default differs between ONNX Runtime
    and TensorRT. "half_pixel" is `aligned=True`; "output_half_pixel" is the legacy mode, where the
    runtimes also force boxes to at least 1x1 as torchvision does. ONNX spells adaptive sampling
    `sampling_ratio=0` (it rejects negative values). Boxes are cast to the input's dtype, which
    RoiAlign requires; non-finite boxes are not zeroed by the runtimes.
    """
    batch_indices = op.Cast(op.Squeeze(op.Slice(rois, [0], [1], [1]), [1]), to=INT64.dtype)
    boxes = op.CastLike(op.Slice(rois, [1], [5], [1]), input)
    return op.RoiAlign(
        input,
        boxes,
        batch_indices,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
        mode="avg",
        output_height=pooled_height,
        output_width=pooled_width,
        sampling_ratio=max(int(sampling_ratio), 0),
        spatial_scale=float(spatial_scale),
    )


def prompted_attn_pool(x, positional_embedding, prompt, q_proj_weight, q_proj_bias, k_proj_weight, v_proj_weight,
                       v_proj_bias, c_proj_weight, c_proj_bias, num_heads: int):
    """cora::prompted_attn_pool -> the O(L) fold as MatMul / Softmax / ReduceMean nodes.

    x [N, C, Sh, Sw] -> [N, out_dim]; same algebra as csrc/attn_pool.cpp (token 0 is the only query,
    the key projection folded into it). Static shapes: C, the heads and the weights; N is dynamic.
    """
    channels = positional_embedding.shape[1]
    head_dim = channels // num_heads
    u = op.Transpose(op.Reshape(x, [0, channels, -1]), perm=[0, 2, 1])      # [N, S*S, C]
    pos = positional_embedding
    if prompt is not None:  # pooling x + P == pooling x with pe + [mean(P); P]
        p = op.Reshape(op.CastLike(prompt, pos), [-1, channels])
        pos = op.Add(pos, op.Concat(op.ReduceMean(p, [0], keepdims=1), p, axis=0))
    tokens = op.Add(op.Concat(op.ReduceMean(u, [1], keepdims=1), u, axis=1), pos)  # [N, L, C]
    t0 = op.Squeeze(op.Slice(tokens, [0], [1], [1]), [1])                            # [N, C]
    q = op.Add(op.MatMul(t0, op.Transpose(q_proj_weight, perm=[1, 0])), q_proj_bias)
    q = op.Mul(q, op.CastLike(1.0 / head_dim**0.5, q))
    q_heads = op.Transpose(op.Reshape(q, [0, num_heads, head_dim]), perm=[1, 0, 2])   # [H, N, d]
    keys = op.MatMul(q_heads, op.Reshape(k_proj_weight, [num_heads, head_dim, channels]))  # [H, N, C]
    keys = op.Transpose(keys, perm=[1, 0, 2])                                          # [N, H, C]
    attn = op.Softmax(op.MatMul(keys, op.Transpose(tokens, perm=[0, 2, 1])), axis=-1)  # [N, H, L]
    z = op.Transpose(op.MatMul(attn, tokens), perm=[1, 0, 2])                          # [H, N, C]
    wv_t = op.Transpose(op.Reshape(v_proj_weight, [num_heads, head_dim, channels]), perm=[0, 2, 1])
    o = op.Reshape(op.Transpose(op.MatMul(z, wv_t), perm=[1, 0, 2]), [0, channels])   # [N, C]
    o = op.Add(o, v_proj_bias)
    return op.Add(op.MatMul(o, op.Transpose(c_proj_weight, perm=[1, 0])), c_proj_bias)


ONNX_TRANSLATIONS = {
    torch.ops.cora.roi_align.default: roi_align,
    torch.ops.cora.prompted_attn_pool.default: prompted_attn_pool,
}
