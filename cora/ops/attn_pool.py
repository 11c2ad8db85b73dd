"""Prompted attention pooling: `torch.ops.cora.prompted_attn_pool`, CLIP's attention pool for many regions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cora.ops._utils import is_tracing

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_WEIGHTS = ("q_proj_weight", "q_proj_bias", "k_proj_weight", "k_proj_bias", "v_proj_weight", "v_proj_bias",
            "c_proj_weight", "c_proj_bias")


def prompted_attention_pool(
    x: Tensor,
    positional_embedding: Tensor,
    q_proj_weight: Tensor,
    q_proj_bias: Tensor,
    k_proj_weight: Tensor,
    k_proj_bias: Tensor,
    v_proj_weight: Tensor,
    v_proj_bias: Tensor,
    c_proj_weight: Tensor,
    c_proj_bias: Tensor,
    num_heads: int,
    prompt: Tensor | None = None,
) -> Tensor:
    """open_clip's `AttentionPool2d` (holding these parameters) applied to `x + prompt`, for N regions.

    Exactly `attnpool(x + prompt.permute(2, 0, 1)[None])` up to rounding, computed in O(L) per region:
    only token 0's output is used, so the per-head key projection folds into the query (the key bias
    cancels in the softmax) and the value projection moves after the weighted token sum.

    Args:
        x: Tensor[N, C, S, S] region features (S = 7 for RN50, 9 for RN50x4; Sh x Sw works too),
            NCHW or channels-last; float16 / bfloat16 / float32 / float64.
        positional_embedding: Tensor[S*S+1, C]; row 0 is the mean (query) token's.
        q_proj_weight, k_proj_weight, v_proj_weight: Tensor[C, C]; q/k/v_proj_bias: Tensor[C].
        c_proj_weight: Tensor[out_dim, C]; c_proj_bias: Tensor[out_dim].
        num_heads: attention heads; must divide C.
        prompt: optional Tensor[S, S, C], added to every region (the paper's region prompt). Pooling
            `x + P` equals pooling `x` with positional embedding `pe + [mean(P); P]`.

    Returns:
        Tensor[N, out_dim] in x's dtype. N = 0 gives Tensor[0, out_dim]. A region with a NaN or
        infinite value gives NaN (as open_clip); the other regions are unaffected.

    Half types: projections in the input dtype; logits, softmax and the weighted sum in float32.
    Under torch.autocast every floating input is cast to the autocast dtype first.
    Regions are processed in chunks (memory stays bounded for N = 16000).

    Gradients flow to `x`, `positional_embedding` and `prompt`. The projection weights are frozen
    CLIP weights in CORA: asking for their gradient raises a ValueError.
    """
    weights = (q_proj_weight, q_proj_bias, k_proj_weight, k_proj_bias, v_proj_weight, v_proj_bias,
               c_proj_weight, c_proj_bias)
    if isinstance(x, Tensor) and torch.is_autocast_enabled(x.device.type):
        # Autocast does not know this op: run it in the autocast dtype, as the projections it fuses would run.
        dtype = torch.get_autocast_dtype(x.device.type)
        x, positional_embedding, prompt, *weights = (
            t.to(dtype) if isinstance(t, Tensor) else t for t in (x, positional_embedding, prompt, *weights))
    _check_inputs(x, positional_embedding, weights, num_heads, prompt)
    wq, bq, wk, _, wv, bv, wc, bc = weights
    return torch.ops.cora.prompted_attn_pool(x, positional_embedding, prompt, wq, bq, wk, wv, bv, wc, bc, int(num_heads))


def _check_inputs(x, pe, weights, num_heads, prompt) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"prompted_attention_pool: x must be Tensor[N, C, S, S], got {_shape(x)}")
    channels, tokens = x.shape[1], x.shape[2] * x.shape[3] + 1
    if not isinstance(pe, Tensor) or tuple(pe.shape) != (tokens, channels):
        raise ValueError(
            f"prompted_attention_pool: positional_embedding must be Tensor[S*S+1, C] = [{tokens}, {channels}] "
            f"for x of shape {list(x.shape)}, got {_shape(pe)}"
        )
    if not isinstance(num_heads, int) or num_heads <= 0 or channels % num_heads:
        raise ValueError(f"prompted_attention_pool: C = {channels} must be divisible by num_heads, got {num_heads!r}")
    if prompt is not None and (not isinstance(prompt, Tensor) or tuple(prompt.shape) != (*x.shape[2:], channels)):
        raise ValueError(
            f"prompted_attention_pool: prompt must be Tensor[S, S, C] = [{x.shape[2]}, {x.shape[3]}, {channels}], "
            f"got {_shape(prompt)}"
        )
    out_dim = weights[6].shape[0] if isinstance(weights[6], Tensor) and weights[6].dim() == 2 else None
    expected = [(channels, channels), (channels,), (channels, channels), (channels,), (channels, channels),
                (channels,), (out_dim, channels), (out_dim,)]
    for name, w, shape in zip(_WEIGHTS, weights, expected):
        if not isinstance(w, Tensor) or w.shape != shape:
            dims = ", ".join("out_dim" if s is None else str(s) for s in shape)
            raise ValueError(f"prompted_attention_pool: {name} must be Tensor[{dims}], got {_shape(w)}")
        if w.dtype != x.dtype or w.device != x.device:
            raise ValueError(
                f"prompted_attention_pool: {name} must have the dtype and device of x ({x.dtype}, {x.device}), "
                f"got {w.dtype}, {w.device}"
            )
        if w.requires_grad and torch.is_grad_enabled() and not is_tracing(x):
            raise ValueError(
                f"prompted_attention_pool: {name} requires grad, but gradients flow only to x, "
                "positional_embedding and prompt (CLIP's projections are frozen in CORA); call "
                "requires_grad_(False) on the attention pool's projections"
            )


def _shape(t) -> str:
    return str(list(t.shape)) if isinstance(t, Tensor) else type(t).__name__


class PromptedAttentionPool(nn.Module):
    """An open_clip `AttentionPool2d` with a trainable region prompt (zero-initialised).

    The wrapped module's parameters are frozen (CORA trains the prompt only). The module keeps its own
    copy of the positional embedding, so that both forms of a region prompt are held exactly: the
    paper's prompt P [S, S, C] (`prompt`, added to the region features) and the official code's
    fine-tuned positional embedding pe' [S*S+1, C] (`positional_embedding`, trainable only with
    `train_positional_embedding`). Pooling uses pe' + [mean(P); P].

    forward(x: Tensor[N, C, S, S]) -> Tensor[N, out_dim], see `prompted_attention_pool`.
    """

    def __init__(self, attnpool: nn.Module, prompt_shape: tuple[int, int, int] | None = None,
                 train_positional_embedding: bool = False):
        super().__init__()
        self.attnpool = attnpool
        for p in attnpool.parameters():
            p.requires_grad_(False)
        pe = attnpool.positional_embedding.detach()
        self.positional_embedding = nn.Parameter(pe.clone(), requires_grad=train_positional_embedding)
        tokens, channels = pe.shape
        side = int(round((tokens - 1) ** 0.5))
        if prompt_shape is None:
            if side * side != tokens - 1:
                raise ValueError(f"positional_embedding has {tokens} rows, not S*S+1: pass prompt_shape")
            prompt_shape = (side, side, channels)
        if len(prompt_shape) != 3 or prompt_shape[0] * prompt_shape[1] + 1 != tokens or prompt_shape[2] != channels:
            raise ValueError(f"prompt_shape must be (S, S, {channels}) with S*S+1 = {tokens}, got {prompt_shape}")
        self.prompt = nn.Parameter(torch.zeros(prompt_shape, dtype=pe.dtype))

    def effective_positional_embedding(self) -> Tensor:
        """pe' + [mean(P); P]: Tensor[S*S+1, C], the official form of the current prompt."""
        p = self.prompt.reshape(-1, self.prompt.shape[-1])
        return self.positional_embedding + torch.cat([p.mean(0, keepdim=True), p])

    def forward(self, x: Tensor) -> Tensor:
        a = self.attnpool
        return prompted_attention_pool(
            x, self.positional_embedding.to(x.dtype), a.q_proj.weight, a.q_proj.bias, a.k_proj.weight,
            a.k_proj.bias, a.v_proj.weight, a.v_proj.bias, a.c_proj.weight, a.c_proj.bias, a.num_heads,
            prompt=self.prompt.to(x.dtype),
        )


