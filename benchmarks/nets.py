"""The nets and inputs the suite measures: reference architectures with random weights, smooth random images.

Random weights are enough for latency and for the accuracy *proxy* (agreement with fp32): what matters is
that activations have realistic ranges, which randomize_bn gives the BatchNorm layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compress.models import MobileNetV2, ResNet18, randomize_bn

ARCHS = {"resnet18": ResNet18, "mobilenetv2": MobileNetV2}


def build_net(arch: str, seed: int = 0, reestimate_bn: bool = True) -> torch.nn.Module:
    """``arch`` with seeded random weights and non-trivial BatchNorm statistics, in eval mode.

    With ``reestimate_bn`` the BatchNorm running statistics are then measured on 32 smooth images (seed
    distinct from calibration and evaluation). Without it, a random-weight MobileNetV2 loses the input
    signal on the way down (its pooled features came out identical for every image), so neither the
    quantizers' ranges nor the accuracy proxy would mean anything.
    """
    if arch not in ARCHS:
        raise SystemExit(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
    torch.manual_seed(seed)
    model = randomize_bn(ARCHS[arch](), seed)
    if reestimate_bn:
        x = smooth_images(32, 224, seed=seed + 1000)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average: one pass gives the exact batch statistics
        with torch.no_grad():
            model.train()(x)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.1
    return model.eval()


def smooth_images(n: int, resolution: int = 224, seed: int = 0) -> torch.Tensor:
    """``n`` image-like inputs ``[n, 3, r, r]``: smooth low-frequency structure plus a little fine noise,
    roughly zero-mean unit-variance like normalised photos (pure white noise has unrealistic statistics)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, 7, 7, generator=g)
    x = F.interpolate(coarse, size=(resolution, resolution), mode="bicubic", align_corners=False)
    x = x + 0.15 * torch.randn(n, 3, resolution, resolution, generator=g)
    gain = torch.rand(n, 1, 1, 1, generator=g) * 0.8 + 0.6  # images differ in contrast
    return (x / x.std(dim=(1, 2, 3), keepdim=True) * gain).contiguous()


def spread_head(model: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> torch.nn.Module:
    """Re-draw the last Linear layer so random-weight logits depend on the input.

    With random weights the pooled features barely vary between inputs, so one class wins everywhere and
    "top-1 agreement" proves nothing. Standardising the head's input over ``x`` (the calibration images) and
    drawing fresh unit-scale weights spreads the arg-max over many classes.
    """
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    seen = {}
    hook = head.register_forward_hook(lambda m, inp, out: seen.setdefault("x", inp[0].detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    feats = seen["x"]
    mu = feats.mean(0)
    # Floor the spread: a feature that barely moves on 32 images must not get a huge weight.
    sd = feats.std(0).clamp_min(0.25 * float(feats.std(0).median()) + 1e-6)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(head.out_features, head.in_features, generator=g) / head.in_features**0.5
    with torch.no_grad():
        head.weight.copy_(w / sd)
        head.bias.copy_(-(w / sd) @ mu)
    return model
