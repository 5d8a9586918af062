"""Advanced PTQ on the zoo: the int8 ONNX metric before / after each technique (``compress quantize --ptq``).

    python benchmarks/run_ptq.py                 # results/<machine>/ptq.json and ptq.md
    python benchmarks/run_ptq.py --models bert   # a subset
    python benchmarks/run_ptq.py --render results/<machine>/ptq.json

Every row is one :func:`compress.pipeline.quantize_model` run (the CLI's job) with the zoo's 256 calibration
samples; the int8 file is verified in onnxruntime and then measured on the held-out test split: accuracy,
top-1 agreement and mean cosine of the outputs with the fp32 ONNX file. Besides the zoo entries,
``lite0_relu6`` is EfficientNet-Lite0's own recipe of the zoo's depthwise net (ReLU6 instead of SiLU, no
squeeze-excite: what Lite0 changed from B0 for int8), and ``lite0_relu_spread`` the same with ReLU (as DFQ
runs MobileNetV2) whose channels are then rescaled across each ReLU by up to 10x either way
(:func:`spread_channels`: the same float function, the per-channel range spread real checkpoints have and a
5-epoch run on digits does not), the case cross-layer equalization is built for. The per-tensor-weight rows
are DFQ's setting, where per-channel weight scales cannot hide the spread of the depthwise channels.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (label, ptq techniques, observer, per-tensor weights); the first row of a model is its baseline.
RUNS = {
    "lite0_relu_spread": [("static int8", "", "minmax", False), ("cle", "cle", "minmax", False),
                          ("bias-correction", "bias-correction", "minmax", False),
                          ("cle + bias-correction", "cle,bias-correction", "minmax", False),
                          ("cle + bias-correction + adaround", "cle,adaround,bias-correction", "minmax", False),
                          ("per-tensor weights", "", "minmax", True),
                          ("per-tensor + cle", "cle", "minmax", True),
                          ("per-tensor + cle + bias-correction", "cle,bias-correction", "minmax", True)],
    "lite0_relu6": [("static int8", "", "minmax", False), ("cle + bias-correction", "cle,bias-correction", "minmax", False),
                    ("per-tensor weights", "", "minmax", True),
                    ("per-tensor + cle + bias-correction", "cle,bias-correction", "minmax", True)],
    "efficient_lite": [("static int8", "", "minmax", False), ("cle", "cle", "minmax", False),
                       ("bias-correction", "bias-correction", "minmax", False), ("auto range", "", "auto", False)],
    "bert": [("static int8", "", "minmax", False), ("smoothquant", "smoothquant", "minmax", False),
             ("auto range", "", "auto", False), ("smoothquant + auto range", "smoothquant", "auto", False),
             ("bias-correction", "bias-correction", "minmax", False)],
    "audio_lstm": [("static int8", "", "minmax", False), ("bias-correction", "bias-correction", "minmax", False),
                   ("auto range", "", "auto", False)],
}


def lite0(act=None):
    """The zoo's EfficientLiteStyle with Lite0's int8 changes: ReLU6 everywhere, squeeze-excite removed."""
    from torch import nn

    from tests.zoo.models import EfficientLiteStyle

    act = act or nn.ReLU6
    net = EfficientLiteStyle()
    net.act1, net.act2 = act(), act()
    for block in net.blocks:
        block.act1, block.act2, block.se = act(), act(), nn.Identity()
    return net


def spread_channels(net, seed: int = 0, decades: float = 1.0):
    """Rescale every expand → depthwise → project channel by 10^U(-decades, decades) across its ReLU.

    relu(a * x) / a == relu(x): the float function is unchanged (exactly, up to float rounding), only the
    parametrization moves, as long training with weight decay moves real checkpoints (DFQ, Fig. 2: MobileNetV2's
    folded depthwise ranges span two decades). BatchNorm's gain and shift take the factor, the next conv's
    input channel its inverse.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in net.blocks:
            for bn, conv in ((block.bn1, block.conv_dw), (block.bn2, block.conv_pwl)):
                a = 10 ** ((torch.rand(bn.num_features, generator=g) * 2 - 1) * decades)
                bn.weight.mul_(a)
                bn.bias.mul_(a)
                if conv.groups > 1:  # depthwise: channel i reads input i only
                    conv.weight.div_(a.reshape(-1, 1, 1, 1))
                else:
                    conv.weight.div_(a.reshape(1, -1, 1, 1))
    return net


