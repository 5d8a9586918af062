"""Quantization modes vs onnxruntime's quantizers (issue 8): a BERT-shaped encoder and the LSTM net, 1 thread.

    python benchmarks/run_transformer.py            # results/<machine>/modes-<date>.json + modes-latest.md
    python benchmarks/run_transformer.py --quick    # fewer rounds and runs (-quick files)

Models:

* ``bert``: the zoo's HF-style BERT code (tests/zoo/models_seq.py: separate query/key/value nn.Linear, additive
  mask, GELU, LayerNorm) at real scale — hidden 384, 6 layers, 6 heads, FFN 1536, 128 tokens, a 384-wide
  output (a sentence embedding) — with random weights at torch's default init (latency; cosine vs fp32);
* ``zoo_bert``: the trained zoo BERT-style encoder (tests/zoo, HF-style code with an additive mask): task
  accuracy and output cosine of each file on held-out data — what random weights cannot show;
* ``audio_lstm``: the trained zoo Conv1d + 2-layer LSTM voice-activity net: accuracy and latency.

Contenders, each an ONNX file run in onnxruntime: fp32 (our exporter); ours in each mode (static,
dynamic, weight-only; prepare → calibrate → convert → export_onnx, uint8 activations); onnxruntime's
``quantize_dynamic`` (QInt8 weights, per channel) and ``quantize_static`` (QDQ, per channel, after
quant_pre_process) on our fp32 file. Latency: one fresh process per measurement, contenders interleaved round
by round (compress.runtime.compare_interleaved), paired ratios. Accuracy: per-sample runs (batch 1) of every
file on the same inputs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parent), str(HERE)):  # run from a checkout; tests.zoo and the benchmark helpers
    if p not in sys.path:
        sys.path.insert(1, p)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from artifacts import Artifact, onnx_opsets, quantize_peer  # noqa: E402
from run_seq import _commit, _first_line, _op_histogram, onnx_outputs  # noqa: E402

from compress.runtime import Contender, compare_interleaved, machine_description, machine_slug  # noqa: E402

SCHEMA_VERSION = 1
MODES = ("static", "dynamic", "weight-only")
FP32, PEER_DYN, PEER_STATIC = "fp32", "ort_quantize_dynamic", "ort_quantize_static"
OURS = {m: f"ours_{m.replace('-', '_')}" for m in MODES}
SEQ = 128
BERT_KWARGS = dict(vocab_size=8000, hidden_size=384, num_hidden_layers=6, num_labels=384, max_len=SEQ)
BERT_HEADS = 6

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.0f} s] {msg}", file=sys.stderr, flush=True)


def load(name: str, args) -> tuple[torch.nn.Module, dict]:
    """(float model, data): calib / eval inputs (numpy, the model's one input) and labels when trained."""
    if name == "bert":
        from tests.zoo.models_seq import BertEncoder, BertStyleEncoder

        torch.manual_seed(0)
        model = BertStyleEncoder(**BERT_KWARGS)
        model.config.num_attention_heads = BERT_HEADS  # the zoo class fixes 2 heads; MiniLM-L6 has 12 of 32
        model.encoder = BertEncoder(model.config)
        model.eval()
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(1, BERT_KWARGS["vocab_size"], (args.calib + args.eval, SEQ), generator=g)
        return model, {"input": "input_ids", "calib": ids[:args.calib].numpy(), "eval": ids[args.calib:].numpy(),
                       "y": None, "data": f"random token ids, {SEQ} tokens, random weights (torch default init)"}
    from tests.zoo.train import trained

    model, calib, test = trained({"zoo_bert": "bert"}.get(name, name))
    (input_name,) = calib.inputs
    return model.eval(), {"input": input_name, "calib": calib.inputs[input_name][:args.calib],
                          "eval": test.inputs[input_name][:args.eval], "y": test.y[:args.eval],
                          "data": "tests/zoo task data (trained weights), held-out split"}


def build(name: str, model, data: dict, out: Path) -> dict[str, Artifact]:
    from compress.exporters.onnx import export_onnx
    from compress.passes import calibrate, convert, prepare
    from compress.quant.config import QuantConfig

    out.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(data["eval"][:1])
    calib = torch.from_numpy(data["calib"])
    arts: dict[str, Artifact] = {}
    t0 = time.perf_counter()
    export_onnx(model, (example,), out / "fp32.onnx")
    arts[FP32] = Artifact(FP32, out / "fp32.onnx", time.perf_counter() - t0, info={"opset": onnx_opsets(out / "fp32.onnx")})
    for mode in MODES:
        t0 = time.perf_counter()
        path = out / f"{OURS[mode]}.onnx"
        try:
            prepared = prepare(model, (example,), QuantConfig(mode=mode))
            calibrate(prepared, [calib[i:i + 8] for i in range(0, len(calib), 8)], progress=False)
            export_onnx(convert(prepared), (example,), path)
            info = prepared.compress_info
            arts[OURS[mode]] = Artifact(OURS[mode], path, time.perf_counter() - t0, info={
                "ops": _op_histogram(path), "layer_modes": sorted(set(info.layer_modes.values())),
                "float_layers": [f.name for f in info.float_ops if "(mode)" in f.reason]})
        except Exception as exc:  # noqa: BLE001 - one failing contender must not hide the others
            arts[OURS[mode]] = Artifact(OURS[mode], None, error=_first_line(exc))
    t0 = time.perf_counter()
    try:
        import onnxruntime
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(out / "fp32.onnx"), str(out / f"{PEER_DYN}.onnx"), weight_type=QuantType.QInt8,
                         per_channel=True)
        arts[PEER_DYN] = Artifact(PEER_DYN, out / f"{PEER_DYN}.onnx", time.perf_counter() - t0, info={
            "ops": _op_histogram(out / f"{PEER_DYN}.onnx"), "settings": "weight_type=QInt8, per_channel=True",
            "tool": f"onnxruntime.quantization.quantize_dynamic {onnxruntime.__version__}"})
    except Exception as exc:  # noqa: BLE001
        arts[PEER_DYN] = Artifact(PEER_DYN, None, error=_first_line(exc))
    try:
        art = quantize_peer(out / "fp32.onnx", data["calib"], data["input"], out)
        art.name, art.info["ops"] = PEER_STATIC, _op_histogram(art.path)
        arts[PEER_STATIC] = art
    except Exception as exc:  # noqa: BLE001
        arts[PEER_STATIC] = Artifact(PEER_STATIC, None, error=_first_line(exc))
    return arts


