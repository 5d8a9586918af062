"""Distillation benchmark (issue 10): training-step cost, ours vs torchdistill, and the full schedule's int8 student.

    /tmp/bench-venv/bin/python benchmarks/run_distill.py           # full run: results/<machine>/distill-<date>.json
    /tmp/bench-venv/bin/python benchmarks/run_distill.py --quick   # fewer rounds / seeds / epochs
    python benchmarks/run_distill.py --no-peer                     # without torchdistill (not installed)

The peer runs from a benchmark environment only (never a package dependency); benchmarks/README.md says how
it is installed. Task: the bundled digits at 32×32 RGB (tests/zoo/data.py: 1438 train / 359 test). Teacher: the
zoo's torchvision-style ResNet at width 64 (~5 M parameters, trained here and cached in benchmarks/_build/);
student for the step cost and the peer comparison: the same ResNet at width 16 (the zoo's, ~0.3 M).

1. **Step cost**: one optimizer step (forward + backward + AdamW) at batch 64, one torch thread, each
   contender in a fresh process (compress.runtime.run_isolated), alternated round by round
   (compare_interleaved): the student alone (cross-entropy), the teacher's forward alone (eval, no grad), our
   distillation step (compress.distill.Distiller with logit KD), torchdistill's (DistillationBox.forward_process
   + post_forward_process, KDLoss). Goal: ours ≤ 1.3 × the student's step + the teacher's forward.
2. **Accuracy vs torchdistill**: the same teacher, student initialisation, data, batches per epoch, epochs,
   optimizer (AdamW), cosine schedule per step, T = 4 and KD weight 0.9; test accuracy per seed. Goal: ours ≥
   theirs. The same student trained alone (train_baseline, same steps) is the reference.
3. **The full schedule** (compress.schedule.run_schedule): the teacher pruned (half its channels), BN
   re-estimated, distilled from itself, QAT with the teacher still distilling, int8 ONNX; its accuracy against
   the teacher's and its onnxruntime latency against the teacher's fp32 file (isolated, interleaved, 1 thread).
   Goal: ≥ 4× faster within 1 point of the teacher's accuracy.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
for p in (str(REPO_ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

SCHEMA_VERSION = 1
PARTS = ("steps", "accuracy", "few_labels", "schedule")
TEACHER_WIDTH, STUDENT_WIDTH = 64, 16
T, KD_WEIGHT = 4.0, 0.9
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.0f} s] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds, seeds and epochs")
    p.add_argument("--no-peer", action="store_true", help="skip torchdistill")
    p.add_argument("--no-schedule", action="store_true", help="skip the full prune → distill → QAT schedule")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated parts to run, of {','.join(PARTS)}; with a subset, today's saved JSON "
                        "keeps the other parts' figures")
    p.add_argument("--rounds", type=int, default=None, help="alternated rounds per timing [5; quick 3]")
    p.add_argument("--results-dir", type=Path, default=HERE / "results")
    p.add_argument("--build-dir", type=Path, default=HERE / "_build" / "distill")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="re-write the Markdown page from a saved distill-*.json (no measuring)")
    args = p.parse_args(argv)
    args.parts = tuple(x.strip() for x in args.parts.split(",") if x.strip())
    if set(args.parts) - set(PARTS):
        p.error(f"unknown part(s) {sorted(set(args.parts) - set(PARTS))}; choose from {', '.join(PARTS)}")
    if args.no_schedule:
        args.parts = tuple(x for x in args.parts if x != "schedule")
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.seeds = (0,) if args.quick else (0, 1, 2)
    args.epochs = 3 if args.quick else 4
    return args


# ---------------------------------------------------------------- shared pieces


_TORCHVISION_STUB = []  # the Library object that declares the stub schemas must stay alive


def peer_import():
    """Import torchdistill. torchvision's compiled ops may not load beside a CPU-only torch (the only torchvision
    wheel at hand was built for a CUDA torch): torchvision then fails at import on the two op schemas its
    Python code registers fakes for. Declaring those schemas lets its pure-Python parts, all torchdistill's
    KD path needs, import."""
    import torch

    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_STUB.append(lib)
    import torchdistill

    return torchdistill


def digits32():
    from compress.io import Dataset
    from tests.zoo.data import digits32rgb

    train, test = digits32rgb()
    return Dataset(train.x, train.y, "digits32rgb-train"), Dataset(test.x, test.y, "digits32rgb-test")


def resnet(width: int):
    from tests.zoo.models import TorchvisionStyleResNet

    return TorchvisionStyleResNet(width=width)


def teacher_model(build_dir: Path, train, test, epochs: int = 8):
    """The width-64 teacher, trained once (seeded; cached under a key of this file and torch's version)."""
    import torch

    from compress.distill import DistillConfig, evaluate, train_baseline

    key = hashlib.sha256(f"{torch.__version__}:{TEACHER_WIDTH}:{epochs}".encode()).hexdigest()[:12]
    path = build_dir / f"teacher-w{TEACHER_WIDTH}-{key}.pt"
    model = resnet(TEACHER_WIDTH)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), evaluate(model.eval(), test), None
    t0 = time.perf_counter()
    torch.manual_seed(0)
    train_baseline(model, train, DistillConfig(epochs=epochs, lr=3e-3, batch_size=64, device="cpu"), progress=False)
    build_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval(), evaluate(model, test), time.perf_counter() - t0


