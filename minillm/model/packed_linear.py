"""Linear layers with their weights pre-packed for oneDNN, for serving on a CPU.

`nn.Linear` on a CPU calls a BLAS library (Intel MKL in PyPI's torch) that re-arranges the weight
into its preferred blocked layout on every call, and on AMD processors takes a slower code path.
oneDNN, also inside torch, can do that re-arrangement once, when the model is loaded: the same
float32 product, with the usual rounding differences of a different summation order, about twice
as fast on the machine of docs/benchmarks.md. vLLM's CPU backend calls oneDNN for its linear
layers too.

The engine packs its model on CPU (`pack_linear_layers`); `load_model` alone does not, so the
chapters and tests see plain `nn.Linear` modules with their checkpoint weights.
"""
from __future__ import annotations

import torch
from torch import nn

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


def can_pack(model: nn.Module) -> bool:
    """oneDNN is in this build of torch and the model is on the CPU in float32 or bfloat16."""
    weight = next(model.parameters())
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and weight.device.type == "cpu" and weight.dtype in PACKABLE_DTYPES)


class PackedLinear(nn.Module):
    """`y = x W^T + b` with W held in oneDNN's layout; replaces one `nn.Linear`."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


@torch.no_grad()
def pack_linear_layers(model: nn.Module) -> nn.Module:
    """Replace every `nn.Linear` of the model by a `PackedLinear`, in place (a tied `lm_head`
    gets its own packed copy; the embedding keeps the original)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, PackedLinear(child))
    return model