# ---- fake kernels (the C++ checks are in csrc/attn_pool.cpp) ----


@torch.library.register_fake("cora::prompted_attn_pool")
def _fake(x, pe, prompt, wq, bq, wk, wv, bv, wc, bc, num_heads):
    torch._check(x.dim() == 4, lambda: f"prompted_attn_pool: x must be Tensor[N, C, S, S], got {list(x.shape)}")
    torch._check(x.dtype in _FLOAT_DTYPES, lambda: f"prompted_attn_pool: x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    torch._check(
        pe.dim() == 2 and pe.shape[0] == x.shape[2] * x.shape[3] + 1 and pe.shape[1] == x.shape[1],
        lambda: f"prompted_attn_pool: positional_embedding must be Tensor[S*S+1, C], got {list(pe.shape)}",
    )
    torch._check(
        num_heads > 0 and x.shape[1] % num_heads == 0,
        lambda: f"prompted_attn_pool: C = {x.shape[1]} must be divisible by num_heads, got num_heads = {num_heads}",
    )
    return x.new_empty((x.shape[0], wc.shape[0]))


@torch.library.register_fake("cora::_prompted_attn_pool_backward")
def _backward_fake(grad, x, pe, prompt, wq, bq, wk, wv, bv, wc, num_heads):
    grad_prompt = torch.empty_like(prompt) if prompt is not None else pe.new_empty((0,))
    # grad_x comes back channels-last (the kernel works on [N, S*S, C] tokens).
    return torch.empty_like(x, memory_format=torch.channels_last), torch.empty_like(pe), grad_prompt


# ---- autograd: to x, positional_embedding and prompt ----


def _setup_context(ctx, inputs, output):
    x, pe, prompt, wq, bq, wk, wv, bv, wc, bc, num_heads = inputs
    ctx.save_for_backward(x, pe, prompt, wq, bq, wk, wv, bv, wc)
    ctx.num_heads = num_heads
    ctx.has_prompt = prompt is not None


def _backward(ctx, grad):
    x, pe, prompt, wq, bq, wk, wv, bv, wc = ctx.saved_tensors
    grad_x, grad_pe, grad_prompt = torch.ops.cora._prompted_attn_pool_backward(
        grad, x, pe, prompt if ctx.has_prompt else None, wq, bq, wk, wv, bv, wc, ctx.num_heads
    )
    return grad_x, grad_pe, (grad_prompt if ctx.has_prompt else None), None, None, None, None, None, None, None, None


torch.library.register_autograd("cora::prompted_attn_pool", _backward, setup_context=_setup_context)
