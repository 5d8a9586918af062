"""Deterministic generated tasks for the zoo: small enough to train each model in seconds, hard enough that a
broken int8 file shows in the metric.

Every generator takes a seed and returns ``(train, test)`` :class:`Split` s. Inputs are keyed by the name of
the ``forward`` parameter they feed (``x`` for single-input models, ``input_ids`` / ``attention_mask`` for the
two-input BERT), so the same arrays can be written as the ``.npz`` files ``compress quantize`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Read from the source tree rather than through `compress.demo.load_digits`: the zoo must generate its data
# (and the model tests must run) even while the library is mid-change. Same file, same split rule as the demo.
DIGITS_NPZ = Path(__file__).resolve().parents[2] / "compress" / "data" / "digits.npz"

# Token vocabulary of the BERT task: 0 is padding (the mask is derived from it), 1 is [CLS], A / B are the two
# marker tokens whose order is the label, the rest are filler.
PAD, CLS, TOKEN_A, TOKEN_B, N_TOKENS = 0, 1, 2, 3, 16
BERT_MAX_LEN = 16

# Seq2seq vocabulary: 0 pad, 1 SOS (the decoder's start token, models_seq.SOS_token), 2 EOS, 3.. symbols.
S2S_PAD, S2S_SOS, S2S_EOS, S2S_VOCAB, S2S_SRC_LEN, S2S_STEPS = 0, 1, 2, 12, 6, 12

AUDIO_SAMPLES, AUDIO_RATE = 400, 8000
SEG_SIZE = 32


@dataclass
class Split:
    """Model inputs by ``forward`` parameter name (first axis = samples) and the targets ``y``."""

    inputs: dict[str, np.ndarray]
    y: np.ndarray

    @property
    def x(self) -> np.ndarray:
        """The single input of a one-input model."""
        if len(self.inputs) != 1:
            raise AttributeError(f"this split has several inputs ({', '.join(self.inputs)}); use .inputs")
        return next(iter(self.inputs.values()))

    def __len__(self) -> int:
        return len(self.y)

    def take(self, n: int) -> Split:
        return Split({k: v[:n] for k, v in self.inputs.items()}, self.y[:n])

    def tensors(self, start: int = 0, stop: int | None = None) -> tuple[torch.Tensor, ...]:
        """The inputs of samples ``start:stop`` as tensors, in ``forward``'s parameter order."""
        return tuple(torch.from_numpy(v[start:stop]) for v in self.inputs.values())


def _split(inputs: dict[str, np.ndarray], y: np.ndarray, n_test: int, seed: int) -> tuple[Split, Split]:
    order = np.random.default_rng(seed + 1000).permutation(len(y))
    test, train = order[:n_test], order[n_test:]
    return (Split({k: v[train] for k, v in inputs.items()}, y[train]),
            Split({k: v[test] for k, v in inputs.items()}, y[test]))


def load_digits(seed: int = 0) -> tuple[Split, Split]:
    """The bundled 8x8 digits [N, 1, 8, 8] in [0, 1]: 1438 train / 359 test (compress.demo's split)."""
    with np.load(DIGITS_NPZ) as arrays:
        x = arrays["x"].astype(np.float32)[:, None] / 16.0  # pixel values are 0..16
        y = arrays["y"].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * 0.2))
    test_idx, train_idx = order[:n_test], order[n_test:]
    return Split({"x": x[train_idx]}, y[train_idx]), Split({"x": x[test_idx]}, y[test_idx])


def _resized_digits(size: int, channels: int) -> tuple[Split, Split]:
    # The bundled 8x8 digits, bilinearly upsampled: the pipeline sees real image statistics at the input
    # sizes the public architectures expect (28x28 MNIST, 32x32 RGB).
    train, test = load_digits()
    out = []
    for part in (train, test):
        x = F.interpolate(torch.from_numpy(part.x), size=(size, size), mode="bilinear", align_corners=False)
        if channels == 3:
            # Three differently-scaled copies, so the channels are not identical (as in real RGB input).
            x = torch.cat([x, 0.8 * x, 1.0 - 0.6 * x], dim=1)
        out.append(Split({"x": x.numpy().astype(np.float32)}, part.y.astype(np.int64)))
    return out[0], out[1]


def digits28(seed: int = 0) -> tuple[Split, Split]:
    """Digits at [N, 1, 28, 28] (1438 train / 359 test), labels 0..9."""
    return _resized_digits(28, 1)


def digits32rgb(seed: int = 0) -> tuple[Split, Split]:
    """Digits at [N, 3, 32, 32] (1438 train / 359 test), labels 0..9."""
    return _resized_digits(32, 3)


