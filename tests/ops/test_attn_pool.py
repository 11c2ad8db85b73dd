"""cora.ops.prompted_attention_pool against open_clip's AttentionPool2d evaluated in float64."""

import pytest
import torch
from open_clip.modified_resnet import AttentionPool2d

from cora.ops import PromptedAttentionPool, prompted_attention_pool
from tests.conftest import cpu_and_cuda

# (S, C, heads, out_dim): tiny, odd-sized, RN50-like (7x7, 2048 channels, 32 heads, 1024 out).
SHAPES = {"tiny": (3, 16, 2, 8), "odd": (5, 24, 3, 20), "rn50": (7, 2048, 32, 1024)}


def make_pool(shape, seed=0):
    s, c, heads, out = SHAPES[shape]
    torch.manual_seed(seed)
    pool = AttentionPool2d(s, c, heads, out).double().eval()
    with torch.no_grad():  # non-trivial biases, logits of a realistic spread
        for p in pool.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return pool


def args_of(pool, dtype=torch.float64, device="cpu"):
    names = ("positional_embedding", "q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias",
             "v_proj.weight", "v_proj.bias", "c_proj.weight", "c_proj.bias")
    params = dict(pool.named_parameters())
    return [params[n].detach().to(dtype=dtype, device=device) for n in names] + [pool.num_heads]


