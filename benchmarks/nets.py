"""The nets and inputs the suite measures: reference architectures with random weights, smooth random images.

Random weights are enough for latency and for the accuracy *proxy* (agreement with fp32): what matters is
that activations have realistic ranges, which randomize_bn gives the BatchNorm layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compress.models import MobileNetV2, ResNet18, randomize_bn

ARCHS = {"resnet18": ResNet18, "mobilenetv2": MobileNetV2}


def build_net(arch: str, seed: int = 0) -> torch.nn.Module:
    """``arch`` with seeded random weights and non-trivial BatchNorm statistics, in eval mode."""
    if arch not in ARCHS:
        raise SystemExit(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
    torch.manual_seed(seed)
    return randomize_bn(ARCHS[arch](), seed).eval()


def smooth_images(n: int, resolution: int = 224, seed: int = 0) -> torch.Tensor:
    """``n`` image-like inputs ``[n, 3, r, r]``: smooth low-frequency structure plus a little fine noise,
    roughly zero-mean unit-variance like normalised photos (pure white noise has unrealistic statistics)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, 7, 7, generator=g)
    x = F.interpolate(coarse, size=(resolution, resolution), mode="bicubic", align_corners=False)
    x = x + 0.15 * torch.randn(n, 3, resolution, resolution, generator=g)
    gain = torch.rand(n, 1, 1, 1, generator=g) * 0.8 + 0.6  # images differ in contrast
    return (x / x.std(dim=(1, 2, 3), keepdim=True) * gain).contiguous()