def token_order(seed: int = 0, n: int = 3000, n_test: int = 500, *, with_mask: bool = False) -> tuple[Split, Split]:
    """``[CLS] ... A ... B ... [PAD]*``: label 1 when token A comes before token B.

    Lengths vary from 5 to 16 with padding id 0, so the model needs positions (the sliced buffer) and the
    mask (padding must not be attended). ``with_mask`` adds the tokenizer-style ``attention_mask`` input.
    """
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, BERT_MAX_LEN), dtype=np.int64)
    y = rng.integers(0, 2, n)
    for i in range(n):
        length = int(rng.integers(5, BERT_MAX_LEN + 1))
        ids[i, 0] = CLS
        ids[i, 1:length] = rng.integers(4, N_TOKENS, length - 1)
        a, b = sorted(rng.choice(np.arange(1, length), 2, replace=False))
        first, second = (TOKEN_A, TOKEN_B) if y[i] == 1 else (TOKEN_B, TOKEN_A)
        ids[i, a], ids[i, b] = first, second
    inputs = {"input_ids": ids}
    if with_mask:
        inputs["attention_mask"] = (ids != PAD).astype(np.int64)
    return _split(inputs, y.astype(np.int64), n_test, seed)


def audio_windows(seed: int = 0, n: int = 1500, n_test: int = 300) -> tuple[Split, Split]:
    """50 ms windows at 8 kHz, [N, 1, 400]: 0 = steady tone, 1 = white noise, 2 = linear chirp.

    Tones and chirps cover the same frequency band and carry background noise, so the net must track the
    frequency over time (the LSTM's job) rather than detect energy.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(AUDIO_SAMPLES) / AUDIO_RATE
    x = np.zeros((n, 1, AUDIO_SAMPLES), dtype=np.float32)
    y = rng.integers(0, 3, n)
    for i in range(n):
        amp = rng.uniform(0.3, 1.0)
        phase = rng.uniform(0, 2 * np.pi)
        if y[i] == 0:
            sig = np.sin(2 * np.pi * rng.uniform(300, 2500) * t + phase)
        elif y[i] == 1:
            sig = rng.standard_normal(AUDIO_SAMPLES) * 0.5
        else:
            f0, f1 = rng.uniform(300, 2500, 2)
            while abs(f1 - f0) < 800:
                f0, f1 = rng.uniform(300, 2500, 2)
            k = (f1 - f0) / t[-1]
            sig = np.sin(2 * np.pi * (f0 * t + 0.5 * k * t**2) + phase)
        x[i, 0] = amp * sig + 0.05 * rng.standard_normal(AUDIO_SAMPLES)
    return _split({"x": x}, y.astype(np.int64), n_test, seed)


def reverse_tokens(seed: int = 0, n: int = 4000, n_test: int = 500) -> tuple[Split, Split]:
    """Source: 6 symbols (ids 3..11), [N, 6]. Target over 12 decoder steps: the source reversed, EOS, padding."""
    rng = np.random.default_rng(seed)
    src = rng.integers(3, S2S_VOCAB, (n, S2S_SRC_LEN)).astype(np.int64)
    tgt = np.full((n, S2S_STEPS), S2S_PAD, dtype=np.int64)
    tgt[:, :S2S_SRC_LEN] = src[:, ::-1]
    tgt[:, S2S_SRC_LEN] = S2S_EOS
    return _split({"x": src}, tgt, n_test, seed)


def shapes_segmentation(seed: int = 0, n: int = 1200, n_test: int = 200) -> tuple[Split, Split]:
    """[N, 1, 32, 32] noisy images with 1-3 filled squares and discs; y [N, 32, 32]: 0 bg, 1 square, 2 disc.

    Squares and discs have the same brightness range, so the classes differ only by shape (needs context).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SEG_SIZE, :SEG_SIZE]
    x = np.zeros((n, 1, SEG_SIZE, SEG_SIZE), dtype=np.float32)
    y = np.zeros((n, SEG_SIZE, SEG_SIZE), dtype=np.int64)
    for i in range(n):
        img = rng.normal(0.1, 0.08, (SEG_SIZE, SEG_SIZE))
        for _ in range(int(rng.integers(1, 4))):
            kind = int(rng.integers(1, 3))
            r = int(rng.integers(4, 8))
            cy, cx = rng.integers(r, SEG_SIZE - r, 2)
            if kind == 1:
                mask = (abs(yy - cy) <= r - 1) & (abs(xx - cx) <= r - 1)
            else:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
            img[mask] = rng.uniform(0.5, 1.0)
            y[i][mask] = kind
        x[i, 0] = img
    return _split({"x": x}, y, n_test, seed)


# ----------------------------------------------------------------------------------------------- metrics


def accuracy(outputs: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of logits ``[N, C]``."""
    return float(np.mean(outputs.argmax(-1) == y))


def token_accuracy(outputs: np.ndarray, y: np.ndarray) -> float:
    """Seq2seq: fraction of the reversed symbols and the EOS (the first 7 steps) decoded correctly.

    The padding steps after EOS are left out: they are free to hold anything and would inflate the figure.
    """
    n = S2S_SRC_LEN + 1
    return float(np.mean(outputs[:, :n].argmax(-1) == y[:, :n]))


def mean_iou(outputs: np.ndarray, y: np.ndarray) -> float:
    """Segmentation: IoU per class (background, square, disc) over the whole set, averaged."""
    pred = outputs.argmax(1)
    ious = []
    for c in range(outputs.shape[1]):
        inter = np.sum((pred == c) & (y == c))
        union = np.sum((pred == c) | (y == c))
        ious.append(inter / union if union else 1.0)
    return float(np.mean(ious))


METRICS = {"accuracy": accuracy, "token_accuracy": token_accuracy, "mean_iou": mean_iou}