def quality(reference: np.ndarray, other: np.ndarray, y: np.ndarray | None) -> dict:
    a, b = reference.reshape(len(reference), -1).astype(np.float64), other.reshape(len(other), -1).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)
    out = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
           "top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1)))}
    if y is not None:
        out["accuracy"] = float(np.mean(other.argmax(1) == y))
    return out


def bench(name: str, args) -> dict:
    log(f"== {name}: building contenders")
    model, data = load(name, args)
    arts = build(name, model, data, args.build_dir / name)
    for n, a in arts.items():
        log(f"   {n}: " + (f"{a.path.stat().st_size / 2**20:.2f} MB" if a.ok else f"NOT AVAILABLE ({a.error})"))
    ref = onnx_outputs(arts[FP32].path, data["eval"])
    result = {"data": data["data"], "eval_samples": len(data["eval"]), "calib_samples": len(data["calib"]),
              "artifacts": {n: a.to_dict() for n, a in arts.items()}, "quality": {}, "batches": {}}
    for n, a in arts.items():
        if a.ok:
            result["quality"][n] = quality(ref, onnx_outputs(a.path, data["eval"]), data["y"])
            log(f"   {n}: {result['quality'][n]}")
    ok = [n for n, a in arts.items() if a.ok]
    for batch in args.batches:
        feeds = args.build_dir / name / f"input_b{batch}.npz"
        np.savez(feeds, **{data["input"]: np.ascontiguousarray(data["eval"][:batch])})
        common = {"inputs": str(feeds), "threads": 1, "warmup": args.warmup, "runs": args.runs, "batch": batch}
        cs = [Contender(n, "measure_onnx", {"path": str(arts[n].path), **common}) for n in ok]
        log(f"== {name} batch {batch}: {args.rounds} interleaved rounds of {ok}")
        comp = compare_interleaved(cs, rounds=args.rounds, progress=lambda d, t, n: log(f"    [{d}/{t}] {n}"))
        ratios = {f"{n}/{den}": comp.ratio(n, den).to_dict() for n in ok for den in (FP32, PEER_DYN, PEER_STATIC)
                  if n != den and den in ok}
        result["batches"][str(batch)] = {"comparison": comp.to_dict(), "ratios": ratios,
                                         "median_ms": {n: 1e3 * float(np.median(comp.medians(n))) for n in ok}}
    return result


