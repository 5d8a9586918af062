"""A digits MLP with one layer that static int8 destroys, for the sensitivity tests (``--arch`` by file path).

``fc1`` gets a weight of ``OUTLIER`` on input pixel 0, which is 0 in every sample :func:`digits` returns: the float
function is unchanged, but the per-channel int8 grid of every row of ``fc1`` is 2·OUTLIER/254 wide, so its real
weights (|w| < 1) round to 0 and the int8 model guesses. Reverting ``fc1`` alone to float recovers it (weight-only
keeps the same int8 weight grid, so it does not); the other layers cost almost nothing.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

NET_FILE = Path(__file__).resolve()
DIGITS = Path(__file__).resolve().parents[2] / "compress" / "data" / "digits.npz"
OUTLIER = 500.0


class SensitiveMLP(nn.Module):
    def __init__(self, hidden: int = 32):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 10)

    def forward(self, x):
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(x)))


def digits() -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits as [N, 64] floats in [0, 1] with pixel 0 forced to 0 (it is 0 in the data anyway)."""
    with np.load(DIGITS) as arrays:
        x = arrays["x"].reshape(len(arrays["x"]), -1).astype(np.float32) / 16.0
        y = arrays["y"].astype(np.int64)
    x[:, 0] = 0.0
    return x, y


def trained_net(seed: int = 0, outlier: bool = True) -> SensitiveMLP:
    """Trained on the first 1200 digits, with the outlier weight planted in ``fc1`` (a fresh copy per call)."""
    net = copy.deepcopy(_trained(seed))
    if outlier:
        with torch.no_grad():
            net.fc1.weight[:, 0] = OUTLIER
    return net.eval()


@functools.lru_cache(maxsize=2)
def _trained(seed: int) -> SensitiveMLP:
    # Full-batch Adam, 60 steps (~0.5 s on one idle core, 91 % test accuracy); trained once per process.
    x, y = digits()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net: worker threads only fight the other processes on a busy machine
    try:
        return _fit(x, y, seed)
    finally:
        torch.set_num_threads(threads)


def _fit(x: np.ndarray, y: np.ndarray, seed: int) -> SensitiveMLP:
    torch.manual_seed(seed)
    net = SensitiveMLP()
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    xt, yt = torch.from_numpy(x[:1200]), torch.from_numpy(y[:1200])
    for _ in range(60):
        loss = nn.functional.cross_entropy(net(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def agreement_with_labels(outputs: np.ndarray, batch) -> float:
    """A custom ``--metric``: top-1 accuracy written by hand (``batch`` is the evaluated Dataset)."""
    return float((outputs.argmax(1) == batch.y).mean())
