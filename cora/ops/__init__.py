"""The compiled ops of cora (`torch.ops.cora.*`) and their Python faces."""

try:
    from cora import _C  # noqa: F401  (registers torch.ops.cora.*)
except ImportError as e:  # pragma: no cover - depends on the build
    raise ImportError(
        "cora's compiled ops (cora._C) are not built or do not load: run "
        "`python setup.py build_ext --inplace` in the repository root (or `make build`). "
        f"Cause: {e}"
    ) from e

from cora.ops.attn_pool import PromptedAttentionPool, prompted_attention_pool
from cora.ops.linear_assignment import batched_linear_assignment, linear_sum_assignment, per_class_blocks
from cora.ops.roi_align import RoIAlign, roi_align

__all__ = [
    "PromptedAttentionPool",
    "RoIAlign",
    "batched_linear_assignment",
    "linear_sum_assignment",
    "per_class_blocks",
    "prompted_attention_pool",
    "roi_align",
]
