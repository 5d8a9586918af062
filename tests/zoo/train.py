"""The zoo registry and ``trained(name) -> (model, calib, test)``: every zoo model trained once, cached.

Training is seeded and runs on one CPU thread, so a given source tree always produces the same
weights. Results are cached in this process and on disk (``$COMPRESS_ZOO_CACHE`` or
``~/.cache/compress-zoo``) under a key hashing the zoo's source files, the model name and the seed: editing a
model, its data or the training code retrains it; CI re-runs load the state dict in well under a second.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data as zoo_data
from .data import METRICS, Split

ZOO_DIR = Path(__file__).resolve().parent
#: Module path of the architectures, as the CLI's --arch takes it when run from the repository root.
ARCH_MODULE = "tests.zoo.models"


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry: the architecture, its generated task and what training must reach."""

    name: str
    cls: str  # class name in tests/zoo/models.py
    task: str  # generator in tests/zoo/data.py
    loss: str  # "classify" | "seq2seq" | "segment"
    metric: str  # key of data.METRICS
    target: float  # the float model reaches at least this on the test split (tests check it)
    epochs: int = 8
    lr: float = 3e-3
    batch_size: int = 64
    task_kwargs: dict = field(default_factory=dict)
    weights_from: str | None = None  # reuse another entry's trained weights instead of training

    @property
    def arch(self) -> str:
        return f"{ARCH_MODULE}:{self.cls}"

    def build(self) -> nn.Module:
        module = importlib.import_module(".models", __package__)
        return getattr(module, self.cls)()


ZOO: dict[str, ZooModel] = {m.name: m for m in (
    ZooModel("shape_checked", "ShapeCheckedClassifier", "digits28", "classify", "accuracy", 0.93, epochs=6),
    ZooModel("bert", "BertStyleEncoder", "token_order", "classify", "accuracy", 0.95, epochs=10, lr=3e-3,
             task_kwargs={"n": 2000}),
    ZooModel("bert_two_input", "BertStyleEncoderWithMask", "token_order", "classify", "accuracy", 0.95,
             task_kwargs={"n": 2000, "with_mask": True}, weights_from="bert"),
    ZooModel("efficient_lite", "EfficientLiteStyle", "digits32rgb", "classify", "accuracy", 0.95, epochs=5),
    ZooModel("resnet", "TorchvisionStyleResNet", "digits32rgb", "classify", "accuracy", 0.95, epochs=8),
    ZooModel("audio_lstm", "AudioConvLSTM", "audio_windows", "classify", "accuracy", 0.95, epochs=16, lr=1e-2),
    ZooModel("gru_seq2seq", "GRUSeq2Seq", "reverse_tokens", "seq2seq", "token_accuracy", 0.90, epochs=8,
             lr=1e-2, batch_size=128),
    ZooModel("unet", "SmallUNet", "shapes_segmentation", "segment", "mean_iou", 0.88, epochs=6, batch_size=32,
             task_kwargs={"n": 700}),
)}


@dataclass
class TrainResult:
    model: nn.Module
    calib: Split
    test: Split
    metric: float  # the float model's metric on ``test``
    train_s: float  # training time when it was trained (cached runs report the original figure)
    cached: bool


CALIB_SAMPLES = 256
_MEMO: dict[tuple[str, int], TrainResult] = {}


def cache_dir() -> Path:
    return Path(os.environ.get("COMPRESS_ZOO_CACHE") or Path.home() / ".cache" / "compress-zoo")


def source_key(name: str, seed: int) -> str:
    """Hash of the sources that decide the weights (models, data, training) + name + seed: the cache key."""
    h = hashlib.sha256(f"{name}:{seed}:{torch.__version__}".encode())
    for path in sorted(ZOO_DIR.glob("models*.py")) + [ZOO_DIR / "data.py", ZOO_DIR / "train.py"]:
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def task_data(entry: ZooModel, seed: int = 0) -> tuple[Split, Split]:
    return getattr(zoo_data, entry.task)(seed, **entry.task_kwargs)


def evaluate(model: nn.Module, split: Split, metric: str, batch_size: int = 256) -> float:
    outputs = predict(model, split, batch_size)
    return METRICS[metric](outputs, split.y)


def predict(model: nn.Module, split: Split, batch_size: int = 256) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        chunks = [model(*split.tensors(i, i + batch_size)).numpy() for i in range(0, len(split), batch_size)]
    return np.concatenate(chunks)


def _loss(entry: ZooModel, model: nn.Module, inputs: tuple[torch.Tensor, ...], y: torch.Tensor) -> torch.Tensor:
    if entry.loss == "seq2seq":
        logits = model(*inputs, target_tensor=y)  # teacher forcing while training
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return F.cross_entropy(model(*inputs), y)  # [N, C] classes or [N, C, H, W] pixels alike


def _fit(entry: ZooModel, train: Split, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = entry.build()
    opt = torch.optim.AdamW(model.parameters(), lr=entry.lr, weight_decay=1e-4)
    steps = -(-len(train) // entry.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=entry.lr, total_steps=entry.epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(entry.epochs):
        order = torch.randperm(len(train), generator=gen).numpy()
        for i in range(steps):
            idx = order[i * entry.batch_size:(i + 1) * entry.batch_size]
            inputs = tuple(torch.from_numpy(v[idx]) for v in train.inputs.values())
            loss = _loss(entry, model, inputs, torch.from_numpy(train.y[idx]))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # keeps the recurrent nets' short runs stable
            opt.step()
            sched.step()
    return model.eval()


def trained(name: str, seed: int = 0) -> tuple[nn.Module, Split, Split]:
    """The zoo model ``name`` trained on its task: (float model in eval mode, calibration split, test split)."""
    r = train_result(name, seed)
    return r.model, r.calib, r.test


def train_result(name: str, seed: int = 0) -> TrainResult:
    """:func:`trained` with the float metric, the training time and whether it came from the cache."""
    if (name, seed) in _MEMO:
        return _MEMO[(name, seed)]
    entry = ZOO[name]
    train, test = task_data(entry, seed)
    calib = train.take(CALIB_SAMPLES)
    path = cache_dir() / f"{name}-{source_key(name, seed)}.pt"
    model = entry.build()
    cached = path.is_file()
    if cached:
        blob = torch.load(path, weights_only=True)
        model.load_state_dict(blob["state_dict"])
        train_s = float(blob["train_s"])
    elif entry.weights_from is not None:
        source = train_result(entry.weights_from, seed)
        model.load_state_dict(source.model.state_dict())
        train_s = 0.0
    else:
        threads = torch.get_num_threads()
        # One thread: these nets are too small for intra-op parallelism, and on a busy 2-core machine torch's
        # spinning workers made a BERT step 12x slower with 2 threads (0.93 s vs 0.075 s measured here).
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        try:
            model = _fit(entry, train, seed)
        finally:
            torch.set_num_threads(threads)
        train_s = time.perf_counter() - t0
    model.eval()
    metric = evaluate(model, test, entry.metric)
    if not cached:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"state_dict": model.state_dict(), "train_s": train_s, "metric": metric}, tmp)
        os.replace(tmp, path)  # atomic: parallel test workers never read a half-written file
    result = TrainResult(model, calib, test, metric, train_s, cached)
    _MEMO[(name, seed)] = result
    return result