# ---------------------------------------------------------------- 1. step cost (runs in child processes)


def measure_step(kind: str, batch: int, warmup: int, steps: int, threads: int = 1, seed: int = 0) -> dict:
    """Time ``steps`` training steps of ``kind`` (student | teacher_forward | ours | torchdistill)."""
    import torch
    import torch.nn.functional as F

    from compress.runtime.onnx_runner import peak_rss_bytes
    from compress.runtime.stats import LatencyStats

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    teacher, student = resnet(TEACHER_WIDTH).eval(), resnet(STUDENT_WIDTH).train()
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)
    if kind == "student":
        opt = torch.optim.AdamW(student.parameters(), lr=1e-3)

        def step():
            loss = F.cross_entropy(student(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    elif kind == "teacher_forward":
        def step():
            with torch.no_grad():
                teacher(x)
    elif kind == "ours":
        from compress.distill import Distiller, KDLoss

        d = Distiller(teacher, student, [KDLoss(T, KD_WEIGHT)]).build(x)
        opt = torch.optim.AdamW(d.trainable_parameters(), lr=1e-3)
        d.train()

        def step():
            out = d(x, target=y)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
    elif kind == "torchdistill":
        box = _peer_box(teacher, student, _TensorDataset(x, y), batch, epochs=1, lr=1e-3, steps_per_epoch=1)

        def step():
            box.post_forward_process(box.forward_process(x, y, {}))
    else:
        raise ValueError(f"unknown kind {kind!r}")
    samples = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        step()
        if i >= warmup:
            samples.append(time.perf_counter() - t)
    return {"latency": LatencyStats.from_seconds(samples, batch=batch).to_dict(), "samples_s": samples,
            "peak_rss_bytes": peak_rss_bytes(), "pid": os.getpid(), "threads": threads}


class _TensorDataset:
    """(x, y) samples for torchdistill's loaders (torch.utils.data.TensorDataset, built lazily)."""

    def __new__(cls, x, y):
        import torch

        return torch.utils.data.TensorDataset(torch.as_tensor(x), torch.as_tensor(y))


def _peer_box(teacher, student, dataset, batch: int, *, epochs: int, lr: float, steps_per_epoch: int, seed: int = 0):
    """torchdistill's DistillationBox with its KDLoss, AdamW and a per-step cosine schedule (our loop's)."""
    import torch

    peer_import()
    from torchdistill.core.distillation import get_distillation_box

    total = epochs * steps_per_epoch
    config = {
        "num_epochs": epochs,
        "train_data_loader": {"dataset_id": "train", "requires_supp": True,
                              "sampler": {"class_or_func": torch.utils.data.RandomSampler, "kwargs": {}},
                              "kwargs": {"batch_size": batch, "num_workers": 0}},
        "teacher": {"forward_proc": "forward_batch_only", "requires_grad": False, "wrapper": None},
        "student": {"forward_proc": "forward_batch_only", "requires_grad": True, "wrapper": None},
        "optimizer": {"key": "AdamW", "kwargs": {"lr": lr, "weight_decay": 0.0}},
        "scheduler": {"key": "CosineAnnealingLR", "kwargs": {"T_max": total, "eta_min": 0.0}, "scheduling_step": 1},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {"criterion": {
            "key": "KDLoss", "kwargs": {"student_module_path": ".", "student_module_io": "output",
                                        "teacher_module_path": ".", "teacher_module_io": "output",
                                        "temperature": T, "alpha": 1 - KD_WEIGHT, "beta": KD_WEIGHT,
                                        "reduction": "batchmean"}}, "weight": 1.0}}}},
    }
    torch.manual_seed(seed)
    return get_distillation_box(teacher, student, {"train": dataset}, config, torch.device("cpu"), None, False, 1)


