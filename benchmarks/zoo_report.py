"""The zoo benchmark's table (benchmarks/run_zoo.py): contender names, verdicts and the Markdown page.

Kept apart from run_zoo.py, which measures: ``python benchmarks/run_zoo.py --render zoo-DATE.json`` re-writes
the page from a saved report with this module alone.
"""

from __future__ import annotations

# Contender names (the Comparison's keys) and what they are.
FP32, OURS, PEER, FP32_TFL, OURS_TFL = "fp32_onnx", "ours_onnx", "peer_onnx", "fp32_tflite", "ours_tflite"
LABELS = {FP32: "fp32 ONNX (written by the pipeline)", OURS: "ours int8 ONNX (compress quantize)",
          PEER: "onnxruntime quantize_static (QDQ u8s8, per-channel)", FP32_TFL: "fp32 TFLite (pipeline)",
          OURS_TFL: "ours int8 TFLite (compress quantize)"}
RATIOS = ((OURS, FP32), (PEER, FP32), (OURS, PEER), (OURS_TFL, FP32_TFL))
PEER_SETTINGS = "QDQ, per_channel=True, activations QUInt8, weights QInt8, MinMax, after quant_pre_process"


def latencies(res: dict) -> dict[int, dict]:
    """{batch: {"comparison", "ratios"}} of every batch measured."""
    out = {1: res["latency"]} if res.get("latency") else {}
    for b, lat in (res.get("latency_batches") or {}).items():
        if lat.get("ratios"):
            out[int(b)] = lat
    return out


def goal_verdict(ratio: dict | None, limit: float = 1.0) -> dict | None:
    """PASS when the paired median ratio is ≤ limit; ``within_noise`` when the rounds' range straddles it."""
    if not ratio:
        return None
    r = ratio["median"]
    return {"status": "PASS" if r["ratio"] <= limit else "MISS", "within_noise": r["low"] <= limit <= r["high"],
            "ratio": r["ratio"], "noise": r["noise"], "limit": limit}


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(x, fmt=".3f") -> str:
    return "–" if x is None else format(x, fmt)


def _ratio_cell(r: dict | None) -> str:
    if not r:
        return "–"
    return f"{r['median']['ratio']:.2f} ± {r['median']['noise']:.2f} (min {r['min']['ratio']:.2f})"


def _size_cell(res: dict, num: str, den: str) -> str:
    b = res.get("bytes", {})
    return f"{100 * b[num] / b[den]:.0f} %" if num in b and den in b and b[den] else "–"


def _metric(res: dict, fmt: str, kind: str):
    f = (res.get("cli") or {}).get("formats", {}).get(fmt) or {}
    return f.get(f"{kind}_metric")


def _coverage(res: dict, fmt: str) -> str:
    f = (res.get("cli") or {}).get("formats", {}).get(fmt) or {}
    c = f.get("coverage")
    return "–" if not c else f"{c['int8']}/{c['total']}"


def _status(res: dict) -> str:
    cli = res.get("cli") or {}
    fm = cli.get("formats", {})
    parts = []
    for fmt in ("onnx", "tflite"):
        f = fm.get(fmt) or {}
        if f.get("written"):
            parts.append(f"{fmt}: " + ("✓ verified" if f.get("verified") else "written, not verified"))
        else:
            ours = OURS if fmt == "onnx" else OURS_TFL
            parts.append(f"{fmt}: ✗" + (" (files written, CLI failed)" if ours in res.get("bytes", {}) else ""))
    return " · ".join(parts)


