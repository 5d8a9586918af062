"""A two-input model as tokenizer-fed code writes it, for the several-inputs CLI tests (``--arch FILE:TwoInputNet``).

``forward(input_ids, attention_mask)``: token embedding, mean over the sequence with padding masked out,
a small MLP head. The task (:func:`make_split`): label 1 when the marker token occurs among the *real* tokens.
Padding positions hold random tokens, the marker among them, so a model that ignores the mask cannot
score well: the accuracy means both inputs reached the model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

VOCAB, SEQ, MARKER = 24, 12, 5


class TwoInputNet(nn.Module):
    def __init__(self, vocab: int = VOCAB, dim: int = 32):
        super().__init__()
        self.embeddings = nn.Embedding(vocab, dim)
        self.dense = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, 2)

    def forward(self, input_ids, attention_mask):
        hidden = self.embeddings(input_ids) * attention_mask.unsqueeze(-1)  # padding contributes nothing
        pooled = hidden.mean(1)
        return self.classifier(torch.relu(self.dense(pooled)))


def make_split(n: int, seed: int) -> dict[str, np.ndarray]:
    """``input_ids`` (int64), ``attention_mask`` (float32 0/1) and labels ``y``, balanced."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (n, SEQ))
    ids[ids == MARKER] = MARKER + 1
    lengths = rng.integers(3, SEQ + 1, n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.float32)
    y = rng.integers(0, 2, n)
    for i in range(n):
        if y[i]:  # the marker among the real tokens
            ids[i, rng.integers(0, lengths[i])] = MARKER
        if lengths[i] < SEQ and rng.random() < 0.5:  # and often in the padding, where it must not count
            ids[i, rng.integers(lengths[i], SEQ)] = MARKER
    return {"input_ids": ids, "attention_mask": mask, "y": y.astype(np.int64)}


def train(steps: int = 100, seed: int = 0) -> TwoInputNet:
    torch.manual_seed(seed)
    model = TwoInputNet()
    data = make_split(2048, seed + 100)
    ids, mask, y = (torch.from_numpy(data[k]) for k in ("input_ids", "attention_mask", "y"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(ids[idx], mask[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
