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


ONNX_TRANSLATIONS = {torch.ops.cora.roi_align.default: roi_align}