def render_markdown(report: dict) -> str:
    m = report["machine"]
    cpu, v, git, cfg = m["cpu"], m["versions"], m.get("git") or {}, report["config"]
    big = [b for b in cfg.get("batches", [1]) if b > 1]
    lines = [
        f"# Zoo benchmark: {report['machine_slug']}", "",
        f"{report['date']}{' (quick run)' if report['quick'] else ''} · compress from {report['source']} · "
        f"benchmark commit `{(git.get('commit') or '?')[:10]}`{' (dirty tree)' if git.get('dirty') else ''} · "
        f"`python benchmarks/run_zoo.py{' --quick' if report['quick'] else ''}`", "",
        f"**Machine**: {cpu['model']} ({cpu['arch']}), {cpu['logical_cores']} logical cores; ISA: "
        f"{', '.join(cpu['isa']) or 'unknown'}; {m['os']['platform']}; Python {m['python']['version']}; "
        f"torch {v.get('torch')}, onnxruntime {v.get('onnxruntime')}, ai-edge-litert {v.get('ai-edge-litert')}.", "",
        "Each zoo model (tests/zoo, trained and cached) goes through `compress quantize --format onnx,tflite` in "
        "its own process, as scripts/zoo_status.py runs it; the peer is onnxruntime's `quantize_static` "
        f"({PEER_SETTINGS}) on the fp32 ONNX the pipeline wrote, calibrated on the same {report['calib_samples']} "
        "inputs. Metrics on the test split (≤ 400 samples) in onnxruntime / LiteRT.", "",
        "Latency: batch 1" + (f" (all files) and batch {', '.join(map(str, big))} (the three ONNX files)" if big else "")
        + ", 1 thread, one session per fresh process, contenders alternated round by round "
        f"({cfg['rounds']} rounds; per process ≥ {cfg['runs']} timed runs and ≥ {cfg['seconds']} s of them, after "
        f"{cfg['warmup']} warm-up runs). Ratios are paired "
        "within each round: median over rounds ± half their range (the noise estimate; a ratio within it of 1 is "
        "no difference), with the ratio of per-round minima beside it. < 1 means faster.", "",
        f"Load average (1, 5, 15 min) at start {_load(report, 'start')}, at end {_load(report, 'end')}: other "
        "processes on this 2-core machine are the main source of noise.", "",
        "## Quality, size, capture", "",
        "| model | params | files (CLI) | metric | fp32 → ours ONNX · peer | fp32 → ours TFLite | size vs fp32: ours "
        "ONNX · peer · ours TFLite | int8 conv/linear/matmul ONNX · TFLite · peer | capture s (first · again) "
        "| first error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in report["models"].items():
        cap = res.get("capture_time")
        peer = res.get("peer") or {}
        pc = peer.get("coverage")
        err = (res.get("cli") or {}).get("first_error") or next(iter(res["errors"].values()), "")
        lines.append("| " + " | ".join(_cell(c) for c in [
            name, f"{res.get('parameters', 0) / 1e3:.0f}k" if res.get("parameters") else "–", _status(res),
            res["metric"],
            f"{_num(_metric(res, 'onnx', 'fp32'))} → {_num(_metric(res, 'onnx', 'int8'))} · "
            f"{_num(peer.get('metric'))}",
            f"{_num(_metric(res, 'tflite', 'fp32'))} → {_num(_metric(res, 'tflite', 'int8'))}",
            f"{_size_cell(res, OURS, FP32)} · {_size_cell(res, PEER, FP32)} · {_size_cell(res, OURS_TFL, FP32_TFL)}",
            f"{_coverage(res, 'onnx')} · {_coverage(res, 'tflite')} · " + ("–" if not pc else f"{pc['int8']}/{pc['total']}"),
            "–" if not cap else " · ".join(f"{s:.2f}" for s in cap["seconds"]),
            err]) + " |")
    lines += ["", "## Latency (1 thread)", "",
              "| model | fp32 ONNX ms | ours ms | peer ms | ours/fp32 | peer/fp32 | ours/peer | "
              + "".join(f"ours/fp32 b{b} | peer/fp32 b{b} | " for b in big)
              + "TFLite fp32 ms | TFLite int8 ms | TFLite int8/fp32 | int8 ONNX no slower than fp32 |",
              "|---|---|---|---|---|---|---|" + "---|---|" * len(big) + "---|---|---|---|"]
    for name, res in report["models"].items():
        lat = res.get("latency") or {}
        comps = (lat.get("comparison") or {}).get("contenders", {})
        ratios = lat.get("ratios", {})

        def ms(key, comps=comps):
            c = comps.get(key)
            return "–" if not c else f"{c['pooled']['median'] * 1e3:.3f}"

        wide = []
        for b in big:
            r = ((res.get("latency_batches") or {}).get(str(b)) or {}).get("ratios", {})
            wide += [_ratio_cell(r.get(f"{OURS}/{FP32}")), _ratio_cell(r.get(f"{PEER}/{FP32}"))]
        lines.append("| " + " | ".join(_cell(c) for c in [
            name, ms(FP32), ms(OURS), ms(PEER), _ratio_cell(ratios.get(f"{OURS}/{FP32}")),
            _ratio_cell(ratios.get(f"{PEER}/{FP32}")), _ratio_cell(ratios.get(f"{OURS}/{PEER}")), *wide, ms(FP32_TFL),
            ms(OURS_TFL), _ratio_cell(ratios.get(f"{OURS_TFL}/{FP32_TFL}")), _verdict(res)]) + " |")
    causes = [(n, b, c) for n, r in report["models"].items() for b, c in (r.get("causes") or {}).items()]
    if causes:
        lines += ["", "Where ours/fp32 > 1, onnxruntime's profile of both files (benchmarks/zoo_latency.py: per-node "
                  "kernel time, mean per run, op types as onnxruntime runs them after its fusions; profiling adds a "
                  "fixed cost per node, so read the shares) names the cause:", ""]
        lines += [f"* {n}, batch {b}: {_cell(c)}" for n, b, c in causes]
    cap = report.get("largest_model_capture")
    lines += ["", "ms: median over all timed runs of all rounds. Sizes: file bytes (ONNX external data included). "
              "int8 coverage counts conv / linear / matmul ops that run an int8 kernel (tests/zoo/harness.py). "
              "Capture: `compress.capture.capture` (torch.export, batch dynamic, + raising to torch layers) of "
              "the first calibration sample, first call in a fresh process (torch.export's one-time set-up "
              "included) and a second call.", ""]
    if cap:
        lines += [f"Largest zoo model: **{cap['model']}** ({cap['parameters']} parameters): capture "
                  f"{cap['first_s']:.2f} s first call, {cap['again_s']:.2f} s again."]
        slow = report.get("slowest_capture")
        if slow and slow["model"] != cap["model"]:
            lines[-1] += (f" Slowest capture: **{slow['model']}** ({slow['parameters']} parameters), "
                          f"{slow['first_s']:.2f} s first call, {slow['again_s']:.2f} s again.")
        lines.append("")
    other = [(n, f"CLI --format {fmt} alone", f["error"]) for n, r in report["models"].items()
             for fmt, f in ((r.get("cli") or {}).get("formats") or {}).items()
             if f.get("error") and f["error"] != (r.get("cli") or {}).get("first_error")]
    other += [(n, k, e) for n, r in report["models"].items() for k, e in r["errors"].items()]
    other += [(n, "peer (note)", note) for n, r in report["models"].items() for note in (r.get("peer") or {}).get("notes", [])]
    if other:
        lines += ["Other errors and notes (a contender or figure missing from the tables says why here):", ""]
        lines += [f"* {n}, {k}: `{_cell(e)}`" for n, k, e in other]
        lines.append("")
    batches = report["config"].get("batches", [1])
    for b in batches:
        done = [g for g in ((r.get("goals") or {"1": r.get("goal")}).get(str(b)) for r in report["models"].values())
                if g]
        lines += [f"int8 ONNX no slower than fp32 ONNX at batch {b} (paired median ratio ≤ 1.0): "
                  f"{sum(g['status'] == 'PASS' for g in done)} PASS of {len(done)} measured, "
                  f"{sum(g['within_noise'] for g in done)} of them within noise; {len(report['models']) - len(done)} "
                  "model(s) not measured at this batch.", ""]
    return "\n".join(lines)


def _verdict(res: dict) -> str:
    """PASS / MISS over every batch measured (the MISS batches named); "(within noise)" when each verdict is."""
    goals = {b: g for b, g in (res.get("goals") or {"1": res.get("goal")}).items() if g}
    if not goals:
        return "–"
    missed = [b for b, g in goals.items() if g["status"] == "MISS"]
    text = "**PASS**" if not missed else f"**MISS** (b{', b'.join(missed)})"
    return text + (" (within noise)" if all(g["within_noise"] for g in goals.values()) else "")


def _load(report: dict, when: str) -> str:
    la = (report.get("load_average") or {}).get(when)
    return "unknown" if not la else " / ".join(f"{x:.2f}" for x in la)
