"""The demo: train the small CNN on the bundled 8×8 digits, then run the whole quantization pipeline on it.

``compress demo`` calls :func:`run_demo`; everything is seeded, so two runs train the same network. Training
takes a few seconds on one CPU core; the rest of the time goes to calibration, export and verification.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.errors import ConfigError
from compress.io.data import Dataset
from compress.models import DemoCNN

__all__ = ["DEMO_ARCH", "distill_demo", "load_digits", "prune_demo", "run_demo", "train_demo_model"]

#: The --arch spec that rebuilds the demo network from the saved ``demo_cnn.pt`` state dict.
DEMO_ARCH = "compress.models:DemoCNN"
TEST_FRACTION = 0.2
CALIB_SAMPLES = 256


def load_digits(*, seed: int = 0) -> tuple[Dataset, Dataset]:
    """The bundled digits as (train, test) datasets: x float32 ``[N, 1, 8, 8]`` in [0, 1], y int64.

    The split is a fixed seeded permutation: 1438 train / 359 test samples.

    Example:
        >>> train, test = load_digits()
        >>> len(train), len(test), train.x.shape[1:], float(train.x.max())
        (1438, 359, (1, 8, 8), 1.0)
    """
    with resources.files("compress.data").joinpath("digits.npz").open("rb") as f, np.load(f) as arrays:
        x = arrays["x"].astype(np.float32)[:, None] / 16.0  # pixel values are 0..16
        y = arrays["y"].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * TEST_FRACTION))
    test_idx, train_idx = order[:n_test], order[n_test:]
    return (
        Dataset(x[train_idx], y[train_idx], source="digits-train"),
        Dataset(x[test_idx], y[test_idx], source="digits-test"),
    )


def _accuracy(model: nn.Module, data: Dataset) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for xb, yb in data.batches(512):
            correct += int((model(xb).argmax(1) == yb).sum())
    return correct / len(data)


def train_demo_model(
    train: Dataset, *, epochs: int = 6, lr: float = 3e-3, batch_size: int = 32, seed: int = 0, progress: bool = True
) -> DemoCNN:
    """Train :class:`~compress.models.DemoCNN` from scratch (Adam, cosine schedule), reproducibly from ``seed``.

    Args:
        train: labelled training data shaped ``[N, 1, 8, 8]``.
        epochs: passes over ``train``.
        lr: peak learning rate.
        batch_size: samples per step.
        seed: seeds the initial weights and the batch order.
        progress: show a rich progress bar on stderr.

    Returns:
        The trained model in eval mode.

    Example:
        >>> train, test = load_digits()
        >>> model = train_demo_model(train.take(64), epochs=1, progress=False)
        >>> model.training
        False
    """
    if epochs < 1:
        raise ConfigError(f"epochs must be ≥ 1, got {epochs}")
    if train.y is None:
        raise ConfigError("the demo model trains on labelled data; pass a Dataset with y")
    torch.manual_seed(seed)
    model = DemoCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = -(-len(train) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]train DemoCNN[/] epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not progress,
        transient=True,
    )
    # One thread: an 8×8 CNN gains nothing from intra-op parallelism, and on a busy machine torch's spinning
    # worker threads made training 6× slower (43 s vs 7 s measured here). It also makes runs bit-reproducible.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_loop(model, train, opt, sched, loss_fn, bar, epochs, steps_per_epoch, batch_size, seed)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _train_loop(model, train, opt, sched, loss_fn, bar, epochs, steps_per_epoch, batch_size, seed) -> None:
    with bar:
        task = bar.add_task("train", total=epochs * steps_per_epoch, epoch=1, loss=float("nan"))
        for epoch in range(epochs):
            model.train()
            for xb, yb in train.batches(batch_size, shuffle=True, seed=seed + epoch):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb), yb)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(task, advance=1, epoch=epoch + 1, loss=loss.item())


def run_demo(out_dir: str | Path, *, epochs: int = 6, qat: bool = False, progress: bool = True) -> dict:
    """Train the demo CNN on the bundled digits, quantize it, export and verify int8 ONNX and TFLite into ``out_dir``.

    Besides the pipeline's artifacts (``model.onnx``, ``model_fp32.onnx``, ``model.tflite``,
    ``model_fp32.tflite``, ``report.json``) it writes
    ``demo_cnn.pt`` (the trained float state dict) and ``calib.npz`` / ``test.npz`` (the data it used), so
    ``compress quantize out/demo_cnn.pt --arch compress.models:DemoCNN --calib out/calib.npz -o ...``
    reproduces the quantization step.

    Args:
        out_dir: an existing, empty directory (or one to create).
        epochs: float training epochs (QAT, when asked for, uses the pipeline's own epoch default).
        qat: fine-tune with quantization-aware training instead of calibrating only.
        progress: show rich progress bars.

    Returns:
        The pipeline's report (also in ``out_dir/report.json``), with a ``demo`` section: train/test sizes,
        float test accuracy measured in torch, training seconds.

    Example:
        >>> report = run_demo("demo-out", progress=False)  # doctest: +SKIP
        >>> report["int8"]["accuracy"] > 0.95  # doctest: +SKIP
        True
    """
    from compress.pipeline import QuantizeOptions, quantize_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, test = load_digits()
    start = time.perf_counter()
    model = train_demo_model(train, epochs=epochs, progress=progress)
    train_seconds = time.perf_counter() - start
    torch_accuracy = _accuracy(model, test)

    calib = Dataset(train.x[:CALIB_SAMPLES], train.y[:CALIB_SAMPLES], source="digits-calib")
    # Both formats: the table shows onnxruntime and LiteRT rows side by side. QAT epochs / lr: the defaults.
    options = QuantizeOptions(qat=qat, formats=("onnx", "tflite"))
    report = quantize_model(
        model, calib, out_dir, options, eval_data=test, train_data=train if qat else None, progress=progress
    )
    torch.save(model.state_dict(), out_dir / "demo_cnn.pt")
    np.savez(out_dir / "calib.npz", x=calib.x, y=calib.y)
    np.savez(out_dir / "test.npz", x=test.x, y=test.y)
    report["demo"] = {
        "train_samples": len(train),
        "test_samples": len(test),
        "epochs": epochs,
        "train_seconds": round(train_seconds, 2),
        "fp32_torch_accuracy": torch_accuracy,
        "arch": DEMO_ARCH,
    }
    _merge_into_report_file(out_dir / "report.json", "demo", report["demo"])
    report["pruned"] = prune_demo(model, train, test, calib, out_dir / "pruned")
    _merge_into_report_file(out_dir / "report.json", "pruned", report["pruned"])
    report["distilled"] = distill_demo(train, test, progress=progress)
    _merge_into_report_file(out_dir / "report.json", "distilled", report["distilled"])
    return report


PRUNE_CHANNELS = 0.5
PRUNE_EPOCHS = 2


def prune_demo(model: nn.Module, train: Dataset, test: Dataset, calib: Dataset, out_dir: Path) -> dict:
    """The demo's "pruned" rows: half the channels removed, fine-tuned, then the int8 pipeline on the result.

    Writes ``out_dir/plan.json`` and the quantize pipeline's files (``model_fp32.onnx``, ``model.onnx``,
    ``report.json``); returns the pruned model's parameters and its fp32 / int8 onnxruntime figures (accuracy
    on ``test``, size, latency). ``compress prune`` also saves the ``.pt2``; the demo skips it (2 s).
    """
    from compress.passes.prune import FinetuneConfig, PruneConfig, count_params, finetune, prune, save_plan
    from compress.pipeline import QuantizeOptions, quantize_model

    start = time.perf_counter()
    example = (torch.from_numpy(train.x[:2]),)
    result = prune(model, example, PruneConfig(channels=PRUNE_CHANNELS, round_to=4))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in training: a tiny CNN, a busy machine
    try:
        finetune(result.model, train, FinetuneConfig(epochs=PRUNE_EPOCHS, lr=3e-3, device="cpu"))
    finally:
        torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_plan(result.plan, out_dir / "plan.json")
    q = quantize_model(result.model, calib, out_dir, QuantizeOptions(formats=("onnx",)), eval_data=test,
                       progress=False)
    onnx = q["formats"]["onnx"]
    return {"channels_removed": PRUNE_CHANNELS, "finetune_epochs": PRUNE_EPOCHS,
            "params_before": count_params(model), "params_after": count_params(result.model),
            "fp32": onnx["fp32"], "int8": onnx["int8"], "parity": onnx["parity"].get("within_1lsb_fraction"),
            "seconds": round(time.perf_counter() - start, 2)}


DISTILL_TEACHER_WIDTH = 64
DISTILL_LABELS_PER_CLASS = 10
DISTILL_EPOCHS = 3


def distill_demo(train: Dataset, test: Dataset, *, progress: bool = True) -> dict:
    """The demo's distillation rows: a wider teacher teaches the demo CNN from 10 labels per class.

    The teacher (``DemoCNN(width=64)``, ~2.5× the demo CNN's MACs) is trained on every labelled image, as a
    large model you already have would be; the student sees 10 labelled images per class and the rest of the
    training images without labels (the teacher labels them). The baseline is the same student trained on
    the same 100 labels alone for the same number of optimizer steps.

    Returns:
        Test accuracies of the teacher, the distilled student and the baseline, the sample counts, seconds.
    """
    from compress.distill import DistillConfig, distill, evaluate, train_baseline

    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in training: small CNNs, a busy machine
    try:
        torch.manual_seed(0)
        teacher = train_baseline(DemoCNN(width=DISTILL_TEACHER_WIDTH), train,
                                 DistillConfig(epochs=4, lr=3e-3, batch_size=64, device="cpu"), progress=progress).student
        rng = np.random.default_rng(0)
        idx = np.concatenate([rng.permutation(np.flatnonzero(train.y == c))[:DISTILL_LABELS_PER_CLASS]
                              for c in range(10)])
        rest = np.setdiff1d(np.arange(len(train)), idx)
        labelled = Dataset(train.x[idx], train.y[idx], source="digits-few-labels")
        transfer = Dataset(train.x[rest], None, source="digits-unlabelled")
        cfg = DistillConfig(epochs=DISTILL_EPOCHS, lr=3e-3, device="cpu")
        torch.manual_seed(0)
        distilled = distill(teacher, DemoCNN(), labelled, cfg, transfer=transfer, progress=progress)
        torch.manual_seed(0)
        baseline = train_baseline(DemoCNN(), labelled, cfg, steps=distilled.steps, progress=progress)
    finally:
        torch.set_num_threads(threads)
    return {"teacher_width": DISTILL_TEACHER_WIDTH, "student_width": 40, "labelled": len(labelled),
            "unlabelled": len(transfer), "steps": distilled.steps, "teacher_accuracy": evaluate(teacher, test),
            "distilled_accuracy": evaluate(distilled.student, test),
            "baseline_accuracy": evaluate(baseline.student, test), "seconds": round(time.perf_counter() - start, 2)}


def _merge_into_report_file(path: Path, key: str, value: dict) -> None:
    import json

    if not path.exists():
        return
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data, indent=2) + "\n")