def render_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# Quantization modes vs onnxruntime: {report['machine_slug']}", "",
             f"{report['date']} · commit {report['commit']} · CPU {m['cpu']['model']} ({m['cpu']['logical_cores']} cores) · 1 thread · "
             f"onnxruntime {report['versions']['onnxruntime']} · torch {report['versions']['torch']} · rounds "
             f"{report['config']['rounds']} × runs {report['config']['runs']}"
             + (" · QUICK" if report["quick"] else ""),
             "", f"int8 ISA: {', '.join(f for f in m['cpu'].get('isa', []) if 'vnni' in f or 'amx' in f) or 'none'}"
             f" · load average at start / end: {_load(report['load_average']['start'])} / "
             f"{_load(report['load_average']['end'])} (other jobs shared the 2 cores: read the ± noise)", ""]
    for name, res in report["models"].items():
        batches = list(res["batches"])
        lines += [f"## {name}", "", f"{res['data']}; quality on {res['eval_samples']} samples (batch 1), "
                  f"calibration {res['calib_samples']}.", ""]
        head = ["file", "MB", "cosine vs fp32 (mean / min)", "accuracy"]
        for b in batches:
            head += [f"b{b} ms", f"b{b} vs ort dynamic", f"b{b} vs ort static"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for n, art in res["artifacts"].items():
            if art.get("error"):
                lines.append(f"| {n} | – | not available: {art['error'][:80]} |" + " |" * (len(head) - 3))
                continue
            q = res["quality"][n]
            row = [n, f"{art['bytes'] / 2**20:.2f}", f"{q['cosine_mean']:.4f} / {q['cosine_min']:.4f}",
                   f"{100 * q['accuracy']:.1f}%" if "accuracy" in q else "–"]
            for b in batches:
                rb = res["batches"][b]
                row.append(f"{rb['median_ms'][n]:.2f}")
                for den in (PEER_DYN, PEER_STATIC):
                    r = rb["ratios"].get(f"{n}/{den}")
                    row.append(f"{r['ratio']:.3f} ± {r['noise']:.3f}" if r else "–")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += ["Ratios: paired per round, median latency of the row's file / the peer's (< 1: ours is faster).", ""]
    return "\n".join(lines)


def _load(avg) -> str:
    return f"{avg[0]:.1f}" if avg else "?"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds and runs")
    p.add_argument("--models", default="bert,zoo_bert,audio_lstm", help="comma-separated: bert,zoo_bert,audio_lstm")
    p.add_argument("--batches", default="1,8", help="batch sizes to time")
    p.add_argument("--calib", type=int, default=32, help="calibration samples")
    p.add_argument("--eval", type=int, default=200, help="held-out samples for cosine / accuracy")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 5; quick 3)")
    p.add_argument("--runs", type=int, help="timed runs per measurement process (default 20; quick 8)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per process")
    p.add_argument("--build-dir", type=Path, default=HERE / "_build" / "modes", help="where ONNX files go")
    p.add_argument("--results-dir", type=Path, default=HERE / "results", help="root of the results tree")
    p.add_argument("--no-save", action="store_true", help="print the Markdown only")
    a = p.parse_args(argv)
    a.models = a.models.split(",")
    a.batches = [int(b) for b in a.batches.split(",")]
    if any(m not in ("bert", "zoo_bert", "audio_lstm") for m in a.models) or any(b < 1 for b in a.batches):
        p.error("--models takes bert,zoo_bert,audio_lstm; --batches positive integers, e.g. --batches 1,8")
    a.rounds = a.rounds or (3 if a.quick else 5)
    a.runs = a.runs or (8 if a.quick else 20)
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    machine = machine_description()
    slug = machine_slug(machine)
    log(f"machine: {slug}")
    load_start = os.getloadavg()
    models = {name: bench(name, args) for name in args.models}
    import onnx
    import onnxruntime

    report = {"schema_version": SCHEMA_VERSION, "date": dt.date.today().isoformat(), "quick": args.quick,
              "machine_slug": slug, "machine": machine, "commit": _commit(),
              "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                           "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__},
              "config": {"rounds": args.rounds, "runs": args.runs, "warmup": args.warmup, "batches": args.batches,
                         "bert": {**BERT_KWARGS, "heads": BERT_HEADS}},
              "models": models, "load_average": {"start": load_start, "end": os.getloadavg()},
              "wall_s": time.perf_counter() - _T0}
    md = render_markdown(report)
    print(md)
    if not args.no_save:
        out = args.results_dir / slug
        out.mkdir(parents=True, exist_ok=True)
        stem = f"modes-{report['date']}" + ("-quick" if args.quick else "")
        (out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        (out / ("modes-latest-quick.md" if args.quick else "modes-latest.md")).write_text(md)
        log(f"wrote {out / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
