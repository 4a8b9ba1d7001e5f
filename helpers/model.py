"""ResNet-18 with the CIFAR stem and a width multiplier (He et al., 2016).

The CIFAR stem replaces ImageNet's 7×7 stride-2 convolution and max-pool by one 3×3 stride-1 convolution,
so a 32×32 image keeps its resolution into the first stage (32 → 32 → 16 → 8 → 4).
``width`` is the number of channels of the first stage: 64 gives the standard ResNet-18 (feature size 512),
16 gives width/4 (feature size 128).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm and an identity (or 1×1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@dataclass
class Outputs:
    """What one forward pass returns: logits (B, K), penultimate features h (B, D) and,
    when asked for, the globally average-pooled output of each of the 8 residual blocks."""

    logits: Tensor
    features: Tensor
    blocks: list[Tensor] | None = None


class ResNet18(nn.Module):
    """CIFAR ResNet-18: stem, four stages of two :class:`BasicBlock` each, global pooling, linear classifier."""

    def __init__(self, num_classes: int = 100, width: int = 64) -> None:
        super().__init__()
        self.num_classes, self.width = num_classes, width
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, c_in = [], width
        for stage, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for i in range(2):
                blocks.append(BasicBlock(c_in, c_out, 2 if (stage > 0 and i == 0) else 1))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(8 * width, num_classes)

    @property
    def feature_dim(self) -> int:
        return 8 * self.width

    @property
    def block_dims(self) -> list[int]:
        return [b.conv2.out_channels for b in self.blocks]

    def body(self, x: Tensor, blocks: bool = False) -> tuple[Tensor, list[Tensor]]:
        """The convolutional part: last feature map (B, D, 4, 4) and, when asked, each block's pooled output."""
        out, pooled = self.stem(x), []
        for block in self.blocks:
            out = block(out)
            if blocks:
                pooled.append(out.mean((2, 3)))                         # (B, C_l)
        return out, pooled

    def run(self, x: Tensor, blocks: bool = False) -> Outputs:
        """Forward pass returning logits, penultimate features and (optionally) pooled block outputs."""
        out, pooled = self.body(x, blocks)
        h = out.mean((2, 3))                                           # (B, D)
        return Outputs(self.fc(h), h, pooled if blocks else None)

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x).logits


def build_model(num_classes: int, width: int, device: torch.device | str = "cpu") -> ResNet18:
    """A fresh ResNet-18 on ``device`` (channels_last on CUDA, where it speeds up convolutions)."""
    model = ResNet18(num_classes, width).to(device)
    if torch.device(device).type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model