def _variant(name: str):
    """(model builder, after-training transform) of the benchmark's own variants of the depthwise net."""
    from torch import nn

    if name == "lite0_relu6":
        return lite0, None
    if name == "lite0_relu_spread":
        return (lambda: lite0(nn.ReLU)), spread_channels
    return None


def trained_model(name: str):
    """(model, calib, test) of a zoo entry, or of a Lite0-recipe variant (trained like efficient_lite, cached)."""
    import torch

    from tests.zoo import train as zoo

    variant = _variant(name)
    if variant is None:
        return zoo.trained(name)
    build, transform = variant
    entry = zoo.ZOO["efficient_lite"]
    train_split, test = zoo.task_data(entry)
    base = name.removesuffix("_spread")
    path = zoo.cache_dir() / f"ptq-{base}-{zoo.source_key('efficient_lite', 0)}.pt"
    model = build()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        class Variant(type(entry)):
            def build(self):
                return build()

        torch.set_num_threads(1)
        model = zoo._fit(Variant(**{k: getattr(entry, k) for k in entry.__dataclass_fields__}), train_split, 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    model = model.eval()
    if transform is not None:
        model = transform(model)
    return model, train_split.take(zoo.CALIB_SAMPLES), test


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)))


def run_model(name: str, workdir: Path) -> list[dict]:
    from compress.errors import CompressError
    from compress.io import Dataset
    from compress.pipeline import QuantizeOptions, quantize_model
    from tests.zoo.harness import run_onnx

    model, calib, test = trained_model(name)
    calib_ds = Dataset(dict(calib.inputs), None, f"{name} calib")
    test_ds = Dataset(dict(test.inputs), test.y, f"{name} test")
    rows = []
    for label, ptq, observer, per_tensor in RUNS[name]:
        out = workdir / f"{name}-{len(rows)}"
        options = QuantizeOptions(ptq=tuple(ptq.split(",")), observer=observer, per_tensor=per_tensor,
                                  latency_runs=3, accept_degraded=True)
        t0 = time.perf_counter()
        try:
            report = quantize_model(model, calib_ds, out, options, eval_data=test_ds, progress=False)
        except CompressError as exc:
            rows.append({"model": name, "run": label, "error": str(exc)})
            print(f"{name:15s} {label:35s} ERROR {exc}", flush=True)
            continue
        seconds = time.perf_counter() - t0
        fp32, int8 = run_onnx(out / "model_fp32.onnx", test), run_onnx(out / "model.onnx", test)
        row = {"model": name, "run": label, "ptq": ptq, "observer": observer, "per_tensor": per_tensor,
               "fp32_accuracy": report["fp32"].get("accuracy"), "int8_accuracy": report["int8"].get("accuracy"),
               "agreement": report["int8"].get("top1_agreement"), "cosine": _cosine(fp32, int8),
               "verified": report["parity"].get("passed", True),
               "within_1lsb": report["parity"].get("within_1lsb_fraction"), "seconds": seconds,
               "ptq_report": _summary(report.get("ptq", {}))}
        rows.append(row)
        print(f"{name:15s} {label:35s} acc {row['int8_accuracy']:.4f} agree {row['agreement']:.4f} "
              f"cos {row['cosine']:.4f} ({seconds:.0f} s)", flush=True)
    return rows


