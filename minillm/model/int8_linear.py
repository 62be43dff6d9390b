"""Int8 weights for serving on a CPU: `quantization="int8"` (`--quantization int8`).

Each linear layer's weight is stored as int8 with one float scale per output channel
(`w ≈ scale[o] * q[o, i]`): a quarter of float32's memory, and a quarter of the bytes a decode
step has to stream from RAM, which is what bounds it. The product runs in PyTorch's fbgemm kernel
for dynamic quantization: each call quantizes its activations to 8 bits on the fly (one scale for
the whole input, from its range), multiplies in integers and scales the result back to float32.
CTranslate2's int8 and llama.cpp's q8_0 make the same trade (8-bit weights and activations).

One bit is given up, on the weights: `q` uses -63..63, not -127..127. Without VNNI (AVX2
only), fbgemm multiplies pairs of 8-bit values into a 16-bit sum that saturates past 32,767;
255 x 63 x 2 stays below it. PyTorch's own recipe gives the bit up on the activations instead
(`reduce_range`), which costs more: their one scale is shared by the whole batch and its largest
value. On the bundled model's held-out text that recipe moved the perplexity by +1.1 %, this one
by -0.2 % (`minillm bench accuracy --quantization int8`).

What it changes: the model's outputs, slightly (the accuracy is measured in docs/benchmarks.md:
held-out perplexity and greedy agreement with float32), and - because the activation scale is
shared by the rows of a batch - a request's numbers can depend on the other requests batched
with it, which float32 keeps out to within rounding. Only on the CPU, with float32 activations.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn


WEIGHT_MAX = 63  # |q| <= 63: see the module's docstring


class Int8Linear(nn.Module):
    """`y ≈ x W^T + b` with W held as per-channel int8, packed once for fbgemm; replaces one
    `nn.Linear`. The float weight is not kept: `dequantized_weight()` rebuilds it."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        scale = weight.detach().float().abs().amax(dim=1).clamp_min(1e-12) / WEIGHT_MAX
        with warnings.catch_warnings():  # quantized tensors are deprecated, fbgemm's kernel not
            warnings.filterwarnings("ignore", message=".*quantized tensor creation")
            qweight = torch.quantize_per_channel(weight.detach().float(), scale.double(),
                                                 torch.zeros_like(scale, dtype=torch.long),
                                                 axis=0, dtype=torch.qint8)
        bias = None if bias is None else bias.detach().float()
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed, False)  # 8-bit activations

    def dequantized_weight(self) -> torch.Tensor:
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.dequantize()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def check_int8(model: nn.Module) -> None:
    """The int8 kernels run on the CPU with float32 activations: say so for anything else."""
    weight = next(model.parameters())
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        raise ValueError(f"quantization='int8' runs on the CPU in float32 (dtype='float32' or "
                         f"'auto'), not {weight.dtype} on {weight.device.type}")


@torch.no_grad()
def quantize_linear_layers(model: nn.Module) -> nn.Module:
    """Replace every `nn.Linear` (the `lm_head` too: on a large vocabulary it is the biggest
    layer) by an `Int8Linear`, in place. The embedding table stays float32."""
    check_int8(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child.weight, child.bias))
    return model
