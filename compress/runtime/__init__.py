"""Measurement harness: latency statistics, machine description, onnxruntime runner, process isolation.

Importing this package loads numpy only; onnxruntime is imported inside the functions that run sessions.
"""

from compress.runtime.isolate import Comparison, Contender, Statistic, compare_interleaved, run_isolated
from compress.runtime.machine import machine_description, machine_slug, parse_cpuinfo
from compress.runtime.onnx_runner import measure_onnx
from compress.runtime.stats import LatencyStats, PairedRatio, paired_ratio

__all__ = [
    "Comparison",
    "Contender",
    "LatencyStats",
    "PairedRatio",
    "Statistic",
    "compare_interleaved",
    "machine_description",
    "machine_slug",
    "measure_onnx",
    "paired_ratio",
    "parse_cpuinfo",
    "run_isolated",
]
