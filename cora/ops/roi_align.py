"""RoIAlign: `torch.ops.cora.roi_align`, a drop-in for `torchvision.ops.roi_align`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch._prims_common import suggest_memory_format

from cora.ops._utils import convert_boxes_to_roi_format, is_tracing, pair

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_SAMPLING_RATIO = 64  # csrc/roi_align_check.h kMaxSamplingRatio


def roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Region of Interest Align (Mask R-CNN), with the semantics of `torchvision.ops.roi_align`.

    Args:
        input: Tensor[N, C, H, W], float16 / bfloat16 / float32 / float64, NCHW or channels-last.
        boxes: Tensor[K, 5] rows `(batch_index, x1, y1, x2, y2)`, or a list of N Tensor[L_i, 4] rows
            `(x1, y1, x2, y2)` (image i's boxes). Coordinates in input-image pixels, any float dtype
            (geometry is computed in float32, float64 for float64 input).
        output_size: (PH, PW) or a single int for a square output.
        spatial_scale: feature-map pixels per input pixel (1/16 for a stride-16 map); finite and > 0.
        sampling_ratio: bilinear samples per bin along each axis, at most `MAX_SAMPLING_RATIO` (64);
            `<= 0` samples adaptively, `ceil(roi_height / PH)` x `ceil(roi_width / PW)` per bin
            (capped at 2^30 per axis: only a box wider than 2^30 x PH feature pixels differs from
            torchvision, by averaging over a coarser grid).
        aligned: if True, shift box coordinates by -0.5 pixel so that pixel centres align
            (the correct form); if False (legacy), boxes are also forced to be at least 1x1.

    Returns:
        Tensor[K, C, PH, PW] in the dtype and memory format of `input`. Each bin is the average of
        its bilinear samples; samples more than one pixel outside the map count as 0, and a bin
        with no samples (a zero-size or inverted box, x2 < x1 or y2 < y1, with aligned=True and
        adaptive sampling; torchvision may fail on the inverted one) is 0. A box with a non-finite
        coordinate gives zeros, and so does a finite box whose scaled coordinates or extent overflow
        the geometry dtype (e.g. x1 = -3e38, x2 = 3e38 in float32), as an infinite one would. Every
        other box gives torchvision's result: only the samples inside the map are visited (the
        others count as 0), so the work per box is bounded by the map size, not the box area.
        K = 0 gives an empty tensor.

    Half types are read and written in their dtype and accumulated in float32.

    Raises:
        ValueError: wrong ranks or shapes, a non-finite or non-positive `spatial_scale`, a
            `sampling_ratio` above `MAX_SAMPLING_RATIO`, or a batch index outside [0, N) (checked
            in eager mode; under tracing the kernels return zeros for such rows instead of reading
            out of bounds).
    """
    if not isinstance(input, Tensor) or input.dim() != 4:
        shape = list(input.shape) if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"roi_align: input must be Tensor[N, C, H, W], got {shape}")
    rois = boxes if isinstance(boxes, Tensor) else convert_boxes_to_roi_format(boxes)
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"roi_align: boxes must be Tensor[K, 5] or a list of Tensor[L, 4], got {list(rois.shape)}")
    output_h, output_w = pair(output_size, "output_size")
    if not is_tracing(rois) and rois.shape[0] > 0:
        _check_batch_indices(rois[:, 0], input.shape[0])
    return torch.ops.cora.roi_align(
        input, rois, float(spatial_scale), output_h, output_w, int(sampling_ratio), bool(aligned)
    )


def _check_batch_indices(batch_indices: Tensor, batch_size: int) -> None:
    bad = ~((batch_indices >= 0) & (batch_indices < batch_size))
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"roi_align: boxes[{row}, 0] is batch index {batch_indices[row].item()}, "
            f"expected one in [0, {batch_size}) (input has {batch_size} images)"
        )


class RoIAlign(nn.Module):
    """See `roi_align`."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = False,
    ):
        super().__init__()
        self.output_size = pair(output_size, "output_size")
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


# ---- fake kernels: the C++ checks, repeated with the same messages (csrc/roi_align_check.h) ----


def _check_rois(rois: Tensor, pooled_height: int, pooled_width: int) -> None:
    torch._check(
        rois.dim() == 2 and rois.shape[1] == 5, lambda: f"roi_align: rois must be Tensor[K, 5], got {list(rois.shape)}"
    )
    torch._check(
        rois.dtype.is_floating_point, lambda: f"roi_align: rois must be a floating-point tensor, got {rois.dtype}"
    )
    torch._check(
        pooled_height > 0 and pooled_width > 0,
        lambda: f"roi_align: output size must be positive, got ({pooled_height}, {pooled_width})",
    )


def _check_scalars(spatial_scale: float, sampling_ratio: int) -> None:
    torch._check_value(
        math.isfinite(spatial_scale) and spatial_scale > 0,
        lambda: "roi_align: spatial_scale must be a finite number > 0 (feature-map pixels per input pixel), "
        f"got {spatial_scale}",
    )
    torch._check_value(
        sampling_ratio <= MAX_SAMPLING_RATIO,
        lambda: f"roi_align: sampling_ratio must be <= {MAX_SAMPLING_RATIO} (samples per bin along each axis; "
        f"<= 0 samples adaptively), got {sampling_ratio}",
    )


@torch.library.register_fake("cora::roi_align")
def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    torch._check(input.dim() == 4, lambda: f"roi_align: input must be Tensor[N, C, H, W], got {list(input.shape)}")
    torch._check(
        input.dtype in _FLOAT_DTYPES,
        lambda: f"roi_align: input must be float16, bfloat16, float32 or float64, got {input.dtype}",
    )
    _check_rois(rois, pooled_height, pooled_width)
    _check_scalars(spatial_scale, sampling_ratio)
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    return torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=suggest_memory_format(input))


@torch.library.register_fake("cora::_roi_align_backward")
def _roi_align_backward_fake(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, sampling_ratio, aligned
):
    torch._check(
        grad.dtype in _FLOAT_DTYPES,
        lambda: f"roi_align: grad must be float16, bfloat16, float32 or float64, got {grad.dtype}",
    )
    _check_rois(rois, pooled_height, pooled_width)
    _check_scalars(spatial_scale, sampling_ratio)
    shape = (batch_size, channels, height, width)
    return torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=suggest_memory_format(grad))


# ---- autograd: the gradient flows to `input` only (boxes are not differentiated, as torchvision) ----


def _setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.input_shape = input.shape
    ctx.params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


def _backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = ctx.params
    batch_size, channels, height, width = ctx.input_shape
    grad_input = torch.ops.cora._roi_align_backward(
        grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width,
        sampling_ratio, aligned,
    )
    return grad_input, None, None, None, None, None, None


torch.library.register_autograd("cora::roi_align", _backward, setup_context=_setup_context)
