"""A small multi-layer perceptron (DETR's `MLP`), shared by the localizer heads and the text projection."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """`num_layers` Linear layers with ReLU between them (none after the last), as DETR's `models/detr.py`.

    The layers live in `self.layers` (an `nn.ModuleList` of `nn.Linear`), so state-dict keys are
    `layers.{i}.weight` / `layers.{i}.bias`, the names DETR, DAB-DETR and CORA's official checkpoints use.

    Args:
        in_dim: input features.
        hidden_dim: features of every hidden layer.
        out_dim: output features.
        num_layers: number of Linear layers, >= 1 (1 gives a single Linear in_dim -> out_dim).

    forward(x: Tensor[..., in_dim]) -> Tensor[..., out_dim].
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"MLP: {name} must be a positive int, got {value!r}")
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
            raise ValueError(f"MLP: num_layers must be an int >= 1, got {num_layers!r}")
        self.num_layers = num_layers
        hidden = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([in_dim] + hidden, hidden + [out_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return x