def make_x(n, s, c, dtype=torch.float64, device="cpu", layout="contiguous", seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, s, s, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def open_clip_ref(pool, x, prompt=None):
    with torch.no_grad():
        x = x.double().cpu()
        if prompt is not None:
            x = x + prompt.double().cpu().permute(2, 0, 1)[None]
        return pool(x)


def rel_err(a, b):
    return ((a.double().cpu() - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("shape", ["tiny", "odd", "rn50"])
@pytest.mark.parametrize("with_prompt", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_matches_open_clip_fp64_and_fp32(device, shape, with_prompt, layout):
    pool = make_pool(shape)
    s, c, _, out_dim = SHAPES[shape]
    n = 6 if shape == "rn50" else 11
    prompt = torch.randn(s, s, c, dtype=torch.float64) * 0.5 if with_prompt else None
    x = make_x(n, s, c, layout=layout)
    expected = open_clip_ref(pool, x, prompt)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        p = prompt.to(dtype=dtype, device=device) if with_prompt else None
        got = prompted_attention_pool(x.to(dtype=dtype, device=device), *args_of(pool, dtype, device), prompt=p)
        assert got.shape == (n, out_dim) and got.dtype == dtype
        assert rel_err(got, expected) < tol, dtype


def row_rel_err(a, b):
    """Largest over rows of max |a - b| / max |b|: every output of every region, not only its direction."""
    return ((a.double().cpu() - b).abs().amax(1) / b.abs().amax(1)).max().item()


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_within_two_ulps_of_float64(device, dtype):
    """Half inputs, float32 accumulation: against open_clip in float64 on the same (rounded) inputs and
    weights, every output is within 2 eps of its row's scale (fp16 2e-3, bf16 1.6e-2; measured on CPU:
    6.2e-4 and 6.4e-3). A cosine > 0.999 bound would admit a 4.5% direction error."""
    pool = make_pool("rn50")
    x, prompt = make_x(8, 7, 2048), torch.randn(7, 7, 2048, dtype=torch.float64) * 0.5
    rounded = make_pool("rn50")
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(dtype).double())
    expected = open_clip_ref(rounded, x.to(dtype), prompt.to(dtype))
    got = prompted_attention_pool(
        x.to(dtype=dtype, device=device), *args_of(pool, dtype, device), prompt=prompt.to(dtype=dtype, device=device)
    )
    assert got.dtype == dtype
    bound = 2 * torch.finfo(dtype).eps
    assert row_rel_err(got, expected) < bound
    # negative control: the same bound rejects the result of a slightly different prompt (scaled by 1.05)
    nudged = (prompt * 1.05).to(dtype=dtype, device=device)
    wrong = prompted_attention_pool(x.to(dtype=dtype, device=device), *args_of(pool, dtype, device), prompt=nudged)
    assert row_rel_err(wrong, expected) > bound


@pytest.mark.parametrize("seed", range(3))
def test_gradcheck_prompt_positional_embedding_and_x(seed):
    pool = make_pool("tiny", seed)
    args = args_of(pool)
    x = make_x(4, 3, 16, seed=seed, layout=["contiguous", "channels_last"][seed % 2]).requires_grad_()
    pe = args[0].clone().requires_grad_()
    prompt = (torch.randn(3, 3, 16, dtype=torch.float64) * 0.3).requires_grad_()

    def fn(x, pe, prompt):
        return prompted_attention_pool(x, pe, *args[1:], prompt=prompt)

    assert torch.autograd.gradcheck(fn, (x, pe, prompt))


def test_gradients_equal_open_clip_autograd():
    """Gradients at RN50 shapes against autograd through open_clip, in float64."""
    pool = make_pool("rn50")
    x = make_x(5, 7, 2048).requires_grad_()
    prompt = (torch.randn(7, 7, 2048, dtype=torch.float64) * 0.1).requires_grad_()
    grad = torch.randn(5, 1024, dtype=torch.float64)
    args = args_of(pool)
    pe = args[0].clone().requires_grad_()
    prompted_attention_pool(x, pe, *args[1:], prompt=prompt).backward(grad)

    x_ref, prompt_ref = x.detach().clone().requires_grad_(), prompt.detach().clone().requires_grad_()
    pool.requires_grad_(False).positional_embedding.requires_grad_(True)
    pool(x_ref + prompt_ref.permute(2, 0, 1)[None]).backward(grad)
    for got, expected in ((x.grad, x_ref.grad), (pe.grad, pool.positional_embedding.grad), (prompt.grad, prompt_ref.grad)):
        assert rel_err(got, expected) < 1e-10


def test_prompt_equals_modified_positional_embedding():
    """Adding P to the tokens equals pooling with pe + [mean(P); P] (docs/design.md: paper vs official form)."""
    pool = make_pool("odd")
    args = args_of(pool)
    x, prompt = make_x(7, 5, 24), torch.randn(5, 5, 24, dtype=torch.float64)
    flat = prompt.reshape(-1, 24)
    pe_official = args[0] + torch.cat([flat.mean(0, keepdim=True), flat])
    with_prompt = prompted_attention_pool(x, *args, prompt=prompt)
    with_pe = prompted_attention_pool(x, pe_official, *args[1:])
    assert rel_err(with_prompt, with_pe.detach()) < 1e-12
    assert rel_err(with_prompt, open_clip_ref(pool, x, prompt)) < 1e-10


def test_many_regions_are_chunked_and_match():
    """More regions than one chunk (2^25 / (H * C) = 1024 at these shapes) give the same per-region result."""
    pool = make_pool("rn50")
    args = args_of(pool, torch.float32)
    x = make_x(1100, 7, 2048, dtype=torch.float32)
    with torch.no_grad():
        out = prompted_attention_pool(x, *args)
        for i in (0, 1023, 1024, 1099):
            torch.testing.assert_close(out[i : i + 1], prompted_attention_pool(x[i : i + 1], *args), rtol=1e-5, atol=1e-5)


def test_module_trains_only_the_prompt():
    pool = make_pool("tiny").float()
    module = PromptedAttentionPool(pool)
    assert module.prompt.shape == (3, 3, 16) and torch.equal(module.prompt, torch.zeros(3, 3, 16))
    assert [n for n, p in module.named_parameters() if p.requires_grad] == ["prompt"]
    x = make_x(4, 3, 16, dtype=torch.float32)
    torch.testing.assert_close(module(x), pool(x))  # a zero prompt changes nothing
    module(x).square().sum().backward()
    assert module.prompt.grad is not None and module.prompt.grad.abs().sum() > 0


def test_no_regions():
    pool = make_pool("odd")
    out = prompted_attention_pool(make_x(0, 5, 24), *args_of(pool))
    assert out.shape == (0, 20)


def test_opcheck():
    pool = make_pool("tiny")
    args = args_of(pool, torch.float32)
    x = make_x(3, 3, 16, dtype=torch.float32).requires_grad_()
    pe = args[0].clone().requires_grad_()
    prompt = torch.randn(3, 3, 16).requires_grad_()
    op = torch.ops.cora.prompted_attn_pool.default
    wq, bq, wk, _bk, wv, bv, wc, bc, heads = args[1:]
    torch.library.opcheck(op, (x, pe, prompt, wq, bq, wk, wv, bv, wc, bc, heads))
    torch.library.opcheck(op, (x, pe, None, wq, bq, wk, wv, bv, wc, bc, heads))


def test_torch_export_traces_the_op():
    pool = make_pool("tiny").float()
    module = PromptedAttentionPool(pool).eval()
    x = make_x(3, 3, 16, dtype=torch.float32)
    ep = torch.export.export(module, (x,))
    assert any(node.target is torch.ops.cora.prompted_attn_pool.default for node in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(x), module(x))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: a.__setitem__("x", a["x"][0]), r"x must be Tensor\[N, C, S, S\], got \[16, 3, 3\]"),
        (lambda a: a.__setitem__("x", a["x"][:, :8]), r"positional_embedding must be Tensor\[S\*S\+1, C\] = \[10, 8\]"),
        (lambda a: a.__setitem__("positional_embedding", a["positional_embedding"][:9]), r"positional_embedding must be Tensor\[S\*S\+1, C\] = \[10, 16\] .* got \[9, 16\]"),
        (lambda a: a.__setitem__("num_heads", 3), r"C = 16 must be divisible by num_heads, got 3"),
        (lambda a: a.__setitem__("prompt", torch.zeros(3, 3, 8, dtype=torch.float64)), r"prompt must be Tensor\[S, S, C\] = \[3, 3, 16\], got \[3, 3, 8\]"),
        (lambda a: a.__setitem__("q_proj_weight", a["q_proj_weight"][:, :8]), r"q_proj_weight must be Tensor\[16, 16\], got \[16, 8\]"),
        (lambda a: a.__setitem__("c_proj_bias", a["c_proj_bias"][:3]), r"c_proj_bias must be Tensor\[8\], got \[3\]"),
        (lambda a: a.__setitem__("v_proj_bias", a["v_proj_bias"].float()), r"v_proj_bias must have the dtype and device of x"),
        (lambda a: a["k_proj_weight"].requires_grad_(), r"k_proj_weight requires grad, but gradients flow only to"),
    ],
)
def test_bad_input_errors(mutate, match):
    names = ("positional_embedding", "q_proj_weight", "q_proj_bias", "k_proj_weight", "k_proj_bias",
             "v_proj_weight", "v_proj_bias", "c_proj_weight", "c_proj_bias", "num_heads")
    kwargs = dict(zip(names, args_of(make_pool("tiny"))), x=make_x(2, 3, 16), prompt=None)
    mutate(kwargs)
    with pytest.raises(ValueError, match=match):
        prompted_attention_pool(**kwargs)


@pytest.mark.needs_cuda
def test_cuda_matches_cpu():
    pool = make_pool("rn50")
    x, prompt = make_x(300, 7, 2048, dtype=torch.float32), torch.randn(7, 7, 2048) * 0.3
    args = args_of(pool, torch.float32)
    cpu = prompted_attention_pool(x, *args, prompt=prompt)
    gpu = prompted_attention_pool(x.cuda(), *args_of(pool, torch.float32, "cuda"), prompt=prompt.cuda())
    assert rel_err(gpu, cpu.double()) < 1e-4
