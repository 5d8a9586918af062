"""Goals (PASS / MISS) and the Markdown table of a benchmark run. The goals live here, never in unit tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Goal:
    key: str
    text: str
    section: str  # "latency" or "qat"
    threads: int | None
    ratio: str  # which paired ratio, e.g. "ours/fp32"
    limit: float  # PASS when the ratio (median over rounds) is <= limit


# From issue 2: ours ≥ 1.8× faster than fp32 at 1 thread; no slower than onnxruntime's own int8; QAT step
# at most 1.5× the float step (torch.ao's QAT measured 2.2× here).
GOALS = (
    Goal("int8_vs_fp32_1t", "ours ≥ 1.8× faster than fp32 (1 thread)", "latency", 1, "ours/fp32", 1 / 1.8),
    Goal("int8_vs_peer_1t", "ours/peer latency ≤ 1.0 (1 thread)", "latency", 1, "ours/peer", 1.0),
    Goal("qat_step_vs_fp32", "QAT training step ≤ 1.5× float", "qat", None, "ours_qat/float", 1.5),
)


OFFICIAL_MODEL = "resnet18"


def _ratio(model_result: dict, goal: Goal, key: str = "ratios") -> dict | None:
    if goal.section == "latency":
        return model_result.get("latency", {}).get(str(goal.threads), {}).get(key, {}).get(goal.ratio)
    return model_result.get("qat", {}).get(key, {}).get(goal.ratio)


def evaluate_goals(models: dict) -> list[dict]:
    """One row per (goal, model): the measured paired ratio, its noise, and PASS / MISS / N/A."""
    rows = []
    for arch, result in models.items():
        for goal in GOALS:
            if goal.section not in result and arch != OFFICIAL_MODEL:
                continue  # not measured for this model, and the goals are stated on ResNet-18
            r = _ratio(result, goal)
            row = {"goal": goal.key, "text": goal.text, "model": arch, "limit": goal.limit}
            if r is None:
                row.update(status="N/A", ratio=None, noise=None)
            else:
                status = "PASS" if r["ratio"] <= goal.limit else "MISS"
                # The verdict could flip within the spread of the rounds: say so instead of hiding it.
                near = r["low"] <= goal.limit <= r["high"]
                row.update(status=status, ratio=r["ratio"], noise=r["noise"], within_noise=near)
            by_min = _ratio(result, goal, "ratios_min")
            row["min_ratio"] = None if by_min is None else by_min["ratio"]
            row["min_noise"] = None if by_min is None else by_min["noise"]
            rows.append(row)
    return rows


def _load(report: dict, when: str) -> str:
    la = (report.get("load_average") or {}).get(when)
    return "unknown" if not la else " / ".join(f"{x:.2f}" for x in la)


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{x * 1e3:.2f}"


def _mb(x: float | None) -> str:
    return "–" if not x else f"{x / 2**20:.1f}"


def _r(r: dict | None) -> str:
    return "–" if r is None else f"{r['ratio']:.3f} ± {r['noise']:.3f}"


def _speedup(r: dict | None) -> str:
    return "–" if r is None else f"×{1 / r['ratio']:.2f}"


def render_markdown(report: dict) -> str:
    m = report["machine"]
    cpu = m["cpu"]
    v = m["versions"]
    git = m.get("git") or {}
    lines = [
        f"# Benchmark results: {report['machine_slug']}",
        "",
        f"{report['date']}{' (quick run)' if report['quick'] else ''} · commit `{(git.get('commit') or '?')[:10]}`"
        f"{' (dirty tree)' if git.get('dirty') else ''} · `python benchmarks/run.py{' --quick' if report['quick'] else ''}`",
        "",
        f"**Machine**: {cpu['model']} ({cpu['arch']}), {cpu['logical_cores']} logical cores; ISA: "
        f"{', '.join(cpu['isa']) or 'unknown'}; {m['os']['platform']}; Python {m['python']['version']}; "
        f"torch {v.get('torch')}, onnxruntime {v.get('onnxruntime')}, onnx {v.get('onnx')}, numpy {v.get('numpy')}.",
        "",
        "Latency: one onnxruntime session per process, contenders alternated round by round "
        f"({report['config']['rounds']} rounds × {report['config']['runs']} timed runs after "
        f"{report['config']['warmup']} warm-up runs, batch 1). Ratios are latency ratios paired within each round "
        "(median over rounds ± half their range); < 1 means faster.",
        "",
        f"Load average (1, 5, 15 min) at start {_load(report, 'start')}, at end {_load(report, 'end')}: other "
        "processes on the machine are the main source of noise.",
        "",
        "## Goals",
        "",
        "The verdict uses the ratio of per-round medians; the ratio of per-round minima is shown beside it "
        "because contention from other processes only adds time, so minima are the steadier figure on a busy "
        "machine.",
        "",
        "| goal | model | ratio (medians) | ratio (minima) | limit | status |",
        "|---|---|---|---|---|---|",
    ]
    for g in report["goals"]:
        measured = "–" if g["ratio"] is None else f"{g['ratio']:.3f} ± {g['noise']:.3f}"
        by_min = "–" if g.get("min_ratio") is None else f"{g['min_ratio']:.3f} ± {g['min_noise']:.3f}"
        flag = " (limit within noise)" if g.get("within_noise") else ""
        lines.append(f"| {g['text']} | {g['model']} | {measured} | {by_min} | ≤ {g['limit']:.3f} "
                     f"| **{g['status']}**{flag} |")
    for arch, res in report["models"].items():
        lines += ["", f"## {arch} ({'×'.join(map(str, res['input_shape']))}, random weights)", ""]
        lines += ["| contender | threads | median ms | p90 ms | min ms | vs fp32 | speed-up | vs peer | size MB "
                  "| load ms | peak RSS MB | top-1 agree | max abs diff |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        # "vs fp32" / "vs peer": paired ratios of per-round medians (see the goals note for minima).
        ref = res["accuracy"].get("fp32", {})
        acc_note = (f"Accuracy proxy: {ref.get('inputs')} inputs, fp32 picks {ref.get('distinct_top1')} distinct "
                    f"classes, fp32 logit range {ref.get('logit_range', float('nan')):.3g}.")
        for t, lat in res["latency"].items():
            for name, c in lat["comparison"]["contenders"].items():
                acc = res["accuracy"].get(name, {})
                vs_fp32 = lat["ratios"].get(f"{name}/fp32")
                vs_peer = lat["ratios"].get(f"{name}/peer")
                loads = [s for s in c["session_create_s"] if s is not None]
                lines.append(
                    f"| {LABELS.get(name, name)} | {t} | {_ms(c['pooled']['median'])} | {_ms(c['pooled']['p90'])} "
                    f"| {_ms(c['pooled']['min'])} | {_r(vs_fp32)} | {_speedup(vs_fp32)} | {_r(vs_peer)} "
                    f"| {_mb(c['file_bytes'])} | {_ms(min(loads) if loads else None)} | {_mb(c['peak_rss_bytes'])} "
                    f"| {acc.get('top1_agreement', float('nan')):.3f} | {acc.get('max_abs_diff', float('nan')):.3g} |")
        for name, art in res["artifacts"].items():
            if art.get("error"):
                lines.append(f"| {LABELS.get(name, name)} | – | not measured: {art['error']} |||||||||||")
        lines += ["", acc_note]
        qat = res.get("qat")
        if qat:
            cfg = qat["config"]
            lines += ["", f"QAT training step (forward + backward + SGD), batch {cfg['batch']}, "
                      f"{cfg['resolution']}², {cfg['threads']} threads, {qat['comparison']['rounds']} rounds × "
                      f"{cfg['steps']} steps:", "",
                      "| contender | median step ms | min step ms | vs float (medians) | vs float (minima) |",
                      "|---|---|---|---|---|"]
            for name, c in qat["comparison"]["contenders"].items():
                lines.append(f"| {LABELS.get(name, name)} | {_ms(c['pooled']['median'])} | {_ms(c['pooled']['min'])} "
                             f"| {_r(qat['ratios'].get(f'{name}/float'))} "
                             f"| {_r(qat.get('ratios_min', {}).get(f'{name}/float'))} |")
            for name, err in qat.get("errors", {}).items():
                lines.append(f"| {LABELS.get(name, name)} | not measured: {err} | | |")
    lines.append("")
    return "\n".join(lines)


LABELS = {
    "fp32": "fp32 ONNX (torch.onnx.export)",
    "peer": "onnxruntime quantize_static (QDQ u8s8, per-channel)",
    "ours": "ours int8 ONNX (compress)",
    "float": "float training step",
    "ours_qat": "ours QAT (compress.passes.prepare qat=True)",
    "torch_ao_qat": "torch.ao prepare_qat_fx (DEPRECATED upstream)",
}
