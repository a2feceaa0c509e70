"""The arithmetic of a training step, counted from the layers' shapes, and GPU peaks.

Achieved TFLOP/s (issue 4's measure of how well a GPU is used) is the work of a step divided
by its time. The work is counted, not profiled: convolutions and linear layers, with a
multiply and an add as two operations, on the meta device, so counting even the 89.7 M-
parameter ``liu2022`` variant costs neither memory nor time. Norms, ReLUs and pools are left
out; they are a fraction of a percent of the work. A training step is taken as three forward
passes, the usual rule: the backward pass computes one gradient for the activations and one
for the weights, each as costly as the forward pass.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from earlyad.train.model import ClassifierCNN, ModelConfig

#: Dense bf16 tensor-core peaks in TFLOP/s (vendor datasheets), matched as substrings of
#: ``torch.cuda.get_device_name()``; the first match wins, so "A100" is tried before "A10".
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10", 125.0),
    ("L4", 121.0),
)


def forward_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Operations of one forward pass of ``model`` on one input of ``input_shape``
    (channels first, no batch axis): 2 x multiply-adds of every Conv3d and Linear layer."""
    total = 0

    def conv(mod: nn.Module, _: object, out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(mod, nn.Conv3d)
        total += 2 * out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)

    def linear(mod: nn.Module, _: object, out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(mod, nn.Linear)
        total += 2 * out.numel() * mod.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear))
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in hooks:
            h.remove()
    return total


def model_flops(config: ModelConfig) -> int:
    """Forward operations of a ClassifierCNN per sample, counted on the meta device."""
    with torch.device("meta"):
        model = ClassifierCNN(config)
    return forward_flops(model, (1, config.input_size, config.input_size, config.input_size))


def training_flops_per_sample(config: ModelConfig) -> int:
    """Operations of one training sample: a forward and a backward pass, three forwards."""
    return 3 * model_flops(config)


def bf16_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named ``device_name``, or None when it is not listed."""
    for key, peak in BF16_PEAK_TFLOPS:
        if key in device_name:
            return peak
    return None
