"""ClassifierCNN, the 3D CNN of the reference study (expansion factor 8), and Liu 2022's variant.

REFERENCE.md, Model: four conv blocks (conv -> norm -> ReLU -> max-pool) and a three-layer head.
For a 96^3 input the spatial size goes 96 -> 47 -> 43 -> 21 -> 17 -> 8 -> 6 -> 1, so the head
sees F = 512 features (about 24.7 M parameters). Liu et al. 2022's public code pools block 3
with k5 s2 and block 4 not at all (a module-naming bug), giving F = 512 * 5^3 = 64000.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

NormType = Literal["instance", "batch"]
Variant = Literal["paper", "liu2022"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture settings; the defaults are the paper's full model.

    Args:
        norm_type: InstanceNorm3d (the study's best, affine=False) or BatchNorm3d.
        head_relu: the paper's head has a ReLU between its second and third linear layers;
            the public code has none (False reproduces it).
        variant: ``paper`` (F = 512 at 96^3) or ``liu2022`` (F = 64000).
        width: channel multiplier; 1.0 is the paper's, smaller values make a CPU-sized net for
            tests and the demo.
        input_size: edge of the cubic input crop (96 in the study).
        n_classes: CN, MCI, AD.
    """

    norm_type: NormType = "instance"
    head_relu: bool = True
    variant: Variant = "paper"
    width: float = 1.0
    input_size: int = 96
    n_classes: int = 3

    def channels(self) -> tuple[int, int, int, int]:
        """Output channels of the four blocks (32, 256, 512, 512 at width 1)."""
        return tuple(max(1, round(c * self.width)) for c in (32, 256, 512, 512))  # type: ignore[return-value]


class PointwiseConv3d(nn.Conv3d):
    """Block 1's 1x1x1 convolution from one channel, computed as a broadcast multiply-add.

    Mathematically the same layer with the same parameters (state-dict compatible with
    ``nn.Conv3d``), but oneDNN's kernel for a 1->C, k=1 convolution on a 96^3 volume is about
    12x slower on CPU than the broadcast (measured: 1.27 s against 0.10 s forward at batch 8),
    and that one layer dominated CPU training time.
    """

    def __init__(self, out_channels: int) -> None:
        super().__init__(1, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.view(1, -1, 1, 1, 1)
        b = self.bias.view(1, -1, 1, 1, 1)
        return torch.addcmul(b, x, w)


def _norm(kind: NormType, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    raise ValueError(f"norm_type must be 'instance' or 'batch', got {kind!r}")


def _block(
    c_in: int,
    c_out: int,
    kernel: int,
    padding: int,
    dilation: int,
    norm: NormType,
    pool: tuple[int, int] | None,
) -> nn.Sequential:
    conv = (
        PointwiseConv3d(c_out)
        if (c_in, kernel, padding) == (1, 1, 0)
        else nn.Conv3d(c_in, c_out, kernel_size=kernel, padding=padding, dilation=dilation)
    )
    layers: list[nn.Module] = [
        conv,
        _norm(norm, c_out),
        nn.ReLU(inplace=True),
    ]
    if pool is not None:
        layers.append(nn.MaxPool3d(kernel_size=pool[0], stride=pool[1]))
    return nn.Sequential(*layers)


class ClassifierCNN(nn.Module):
    """The study's 3D CNN (REFERENCE.md table), or Liu 2022's variant with ``variant='liu2022'``."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        c1, c2, c3, c4 = self.config.channels()
        liu = self.config.variant == "liu2022"
        norm = self.config.norm_type
        self.features = nn.Sequential(
            _block(1, c1, 1, 0, 1, norm, (3, 2)),
            _block(c1, c2, 3, 0, 2, norm, (3, 2)),
            _block(c2, c3, 5, 2, 2, norm, (5, 2) if liu else (3, 2)),
            _block(c3, c4, 3, 1, 2, norm, None if liu else (5, 2)),
        )
        self.n_features = self.feature_count()
        head: list[nn.Module] = [
            nn.Flatten(),
            nn.Linear(self.n_features, 1024),
            nn.Linear(1024, 512),
        ]
        if self.config.head_relu:
            head.append(nn.ReLU(inplace=True))
        head.append(nn.Linear(512, self.config.n_classes))
        self.classifier = nn.Sequential(*head)
        self._init_linear()

    def feature_count(self) -> int:
        """F, the flattened feature size for the configured input (computed, never hard-coded)."""
        size = self.config.input_size
        with torch.no_grad():
            out = self.features(torch.zeros(1, 1, size, size, size))
        if out.numel() == 0:
            raise ValueError(f"input_size {size} is too small for ClassifierCNN")
        return int(out.numel())

    def _init_linear(self) -> None:
        """Linear weights ~ N(0, 0.01), biases 0, as in the reference code."""
        for module in self.classifier.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.zeros_(module.bias)

    @property
    def last_conv(self) -> nn.Conv3d:
        """The last convolution (Grad-CAM's target layer)."""
        return self.features[-1][0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, n_classes) for input of shape (batch, 1, D, H, W)."""
        return self.classifier(self.features(x))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
