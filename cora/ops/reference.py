"""Pure-PyTorch versions of the compiled ops, written for clarity; the benchmarks time them as the
"plain torch ops" baseline. Tests check the ops against torchvision / open_clip directly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def prompted_attention_pool_ref(x: Tensor, positional_embedding: Tensor, q_proj_weight: Tensor, q_proj_bias: Tensor,
                                k_proj_weight: Tensor, k_proj_bias: Tensor, v_proj_weight: Tensor, v_proj_bias: Tensor,
                                c_proj_weight: Tensor, c_proj_bias: Tensor, num_heads: int,
                                prompt: Tensor | None = None) -> Tensor:
    """The folded, token-0-only attention pool with plain torch ops (see cora.ops.prompted_attention_pool).

    x: Tensor[N, C, S, S] -> Tensor[N, out_dim].
    """
    n, c = x.shape[:2]
    head_dim = c // num_heads
    if prompt is not None:
        x = x + prompt.permute(2, 0, 1)[None]
    u = x.flatten(2).transpose(1, 2)                                        # [N, S*S, C]
    tokens = torch.cat([u.mean(1, keepdim=True), u], 1) + positional_embedding  # [N, L, C]
    q = F.linear(tokens[:, 0], q_proj_weight, q_proj_bias).view(n, num_heads, head_dim)
    keys = torch.einsum("nhd,hdc->nhc", q, k_proj_weight.view(num_heads, head_dim, c)) / head_dim**0.5
    attn = torch.softmax(torch.bmm(keys, tokens.transpose(1, 2)), -1)       # [N, H, L]
    z = torch.bmm(attn, tokens)                                               # [N, H, C]
    o = torch.einsum("nhc,hdc->nhd", z, v_proj_weight.view(num_heads, head_dim, c)).reshape(n, c) + v_proj_bias
    return F.linear(o, c_proj_weight, c_proj_bias)