def steps_summary(comp, kinds) -> dict:
    """Per round: (distill step − teacher forward) / student step, from the medians and from the minima (the
    steadier figure on a busy machine: contention only ever adds time); the goal is ≤ 1.3."""
    rows = {}
    for k in [k for k in ("ours", "torchdistill") if k in kinds]:
        row = {}
        for stat, key in (("median", "overhead_vs_student"), ("min", "overhead_by_minima")):
            v = {n: [r["latency"][stat] for r in comp.results[n]] for n in (k, "teacher_forward", "student")}
            per_round = sorted((d - t) / s for d, t, s in zip(v[k], v["teacher_forward"], v["student"], strict=True))
            row[key] = per_round[len(per_round) // 2]
            if stat == "median":
                row["median_ms"] = 1e3 * sorted(v[k])[len(v[k]) // 2]
                row["noise"] = (per_round[-1] - per_round[0]) / 2
        rows[k] = row
    return rows


def bench_steps(args, with_peer: bool) -> dict:
    from compress.runtime import Contender, compare_interleaved

    kinds = ["student", "teacher_forward", "ours"] + (["torchdistill"] if with_peer else [])
    cfg = {"batch": 64, "warmup": 3, "steps": 8 if args.quick else 15, "threads": 1}
    log(f"== step cost: {kinds}, {cfg}")
    cs = [Contender(k, "run_distill:measure_step", {"kind": k, **cfg}) for k in kinds]
    comp = compare_interleaved(cs, rounds=args.rounds)
    rows = steps_summary(comp, kinds)
    for k, r in rows.items():
        log(f"   {k}: (step − teacher forward) / student step = {r['overhead_vs_student']:.3f} ± {r['noise']:.3f}"
            f" (per-round minima: {r['overhead_by_minima']:.3f})")
    med = {k: [r["latency"]["median"] for r in comp.results[k]] for k in kinds}
    if "torchdistill" in kinds:
        rows["ours_vs_torchdistill"] = comp.ratio("ours", "torchdistill").to_dict()
    return {"config": cfg, "student_ms": 1e3 * sorted(med["student"])[len(med["student"]) // 2],
            "teacher_forward_ms": 1e3 * sorted(med["teacher_forward"])[len(med["teacher_forward"]) // 2],
            "contenders": rows, "comparison": comp.to_dict()}


# ---------------------------------------------------------------- 2. accuracy vs torchdistill


def _accuracy(model, test) -> float:
    import numpy as np
    import torch

    with torch.no_grad():
        return float(np.mean(model.eval()(torch.from_numpy(test.x)).argmax(1).numpy() == test.y))


def train_peer(teacher, train, test, epochs: int, seed: int) -> tuple[float, float]:
    import torch

    torch.manual_seed(seed)
    student = resnet(STUDENT_WIDTH)
    steps = -(-len(train) // 32)
    box = _peer_box(teacher, student, _TensorDataset(train.x, train.y), 32, epochs=epochs, lr=3e-3,
                    steps_per_epoch=steps, seed=seed)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        box.pre_epoch_process(epoch=epoch)
        for sample, targets, supp in box.train_data_loader:
            box.post_forward_process(box.forward_process(sample, targets, supp))
        box.student_model.eval()  # post_epoch_process would evaluate on a val loader; we evaluate once, below
    return _accuracy(student, test), time.perf_counter() - t0


def train_ours(teacher, train, test, epochs: int, seed: int, baseline: bool = False) -> tuple[float, float, int]:
    import torch

    from compress.distill import DistillConfig, distill, train_baseline

    cfg = DistillConfig(epochs=epochs, lr=3e-3, batch_size=32, temperature=T, alpha=KD_WEIGHT, seed=seed,
                        device="cpu")
    torch.manual_seed(seed)
    student = resnet(STUDENT_WIDTH)
    t0 = time.perf_counter()
    if baseline:
        result = train_baseline(student, train, cfg, progress=False)
    else:
        result = distill(teacher, student, train, cfg, progress=False)
    return _accuracy(result.student, test), time.perf_counter() - t0, result.steps


def bench_accuracy(args, teacher, train, test, with_peer: bool) -> dict:
    import torch

    torch.set_num_threads(1)
    rows = {"ours": [], "baseline": [], **({"torchdistill": []} if with_peer else {})}
    for seed in args.seeds:
        acc, s, steps = train_ours(teacher, train, test, args.epochs, seed)
        rows["ours"].append({"seed": seed, "accuracy": acc, "seconds": s, "steps": steps})
        acc, s, _ = train_ours(teacher, train, test, args.epochs, seed, baseline=True)
        rows["baseline"].append({"seed": seed, "accuracy": acc, "seconds": s})
        if with_peer:
            acc, s = train_peer(copy.deepcopy(teacher), train, test, args.epochs, seed)
            rows["torchdistill"].append({"seed": seed, "accuracy": acc, "seconds": s})
        log(f"   seed {seed}: " + ", ".join(f"{k} {100 * v[-1]['accuracy']:.2f}%" for k, v in rows.items()))
    return {"epochs": args.epochs, "batch": 32, "lr": 3e-3, "temperature": T, "kd_weight": KD_WEIGHT,
            "seeds": list(args.seeds), "runs": rows}


# ---------------------------------------------------------------- 2b. few labels + unlabelled transfer data


def bench_few_labels(args) -> dict:
    """The issue's task where a student alone falls short: the 8×8 digits, 10 labels per class, the other 1338
    training images as unlabelled transfer data; teacher DemoCNN width 64 on every label (the demo's setting),
    student the demo CNN; the baseline is the same student on the 100 labels for the same steps. torchdistill
    has no path for unlabelled inputs, so this part is ours against the baseline only."""
    import numpy as np
    import torch

    from compress.demo import load_digits
    from compress.distill import DistillConfig, distill, evaluate, train_baseline
    from compress.io import Dataset
    from compress.models import DemoCNN

    torch.set_num_threads(1)
    train, test = load_digits()
    torch.manual_seed(0)
    teacher = train_baseline(DemoCNN(width=64), train, DistillConfig(epochs=4, lr=3e-3, batch_size=64, device="cpu"),
                             progress=False).student
    rows = []
    for seed in args.seeds if len(args.seeds) > 1 else (0, 1, 2):  # the spread needs 3 seeds even in --quick
        rng = np.random.default_rng(seed)
        idx = np.concatenate([rng.permutation(np.flatnonzero(train.y == c))[:10] for c in range(10)])
        rest = np.setdiff1d(np.arange(len(train)), idx)
        labelled = Dataset(train.x[idx], train.y[idx], "few")
        transfer = Dataset(train.x[rest], None, "transfer")
        cfg = DistillConfig(epochs=3, lr=3e-3, device="cpu", seed=seed)
        torch.manual_seed(seed)
        d = distill(teacher, DemoCNN(), labelled, cfg, transfer=transfer, progress=False)
        torch.manual_seed(seed)
        b = train_baseline(DemoCNN(), labelled, cfg, steps=d.steps, progress=False)
        rows.append({"seed": seed, "distilled": _accuracy(d.student, test), "baseline": _accuracy(b.student, test),
                     "steps": d.steps})
        log(f"   few labels, seed {seed}: distilled {100 * rows[-1]['distilled']:.2f}%, "
            f"baseline {100 * rows[-1]['baseline']:.2f}%")
    return {"teacher_accuracy": evaluate(teacher, test), "labelled": 100, "unlabelled": int(len(train) - 100),
            "runs": rows}


# ---------------------------------------------------------------- 3. the full schedule


def bench_schedule(args, teacher, train, test, teacher_acc: float) -> dict:
    import torch

    from compress.distill import DistillConfig
    from compress.passes.prune import PruneConfig
    from compress.pipeline import QuantizeOptions
    from compress.runtime import Contender, compare_interleaved
    from compress.schedule import ScheduleConfig, run_schedule

    torch.set_num_threads(1)
    out = args.build_dir / "schedule"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    cfg = ScheduleConfig(prune=PruneConfig(channels=0.5, round_to=8),
                         distill=DistillConfig(epochs=args.epochs, lr=1e-3, device="cpu"),
                         qat=DistillConfig(epochs=1, lr=1e-4, device="cpu"), export=QuantizeOptions(), baseline=False)
    t0 = time.perf_counter()
    result = run_schedule(teacher, teacher, train, out, cfg, eval_data=test, progress=False)
    seconds = time.perf_counter() - t0
    report = result.report
    int8_acc = report["formats"]["onnx"]["int8"]["accuracy"]
    log(f"== schedule: stages {[(s['stage'], round(100 * s['metric'], 2)) for s in report['stages']]}, "
        f"int8 ONNX {100 * int8_acc:.2f}% (teacher {100 * teacher_acc:.2f}%) in {seconds:.0f} s")

    # The teacher's fp32 file, exported the way the schedule exports the student's, for isolated timing.
    from compress.exporters.onnx import export_onnx

    teacher_onnx = out / "teacher_fp32.onnx"
    export_onnx(teacher, (torch.from_numpy(test.x[:1]),), teacher_onnx)
    import numpy as np

    feeds = out / "feeds.npz"
    np.savez(feeds, x=test.x[:1])
    files = {"teacher_fp32": teacher_onnx, "student_fp32": out / "student_fp32.onnx",
             "student_int8": out / "student_int8.onnx"}
    cs = [Contender(k, "measure_onnx", {"path": str(p), "inputs": str(feeds), "threads": 1, "warmup": 20,
                                        "runs": 100 if args.quick else 200}) for k, p in files.items()]
    comp = compare_interleaved(cs, rounds=args.rounds)
    ratios = {k: comp.ratio("teacher_fp32", k).to_dict() for k in ("student_fp32", "student_int8")}
    ratios_min = {k: comp.ratio("teacher_fp32", k, statistic="min").to_dict() for k in ("student_fp32", "student_int8")}
    log(f"   teacher / int8 student latency = {ratios['student_int8']['ratio']:.2f} ± {ratios['student_int8']['noise']:.2f}")
    return {"seconds": seconds, "stages": report["stages"], "teacher_accuracy": teacher_acc,
            "int8_accuracy": int8_acc, "sizes": {k: p.stat().st_size for k, p in files.items()},
            "speedup": ratios, "speedup_by_minima": ratios_min, "comparison": comp.to_dict(),
            "config": report["config"]}


# ---------------------------------------------------------------- report


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "–"
    mean = sum(values) / len(values)
    return f"{100 * mean:.2f} % (± {100 * (max(values) - min(values)) / 2:.2f})"


def render_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# Distillation benchmark — {m['cpu']['model']}, {m['cpu']['usable_cores']} cores", "",
             f"{report['date']}, compress at {m['git']['commit'][:10]}{' (dirty)' if m['git']['dirty'] else ''}, "
             f"torch {m['versions'].get('torch')}, onnxruntime {m['versions'].get('onnxruntime')}, torchdistill "
             f"{report.get('torchdistill') or 'not installed'}; load average {report['load_average']['start']} → "
             f"{report['load_average']['end']}. Digits 32×32 RGB (1438 train / 359 test); teacher ResNet width "
             f"{TEACHER_WIDTH} ({report['teacher']['params']:,} parameters, {100 * report['teacher']['accuracy']:.2f} %"
             f" test), student ResNet width {STUDENT_WIDTH}.", ""]
    for run in report.get("partial_runs", []):
        lines += [f"Re-run later: {', '.join(run['parts'])} on {run['date']} at {run['commit'][:10]} (load average "
                  f"{run.get('load_average', {}).get('start')}).", ""]
    steps = report.get("steps")
    if steps:
        lines += ["## Training-step cost (batch 64, 1 thread, fresh process per measurement, interleaved)", "",
                  f"student step {steps['student_ms']:.1f} ms · teacher forward {steps['teacher_forward_ms']:.1f} ms", "",
                  "| contender | step (median) | (step − teacher forward) / student step | same, per-round minima | "
                  "goal ≤ 1.3 |", "|---|---|---|---|---|"]
        for k, r in steps["contenders"].items():
            if k == "ours_vs_torchdistill":
                continue
            ok = "PASS" if r["overhead_vs_student"] <= 1.3 else "MISS"
            lines.append(f"| {k} | {r['median_ms']:.1f} ms | {r['overhead_vs_student']:.3f} ± {r['noise']:.3f} | "
                         f"{r.get('overhead_by_minima', float('nan')):.3f} | {ok} |")
        if "ours_vs_torchdistill" in steps["contenders"]:
            r = steps["contenders"]["ours_vs_torchdistill"]
            lines += ["", f"ours / torchdistill step time, paired per round: {r['ratio']:.3f} ± {r['noise']:.3f}"]
        lines.append("")
    acc = report.get("accuracy")
    if acc:
        runs = acc["runs"]
        lines += [f"## Student accuracy: same teacher, student init, data, {acc['epochs']} epochs, batch "
                  f"{acc['batch']}, AdamW lr {acc['lr']} cosine, T {acc['temperature']}, KD weight {acc['kd_weight']}",
                  "", "| trainer | test accuracy, mean (± half range) over seeds " + str(acc["seeds"]) + " | per seed | "
                  "seconds (mean) |", "|---|---|---|---|"]
        for k, rows in runs.items():
            vals = [r["accuracy"] for r in rows]
            lines.append(f"| {k} | {_mean_spread(vals)} | {', '.join(f'{100 * v:.2f}' for v in vals)} | "
                         f"{sum(r['seconds'] for r in rows) / len(rows):.1f} |")
        if "torchdistill" in runs:
            gap = [a["accuracy"] - b["accuracy"] for a, b in zip(runs["ours"], runs["torchdistill"], strict=True)]
            lines += ["", f"ours − torchdistill per seed: {', '.join(f'{100 * g:+.2f}' for g in gap)} points "
                      f"(goal ≥ 0: {'PASS' if sum(gap) >= 0 else 'MISS'} on the mean)"]
        lines.append("")
    few = report.get("few_labels")
    if few:
        d = [r["distilled"] for r in few["runs"]]
        b = [r["baseline"] for r in few["runs"]]
        gains = [x - y for x, y in zip(d, b, strict=True)]
        noise = max((max(v) - min(v)) / 2 for v in (d, b))
        lines += [f"## Few labels + transfer: 8×8 digits, {few['labelled']} labels + {few['unlabelled']} unlabelled, "
                  f"teacher DemoCNN width 64 ({100 * few['teacher_accuracy']:.2f} %), student the demo CNN", "",
                  "| | test accuracy, mean (± half range) | per seed |", "|---|---|---|",
                  f"| distilled (+ transfer) | {_mean_spread(d)} | {', '.join(f'{100 * v:.2f}' for v in d)} |",
                  f"| baseline (100 labels, same steps) | {_mean_spread(b)} | {', '.join(f'{100 * v:.2f}' for v in b)} |",
                  "", f"gain per seed {', '.join(f'{100 * g:+.2f}' for g in gains)} points; the smallest gain "
                  f"{'exceeds' if min(gains) > 2 * noise else 'does not exceed'} the seed-to-seed spread "
                  f"(± {100 * noise:.2f}) twice over", ""]
    sched = report.get("schedule")
    if sched:
        sp, spm = sched["speedup"]["student_int8"], sched["speedup_by_minima"]["student_int8"]
        drop = sched["teacher_accuracy"] - sched["int8_accuracy"]
        ok = sp["ratio"] >= 4 and drop <= 0.01
        lines += ["## Full schedule: prune 50 % channels → BN re-estimate → distill → QAT with the teacher → int8 ONNX",
                  "", "| stage | accuracy (test) | parameters |", "|---|---|---|"]
        lines += [f"| {s['stage']} | {100 * s['metric']:.2f} % | {s['params']:,} |" for s in sched["stages"]]
        lines += [f"| int8 ONNX (onnxruntime) | {100 * sched['int8_accuracy']:.2f} % | |", "",
                  f"teacher fp32 / student int8 latency (onnxruntime, batch 1, 1 thread): **{sp['ratio']:.2f}× ± "
                  f"{sp['noise']:.2f}** (by per-round minima {spm['ratio']:.2f}×); fp32 student "
                  f"{sched['speedup']['student_fp32']['ratio']:.2f}×. Files: teacher {sched['sizes']['teacher_fp32'] / 1e6:.2f} MB, "
                  f"int8 student {sched['sizes']['student_int8'] / 1e6:.2f} MB. Accuracy "
                  + (f"{100 * abs(drop):.2f} points {'below' if drop > 0 else 'above'} the teacher's"
                     if abs(drop) > 1e-9 else "equal to the teacher's") + ". "
                  f"Goal (≥ 4× faster, within 1 point): **{'PASS' if ok else 'MISS'}**; "
                  f"schedule {sched['seconds']:.0f} s.", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        report = json.loads(args.render.read_text())
        steps = report.get("steps")
        if steps:
            from compress.runtime.isolate import Comparison

            saved = steps["comparison"]["contenders"]  # per-round medians and minima survive in the JSON
            comp = Comparison(list(saved), steps["comparison"]["rounds"], steps["comparison"]["order"],
                              {n: [{"latency": {"median": m, "min": mn}} for m, mn in
                                   zip(c["round_medians_s"], c["round_mins_s"], strict=True)] for n, c in saved.items()})
            steps["contenders"].update(steps_summary(comp, comp.names))
        md = render_markdown(report)
        (args.render.parent / ("distill-latest-quick.md" if report["quick"] else "distill-latest.md")).write_text(md)
        print(md)
        return 0
    import torch

    from compress.runtime import machine_description, machine_slug

    torch.set_num_threads(1)
    machine = machine_description()
    slug = machine_slug(machine)
    with_peer = not args.no_peer
    peer_version = None
    if with_peer:
        try:
            peer_version = peer_import().__version__
        except ImportError as exc:
            log(f"torchdistill not importable ({exc}); run with the benchmark venv (benchmarks/README.md) or --no-peer")
            return 2
    log(f"machine: {slug} ({machine['cpu']['model']}); torchdistill {peer_version}")
    load_start = os.getloadavg()
    train, test = digits32()
    teacher, teacher_acc, train_s = teacher_model(args.build_dir, train, test)
    log(f"teacher: {100 * teacher_acc:.2f}% ({f'trained in {train_s:.0f} s' if train_s else 'cached'})")
    report = {"schema_version": SCHEMA_VERSION, "date": dt.date.today().isoformat(), "quick": args.quick,
              "machine_slug": slug, "machine": machine, "torchdistill": peer_version,
              "teacher": {"width": TEACHER_WIDTH, "params": sum(p.numel() for p in teacher.parameters()),
                          "accuracy": teacher_acc}}
    saved = args.results_dir / slug / (f"distill-{report['date']}" + ("-quick" if args.quick else "") + ".json")
    earlier = sorted((args.results_dir / slug).glob("distill-????-??-??" + ("-quick" if args.quick else "") + ".json"))
    partial = set(args.parts) != set(PARTS) and bool(earlier)
    if partial:
        saved = earlier[-1]  # a partial run updates the latest full one: the other parts' figures stay as measured
        kept = json.loads(saved.read_text())
        report = {**kept, "partial_runs": kept.get("partial_runs", []) + [
            {"parts": list(args.parts), "date": report["date"], "commit": machine["git"]["commit"]}]}
    if "steps" in args.parts:
        report["steps"] = bench_steps(args, with_peer)
    if "accuracy" in args.parts:
        log("== accuracy: ours vs torchdistill vs the student alone")
        report["accuracy"] = bench_accuracy(args, teacher, train, test, with_peer)
    if "few_labels" in args.parts:
        log("== few labels + transfer: distilled vs the same-step baseline")
        report["few_labels"] = bench_few_labels(args)
    if "schedule" in args.parts:
        report["schedule"] = bench_schedule(args, teacher, train, test, teacher_acc)
    load = {"start": load_start, "end": os.getloadavg()}
    if partial:
        report["partial_runs"][-1]["load_average"] = load
    else:
        report["load_average"] = load
    md = render_markdown(report)
    print(md)
    if not args.no_save:
        out = args.results_dir / slug
        out.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(report, indent=1, default=str) + "\n")
        (out / ("distill-latest-quick.md" if args.quick else "distill-latest.md")).write_text(md)
        log(f"wrote {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