def _summary(ptq: dict) -> dict:
    """The headline of each technique's report section (the full one is in report.json)."""
    out = {}
    if "cle" in ptq:
        c = ptq["cle"]
        out["cle"] = f"{len(c['pairs'])} pairs, channel range spread {c['spread_before'] or 1:.1f}x -> " \
                     f"{c['spread_after'] or 1:.1f}x"
    if "smoothquant" in ptq:
        s = ptq["smoothquant"]
        ratios = [(g["act_max_over_mean_before"], g["act_max_over_mean_after"]) for g in s["groups"]]
        out["smoothquant"] = f"{len(s['groups'])} groups smoothed, {len(s['skipped'])} skipped" + (
            f", activation max/mean {np.median([r[0] for r in ratios]):.1f} -> {np.median([r[1] for r in ratios]):.1f}"
            if ratios else "")
    if "adaround" in ptq:
        a = ptq["adaround"]["layers"]
        before, after = sum(r["mse_nearest"] for r in a), sum(r["mse_adaround"] for r in a)
        out["adaround"] = f"{len(a)} layers, summed layer-output MSE {before:.3g} -> {after:.3g}"
    if "bias_correction" in ptq:
        b = ptq["bias_correction"]["layers"]
        out["bias_correction"] = f"{len(b)} biases, max shift removed {max(r['max_abs_shift'] for r in b):.3g}"
    if "auto_range" in ptq:
        out["auto_range"] = ", ".join(f"{k} {v}" for k, v in sorted(ptq["auto_range"]["chosen"].items()))
    return out


def render(result: dict) -> str:
    lines = [f"# Advanced PTQ on the zoo ({result['machine']})", "",
             f"compress at {result['commit']}, {result['date']}. Int8 ONNX (uint8 activations, per-channel weights "
             "unless marked), 256 calibration samples, metrics on the held-out test split in onnxruntime: "
             "accuracy, top-1 agreement and mean cosine of the outputs with the fp32 ONNX file. "
             "Produced by `python benchmarks/run_ptq.py`.", "",
             "| model | run | fp32 acc | int8 acc | agreement | cosine | verified | time | what changed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['run']} | | | | | error: {r['error'][:80]} | | |")
            continue
        changed = "; ".join(f"{k}: {v}" for k, v in r["ptq_report"].items())
        lines.append(f"| {r['model']} | {r['run']} | {r['fp32_accuracy']:.4f} | {r['int8_accuracy']:.4f} | "
                     f"{r['agreement']:.4f} | {r['cosine']:.4f} | {'yes' if r['verified'] else 'NO'} | "
                     f"{r['seconds']:.0f} s | {changed} |")
    lines += ["", "Models: `lite0_relu6` is the zoo's depthwise net with EfficientNet-Lite0's int8 recipe (ReLU6, no "
              "squeeze-excite); `lite0_relu_spread` the same with ReLU whose channels are rescaled across each ReLU by "
              "10^U(-1, 1) after training (the same float function, the per-channel spread of real checkpoints: DFQ, "
              "Fig. 2); the others are the zoo's. A row marked error failed verification in onnxruntime (static "
              "int8 with and without the technique alike: the verifier's verdict, not the technique's)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(RUNS), help="comma-separated: " + ", ".join(RUNS))
    parser.add_argument("--render", type=Path, help="re-write the page from a saved ptq.json")
    args = parser.parse_args(argv)
    from compress.runtime.machine import git_commit, machine_slug

    if args.render:
        result = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(render(result))
        return 0
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows += run_model(name.strip(), Path(tmp))
    slug = machine_slug()
    commit = (git_commit(ROOT) or {}).get("commit", "unknown")
    result = {"machine": slug, "commit": str(commit)[:7], "date": dt.datetime.now(dt.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"), "rows": rows}
    out = ROOT / "benchmarks" / "results" / slug
    out.mkdir(parents=True, exist_ok=True)
    (out / "ptq.json").write_text(json.dumps(result, indent=1))
    (out / "ptq.md").write_text(render(result))
    print(f"wrote {out / 'ptq.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
