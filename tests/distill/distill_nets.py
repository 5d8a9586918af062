"""Nets and data shared by the distillation tests (importable by spawned DDP workers: ``tests.distill.distill_nets``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compress.io import Dataset


class TinyNet(nn.Module):
    """conv → ReLU → conv → ReLU → global pool → linear; ``width`` channels (no BatchNorm, so DDP batch splits
    give exactly one process's loss)."""

    def __init__(self, width: int = 8, classes: int = 3, bn: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_data(n: int = 64, seed: int = 0, labelled: bool = True) -> Dataset:
    """Images [n, 1, 6, 6] whose class is the brightest third of the image (learnable by TinyNet)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 6, 6), dtype=np.float32)
    y = np.stack([x[:, 0, :2].mean((1, 2)), x[:, 0, 2:4].mean((1, 2)), x[:, 0, 4:].mean((1, 2))], 1).argmax(1)
    return Dataset(x, y if labelled else None, source="tiny")


class TinyEncoder(nn.Module):
    """Token embedding → self-attention (weights returned) → value-style projection → mean-pool classifier."""

    def __init__(self, width: int = 16, heads: int = 2, vocab: int = 12, classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.value = nn.Linear(width, width)
        self.head = nn.Linear(width, classes)

    def forward(self, ids):
        h = self.embed(ids)
        a, _ = self.attn(h, h, h, need_weights=True, average_attn_weights=False)
        v = self.value(h + a)
        return self.head(v.mean(1))
