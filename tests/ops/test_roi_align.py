"""cora.ops.roi_align against torchvision.ops.roi_align evaluated in float64 (the reference)."""

import math

import pytest
import torch
import torchvision

from cora.ops import RoIAlign, roi_align
from tests.conftest import TOLERANCES, cpu_and_cuda

LAYOUTS = ("contiguous", "channels_last", "strided")


def make_input(n, c, h, w, dtype, device, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # neither layout: a slice of a wider map
        wide = torch.zeros(n, c, h, w + 3, dtype=dtype, device=device)
        wide[..., 1 : w + 1] = x
        return wide[..., 1 : w + 1]
    return x


def make_rois(k, n, h, w, scale, device, seed=0):
    """Boxes in input pixels: inside, partly and fully outside the map, zero-size and tiny."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([w, h], dtype=torch.float64) / scale
    xy = (torch.rand(k, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2) * size
    wh = torch.rand(k, 2, generator=g, dtype=torch.float64) * size * 0.7
    wh[: k // 8] = 0  # zero-size boxes
    wh[k // 8 : k // 4] *= 0.02  # sub-pixel boxes
    batch = torch.randint(0, n, (k, 1), generator=g).double()
    return torch.cat([batch, xy, xy + wh], dim=1).to(device)


def reference(x, rois, output_size, scale, sampling_ratio, aligned):
    return torchvision.ops.roi_align(
        x.double().cpu(), rois.double().cpu(), output_size, scale, sampling_ratio, aligned
    )


def assert_close(actual, expected, dtype, scale_by_max=True):
    tol = TOLERANCES[dtype]
    if dtype in (torch.float16, torch.bfloat16) and scale_by_max:
        tol *= max(expected.abs().max().item(), 1e-6)
    err = (actual.double().cpu() - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g} ({dtype})"


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
def test_forward_and_backward_match_torchvision(device, dtype, layout, aligned, sampling_ratio):
    n, c, h, w, scale, size = 2, 5, 11, 17, 0.25, (4, 3)
    x = make_input(n, c, h, w, dtype, device, layout).requires_grad_()
    rois = make_rois(40, n, h, w, scale, device)
    out = roi_align(x, rois, size, scale, sampling_ratio, aligned)

    x_ref = x.detach().double().cpu().requires_grad_()
    ref = reference(x_ref, rois, size, scale, sampling_ratio, aligned)
    assert out.shape == (40, c, *size) and out.dtype == dtype and out.device.type == device
    assert_close(out, ref, dtype)

    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out.backward(torch.empty_like(out).copy_(grad))  # grad in the output's layout (channels-last or not)
    ref.backward(grad)
    assert x.grad.shape == x.shape and x.grad.dtype == dtype
    assert_close(x.grad, x_ref.grad, dtype)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("seed", range(4))
def test_random_shapes(device, seed):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = (int(v) for v in torch.randint(1, 24, (4,), generator=g))
    ph, pw = (int(v) for v in torch.randint(1, 9, (2,), generator=g))
    scale = [1.0, 0.5, 1 / 16][seed % 3]
    x = make_input(n, c, h, w, torch.float64, device, LAYOUTS[seed % 3], seed)
    rois = make_rois(25, n, h, w, scale, device, seed)
    assert_close(roi_align(x, rois, (ph, pw), scale, -1, seed % 2 == 0), reference(x, rois, (ph, pw), scale, -1, seed % 2 == 0), torch.float64)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_channels_last_equals_nchw_and_keeps_layout(device):
    x = make_input(2, 64, 13, 21, torch.float32, device, "contiguous")
    rois = make_rois(30, 2, 13, 21, 1.0, device)
    nchw = roi_align(x, rois, 7, 1.0, -1, True)
    cl = roi_align(x.contiguous(memory_format=torch.channels_last), rois, 7, 1.0, -1, True)
    assert nchw.is_contiguous()
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, nchw, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", range(10))
def test_gradcheck(seed):
    x = make_input(2, 3, 6, 7, torch.float64, "cpu", LAYOUTS[seed % 3], seed).requires_grad_()
    rois = make_rois(6, 2, 6, 7, 0.5, "cpu", seed)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, (3, 2), 0.5, seed % 3 - 1, seed % 2 == 0), (x,))


def test_opcheck():
    """Schema, fake kernel, autograd registration and dispatch agree (torch.library.opcheck)."""
    for layout in ("contiguous", "channels_last"):
        x = make_input(2, 4, 9, 10, torch.float32, "cpu", layout).requires_grad_()
        rois = make_rois(7, 2, 9, 10, 0.5, "cpu").float()
        torch.library.opcheck(torch.ops.cora.roi_align.default, (x, rois, 0.5, 3, 4, -1, True))


def test_fake_kernel_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 8, 20, 30).contiguous(memory_format=torch.channels_last)
        out = torch.ops.cora.roi_align(x, torch.empty(11, 5), 0.25, 7, 5, -1, True)
        assert out.shape == (11, 8, 7, 5)
        assert out.is_contiguous(memory_format=torch.channels_last)
        with pytest.raises(RuntimeError, match=r"rois must be Tensor\[K, 5\]"):
            torch.ops.cora.roi_align(x, torch.empty(11, 4), 0.25, 7, 5, -1, True)


def test_torch_export_traces_the_op():
    class Pool(torch.nn.Module):
        def forward(self, x, rois):
            return roi_align(x, rois, 7, 1 / 16, -1, True)

    x, rois = make_input(1, 8, 20, 30, torch.float32, "cpu", "contiguous"), make_rois(5, 1, 20, 30, 1 / 16, "cpu").float()
    ep = torch.export.export(Pool(), (x, rois))
    assert any(node.target is torch.ops.cora.roi_align.default for node in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(x, rois), Pool()(x, rois))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_list_of_boxes_equals_rois_tensor(device):
    x = make_input(3, 4, 10, 12, torch.float32, device, "contiguous")
    boxes = [torch.tensor([[0.0, 0, 5, 5], [1, 2, 9, 8]]), torch.zeros(0, 4), torch.tensor([[2.0, 1, 7, 9]])]
    boxes = [b.to(device) for b in boxes]
    rois = torch.tensor([[0.0, 0, 0, 5, 5], [0, 1, 2, 9, 8], [2, 2, 1, 7, 9]], device=device)
    torch.testing.assert_close(roi_align(x, boxes, 3, aligned=True), roi_align(x, rois, 3, aligned=True))
    torch.testing.assert_close(RoIAlign(3, aligned=True)(x, boxes), roi_align(x, rois, 3, aligned=True))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_no_rois_gives_empty_output_and_zero_grad(device, layout):
    x = make_input(2, 6, 8, 8, torch.float32, device, layout).requires_grad_()
    out = roi_align(x, torch.zeros(0, 5, device=device), (3, 4))
    assert out.shape == (0, 6, 3, 4)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_non_finite_boxes_give_zeros(device, layout):
    x = make_input(1, 4, 8, 8, torch.float32, device, layout).abs().add(1).requires_grad_()
    inf, nan = math.inf, math.nan
    rois = torch.tensor(
        [[0, 1, 1, 6, 6], [0, nan, 1, 6, 6], [0, 1, 1, inf, 6], [0, -inf, -inf, inf, inf],
         # finite, but x2 - x1 overflows float32: zeros, as the infinite box above
         [0, -3e38, -3e38, 3e38, 3e38], [0, -3e38, 1, 3e38, 6], [0, 1, 1e30, 6, 1e30]],
        device=device,
    )
    out = roi_align(x, rois, 2, 1.0, -1, True)
    assert out[0].abs().min() > 0  # the finite box reads real values
    assert torch.equal(out[1:6], torch.zeros_like(out[1:6]))
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("aligned", [False, True])
def test_boxes_much_larger_than_the_map_match_torchvision(device, layout, aligned):
    """Adaptive grids of 30-180 samples per axis: the kernels visit only the samples inside the map
    (found by bisection) and must still give torchvision's average over all of them."""
    x = make_input(2, 3, 10, 13, torch.float64, device, layout).requires_grad_()
    rois = torch.tensor(
        [[0, -1e4, -1e4, 1e4, 1e4], [1, 0, 0, 2e4, 2e4], [0, -3e3, 100, 200, 4e3], [1, 150, -5e3, 160, 7e3],
         [0, 1e4, 1e4, 2e4, 2e4]],  # entirely outside: zeros
        dtype=torch.float64, device=device,
    )
    out = roi_align(x, rois, (7, 5), 1 / 16, -1, aligned)
    x_ref = x.detach().cpu().requires_grad_()
    ref = reference(x_ref, rois, (7, 5), 1 / 16, -1, aligned)
    assert ref[:4].abs().amax(dim=(1, 2, 3)).min() > 1e-4  # the first four boxes do read the map
    assert_close(out, ref, torch.float64)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out.backward(torch.empty_like(out).copy_(grad))
    ref.backward(grad)
    assert_close(x.grad, x_ref.grad, torch.float64)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_absurd_boxes_finish_with_a_bounded_average(device):
    """A 2e9-pixel box (torchvision: 1e17 samples per bin, never finishes) visits only the samples
    inside the map, so each bin is at most max|x| * (samples inside the map) / (samples per bin)."""
    x = make_input(1, 4, 12, 12, torch.float32, device, "channels_last").abs()
    rois = torch.tensor([[0, -1e9, -1e9, 1e9, 1e9], [0, 0, 0, 3e9, 5]], device=device)
    out = roi_align(x, rois, 7, 1.0, 0, True)
    per_axis = torch.tensor([2e9 / 7, 3e9 / 7]).ceil()  # adaptive samples per axis, box 0 and box 1 (x)
    inside = (2 * 12 + 3) ** 2
    assert torch.isfinite(out).all() and (out >= 0).all()
    assert out[0].max() <= x.max() * inside / per_axis[0] ** 2
    assert out[1].max() > 0  # box 1 is 5 pixels tall: few samples per bin along y, real values


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_boxes_outside_the_map_give_zeros_and_do_not_read_nan_pixels(device):
    x = torch.full((1, 2, 8, 8), math.nan, device=device)
    x[..., 4:, 4:] = 1.0
    rois = torch.tensor([[0.0, 100, 100, 120, 120], [0, -50, -50, -20, -20], [0, 5, 5, 7, 7]], device=device)
    out = roi_align(x, rois, 2, 1.0, 2, True)
    assert torch.equal(out[:2], torch.zeros_like(out[:2]))
    torch.testing.assert_close(out[2], torch.ones_like(out[2]))


def test_bad_batch_index_is_a_value_error():
    x = torch.randn(2, 3, 8, 8)
    for bad in (2.0, -1.0, math.nan):
        with pytest.raises(ValueError, match=r"boxes\[1, 0\] is batch index .* expected one in \[0, 2\)"):
            roi_align(x, torch.tensor([[0.0, 1, 1, 4, 4], [bad, 1, 1, 4, 4]]), 2)


def test_bad_batch_index_under_direct_op_call_reads_nothing():
    """Bypassing the wrapper (as traced graphs do) must not read out of bounds: such rows are 0."""
    x = torch.randn(2, 3, 8, 8)
    out = torch.ops.cora.roi_align(x, torch.tensor([[5.0, 1, 1, 4, 4], [-3.0, 1, 1, 4, 4]]), 1.0, 2, 2, -1, True)
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize(
    "make_args, error, match",
    [
        (lambda: (torch.randn(3, 8, 8), torch.zeros(1, 5), 2), ValueError, r"input must be Tensor\[N, C, H, W\], got \[3, 8, 8\]"),
        (lambda: (torch.randn(1, 3, 8, 8), torch.zeros(4, 4), 2), ValueError, r"boxes must be Tensor\[K, 5\] .* got \[4, 4\]"),
        (lambda: (torch.randn(1, 3, 8, 8), [torch.zeros(4, 5)], 2), ValueError, r"boxes\[0\] must be Tensor\[L, 4\], got \[4, 5\]"),
        (lambda: (torch.randn(1, 3, 8, 8), torch.zeros(1, 5), (2, 2, 2)), ValueError, r"output_size must be an int or a pair"),
        (lambda: (torch.randn(1, 3, 8, 8), torch.zeros(1, 5), 0), RuntimeError, r"output size must be positive, got \(0, 0\)"),
        (lambda: (torch.randn(1, 3, 8, 8).int(), torch.zeros(1, 5), 2), RuntimeError, r"input must be float16, bfloat16, float32 or float64, got Int"),
        (lambda: (torch.randn(1, 3, 8, 8), torch.zeros(1, 5, dtype=torch.int64), 2), RuntimeError, r"rois must be a floating-point tensor"),
    ],
)
def test_bad_input_errors(make_args, error, match):
    x, boxes, size = make_args()
    with pytest.raises(error, match=match):
        roi_align(x, boxes, size)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize(
    "spatial_scale, sampling_ratio, match",
    [
        (math.nan, 2, r"spatial_scale must be a finite number > 0 .*, got nan"),
        (-0.25, 2, r"spatial_scale must be a finite number > 0 .*, got -0.25"),
        (0.0, 2, r"spatial_scale must be a finite number > 0 .*, got 0"),
        (math.inf, 2, r"spatial_scale must be a finite number > 0 .*, got inf"),
        (1.0, 100000, r"sampling_ratio must be <= 64 .*, got 100000"),
        (1.0, 65, r"sampling_ratio must be <= 64 .*, got 65"),
    ],
)
def test_bad_scalars_are_value_errors_in_kernels_and_fake_kernel(device, spatial_scale, sampling_ratio, match):
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, rois = torch.randn(1, 3, 8, 8, device=device), torch.tensor([[0.0, 1, 1, 6, 6]], device=device)
    with pytest.raises(ValueError, match=match):
        roi_align(x, rois, 2, spatial_scale, sampling_ratio)
    grad = torch.ones(1, 3, 2, 2, device=device)
    with pytest.raises(ValueError, match=match):
        torch.ops.cora._roi_align_backward(grad, rois, spatial_scale, 2, 2, 1, 3, 8, 8, sampling_ratio, True)
    with FakeTensorMode(), pytest.raises(ValueError, match=match):
        torch.ops.cora.roi_align(torch.empty(1, 3, 8, 8), torch.empty(1, 5), spatial_scale, 2, 2, sampling_ratio, True)
    # the bounds themselves are accepted (negative control)
    assert roi_align(x, rois, 2, 1e-3, 64).shape == (1, 3, 2, 2)


@pytest.mark.needs_cuda
def test_cuda_matches_cpu_at_rn50_shapes():
    x = make_input(2, 1024, 50, 84, torch.float16, "cpu", "channels_last")
    rois = make_rois(300, 2, 50, 84, 1 / 16, "cpu").float()
    cpu = roi_align(x.float(), rois, 14, 1 / 16, -1, True)
    gpu = roi_align(x.cuda(), rois.cuda(), 14, 1 / 16, -1, True)
    torch.testing.assert_close(gpu.float().cpu(), cpu, rtol=0, atol=2e-3 * x.abs().max().item())
