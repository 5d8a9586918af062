"""Op-by-op parity: each op's output in the runtime against the torch simulation of that op *given the same inputs*.

End-to-end parity cannot tell an exporter bug from rounding amplification: a recurrent decoder feeding back
its argmax, or a LayerNorm dividing by a small variance, turns one 1-LSB rounding difference (the runtimes
round differently, DESIGN.md) into tens of LSBs at the output. Here every int8 tensor the runtime computes
and the simulation names (a quantizer's output, or a quantization-preserving op's) is a *probe*: the torch
graph runs once per batch with each probe's value replaced by what the runtime computed, so the op that
produces a probe sees exactly the runtime's inputs, and its output is compared with the runtime's.

The tolerance rule (the same for every op, documented in docs/verification.md):

* an int8 probe passes when every element is within ``max_op_lsb`` (1) LSB of its grid;
* a float model output passes when max |diff| / max |reference| ≤ ``float_rtol``;
* downstream of an op the exporter declares approximated (a quantized LSTM / GRU whose hidden state stays
  float in the runtime: ``ExportInfo.approximations``), up to the next probe, the relative tolerance the
  exporter declared replaces the LSB rule.

A failure names the first op in graph order that breaks the rule (its fx node, what it calls and the user's
source line): that op computes something else than the simulation from the same inputs: an exporter bug.

Example:
    >>> import torch
    >>> from torch import fx, nn
    >>> gm = fx.symbolic_trace(nn.Sequential(nn.ReLU()))
    >>> probes = [Probe("_0", "relu_out", 0.5, 0)]
    >>> run = lambda batch: ({"relu_out": np.array([[0, 2, 4]])}, [])  # codes the "runtime" computed
    >>> report = layerwise_parity(gm, run, [(np.array([[-1.0, 1.0, 2.0]], np.float32),)], probes, runtime="doc")
    >>> report.passed, report.ops
    (True, 1)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import fx

from compress import ops
from compress.errors import VerificationError

# A difference of exactly one code, computed in float, can read as 1.0000001 LSB.
_LSB_SLACK = 1e-3
#: Probes listed in the report besides the failures (the largest differences first).
WORST_LISTED = 5


@dataclass(frozen=True)
class Probe:
    """One runtime tensor that holds an fx node's output.

    Args:
        node: the fx node's name in the converted graph.
        key: how the runtime names the tensor (an ONNX value name, a TFLite tensor index).
        scale, zero_point: the runtime tensor's grid (None: a float tensor, compared with ``float_rtol``).
    """

    node: str
    key: str | int
    scale: float | None
    zero_point: int = 0


@dataclass
class OpParity:
    """One probe's agreement over all verified samples."""

    node: str
    op: str
    source: str
    elements: int = 0
    max_abs_lsb: float | None = None
    within_1lsb_fraction: float | None = None
    max_rel_diff: float = 0.0
    scale: float | None = None
    #: The relative tolerance used instead of the LSB rule (an approximated op upstream), else None.
    tolerance: float | None = None
    passed: bool = True

    def describe(self) -> str:
        where = f" at {self.source}" if self.source else ""
        if self.tolerance is None and self.max_abs_lsb is not None:
            got = f"{self.max_abs_lsb:.0f} LSB off ({100 * self.within_1lsb_fraction:.1f}% within 1 LSB)"
        else:
            got = f"max rel diff {self.max_rel_diff:.3g}"
        return f"op {self.node!r} ({self.op}{where}) is {got} given the same inputs"


@dataclass
class LayerwiseParity:
    """Op-by-op verification of one file: ``passed`` when every probe meets the tolerance rule."""

    runtime: str
    passed: bool
    ops: int
    samples: int
    max_op_lsb: float
    failures: list[OpParity] = field(default_factory=list)
    worst: list[OpParity] = field(default_factory=list)
    #: fx nodes on an int8 grid the runtime's tensors could not be matched to (not checked), with why.
    unchecked: list[str] = field(default_factory=list)
    #: True when exposing the intermediate tensors changed the file's final outputs (onnxruntime then fuses
    #: differently); the probes are still compared, on the instrumented graph.
    instrumentation_changed_outputs: bool = False

    @property
    def first_failure(self) -> OpParity | None:
        return self.failures[0] if self.failures else None

    def summary(self) -> str:
        if self.passed:
            worst = max((o.max_abs_lsb or 0.0 for o in self.worst if o.tolerance is None), default=0.0)
            return f"{self.ops} ops within {self.max_op_lsb:g} LSB given the same inputs (max {worst:.0f})"
        return f"{len(self.failures)} of {self.ops} ops fail; first: {self.failures[0].describe()}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["first_failure"] = asdict(self.failures[0]) if self.failures else None
        return d


class _Acc:
    """Running figures of one probe."""

    def __init__(self):
        self.elements = self.within = 0
        self.max_lsb = self.max_abs = self.ref_max = 0.0
        self.finite = True

    def add(self, want: np.ndarray, got: np.ndarray, scale: float | None):
        d = np.abs(got.astype(np.float64) - want.astype(np.float64)).ravel()
        self.finite &= bool(np.isfinite(d).all())
        self.elements += d.size
        if d.size:
            self.max_abs = max(self.max_abs, float(d.max()))
            self.ref_max = max(self.ref_max, float(np.abs(want).max()))
            if scale is not None:
                lsb = d / scale
                self.max_lsb = max(self.max_lsb, float(lsb.max()))
                self.within += int(np.count_nonzero(lsb <= 1 + _LSB_SLACK))


def user_source(node: fx.Node) -> str:
    """``file.py:LINE: code`` of the innermost frame of the node's stack trace outside torch and compress.

    Example:
        >>> import torch
        >>> g = fx.Graph(); x = g.placeholder("x"); n = g.call_function(torch.relu, (x,))
        >>> n.meta["stack_trace"] = '  File "/src/net.py", line 7, in forward\\n    return torch.relu(x)\\n'
        >>> user_source(n)
        'net.py:7: return torch.relu(x)'
    """
    trace = node.meta.get("stack_trace") or ""
    lines = trace.splitlines()
    skip = (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    found = ""
    for i, line in enumerate(lines):
        text = line.strip()
        if not text.startswith("File "):
            continue
        path, _, rest = text[len("File "):].partition(", line ")
        path = path.strip('"')
        if any(os.path.abspath(path).startswith(s) for s in skip):
            continue
        number = rest.partition(",")[0]
        code = lines[i + 1].strip() if i + 1 < len(lines) else ""
        found = f"{os.path.basename(path)}:{number}" + (f": {code}" if code else "")
    return found


def _op_label(node: fx.Node, modules: dict) -> str:
    """What produced a probe: a quantizer is named by the op it quantizes (``Linear → Quantizer``)."""
    label = ops.target_label(node, modules)
    if label == "Quantizer" and node.args and isinstance(node.args[0], fx.Node):
        return f"{ops.target_label(node.args[0], modules)} → Quantizer"
    return label


def torch_layouts(arr: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    """The ways a runtime tensor can hold a torch tensor of ``shape``: as is, channels-last (TFLite's NHWC),
    or with only size-1 axes differing (the caller keeps the one closest to the simulation: a 4-D tensor
    with as many channels as rows and columns fits both of the first two). Empty when nothing fits.

    Example:
        >>> [c.shape for c in torch_layouts(np.zeros((1, 5, 5, 8)), (1, 8, 5, 5))]
        [(1, 8, 5, 5)]
    """
    shape = tuple(shape)
    if arr.size != int(np.prod(shape)):
        return []
    found = [arr] if arr.shape == shape else []
    if arr.ndim == len(shape) and arr.ndim >= 3 and np.moveaxis(arr, -1, 1).shape == shape:
        found.append(np.moveaxis(arr, -1, 1))
    if not found and [d for d in arr.shape if d != 1] == [d for d in shape if d != 1]:
        found.append(arr.reshape(shape))
    return found


def _closest(candidates: list[np.ndarray], want: np.ndarray) -> np.ndarray | None:
    if len(candidates) < 2:
        return candidates[0] if candidates else None
    return min(candidates, key=lambda c: float(np.abs(c.astype(np.float64) - want).max()))


class _Substituting(fx.Interpreter):
    """Runs the converted graph, replacing each probe's output by the runtime's and recording the difference."""

    def __init__(self, gm: fx.GraphModule, probes: dict[str, Probe], values: dict, accs: dict, unchecked: dict):
        super().__init__(gm)
        self.probes, self.values, self.accs, self.unchecked = probes, values, accs, unchecked
        self.extra_traceback = False

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        probe = self.probes.get(n.name)
        if probe is None or not isinstance(result, torch.Tensor) or probe.key not in self.values:
            return result
        raw = np.asarray(self.values[probe.key])
        got = raw.astype(np.float32) if probe.scale is None else \
            ((raw.astype(np.float32) - probe.zero_point) * np.float32(probe.scale))
        want = result.detach().float().numpy()
        got = _closest(torch_layouts(got, tuple(result.shape)), want)
        if got is None:
            self.unchecked[n.name] = f"runtime shape {list(raw.shape)} vs simulation {list(result.shape)}"
            return result
        self.accs.setdefault(n.name, _Acc()).add(want, got, probe.scale)
        return torch.from_numpy(np.ascontiguousarray(got)).to(result.dtype)


def _approximated_regions(gm: fx.GraphModule, probes: set[str], approximated: set[str]) -> set[str]:
    """Probes whose op region (the nodes since the upstream probes) contains an approximated op."""
    tainted: set[str] = set()
    for node in gm.graph.nodes:
        if node.name in approximated or any(i.name in tainted and i.name not in probes for i in node.all_input_nodes):
            tainted.add(node.name)
    return {p for p in probes if p in tainted}


def layerwise_parity(gm: fx.GraphModule, run: Callable, batches: Iterable, probes: list[Probe], *, runtime: str,
                     max_op_lsb: float = 1.0, float_rtol: float = 1e-4, approximated: dict[str, float] | None = None,
                     unchecked: dict[str, str] | None = None,
                     output_tolerances: list[float | None] | None = None) -> LayerwiseParity:
    """Compare every probe given the same inputs (see the module docstring for the rule).

    Args:
        gm: the converted GraphModule the file was exported from (the torch simulation).
        run: ``run(batch) -> ({probe key: runtime array}, [runtime outputs])``; int8 arrays hold codes.
        batches: tuples of input arrays, as the file and ``gm`` take them.
        probes: what the runtime exposes (:class:`Probe`).
        runtime: its name, for messages.
        max_op_lsb: the largest difference an int8 probe may show on any element.
        float_rtol: for float model outputs.
        approximated: fx node name → relative tolerance of the ops the exporter approximates.
        unchecked: fx nodes the caller could not probe, with why (carried into the report).
        output_tolerances: per model output, the relative tolerance the export declared for it (None: bit
            faithful), as end-to-end verification uses it.

    With no probe matched at all nothing is compared "given the same inputs": the report then has no ops and
    the end-to-end rule decides (:func:`~compress.exporters.verify.parity_report`).
    """
    by_node = {p.node: p for p in probes}
    approximated = approximated or {}
    rtol_approx = max(approximated.values(), default=None)
    accs: dict[str, _Acc] = {}
    out_accs: list[_Acc] = []
    skipped = dict(unchecked or {})
    samples = 0
    was_training = gm.training
    gm.eval()
    try:
        for batch in batches:
            values, outputs = run(batch)
            with torch.no_grad():
                want = _Substituting(gm, by_node, values, accs, skipped).run(*(torch.from_numpy(x) for x in batch))
            want = _leaves(want)
            for i, (w, g) in enumerate(zip(want, outputs, strict=False)):
                if i >= len(out_accs):
                    out_accs.append(_Acc())
                w = w.float().numpy()
                g = _closest(torch_layouts(np.asarray(g, np.float32), w.shape), w)
                if g is not None:
                    out_accs[i].add(w, g, None)
            samples += batch[0].shape[0] if batch and batch[0].ndim else 1
    finally:
        gm.train(was_training)
    modules = dict(gm.named_modules())
    # Only the probes really substituted (tensors the runtime returned) cut an approximated op's region.
    loose = _approximated_regions(gm, set(accs), set(approximated))
    results: list[OpParity] = []
    for node in gm.graph.nodes:
        acc = accs.get(node.name)
        if acc is None:
            continue
        probe = by_node[node.name]
        par = OpParity(node.name, _op_label(node, modules), user_source(node), acc.elements, scale=probe.scale,
                       max_rel_diff=_rel(acc))
        if probe.scale is not None:
            par.max_abs_lsb = acc.max_lsb if acc.finite else float("inf")
            par.within_1lsb_fraction = acc.within / acc.elements if acc.elements else 1.0
        if node.name in loose and rtol_approx is not None:
            par.tolerance = rtol_approx
            par.passed = par.max_rel_diff <= rtol_approx
        elif probe.scale is not None:
            par.passed = par.max_abs_lsb <= max_op_lsb + _LSB_SLACK
        else:
            par.passed = par.max_rel_diff <= float_rtol
        results.append(par)
    probed_outputs = {p.node for p in probes}
    output_node = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    out_nodes = [a for a in _leaves(output_node.args[0]) if isinstance(a, fx.Node)]
    tolerances = list(output_tolerances or [])
    for i, acc in enumerate(out_accs if accs else []):
        src = out_nodes[i] if i < len(out_nodes) else output_node
        if src.name in probed_outputs and src.name in accs:
            continue  # an int8 output is its quantizer's probe, checked above
        par = OpParity(f"output[{i}]", _op_label(src, modules), user_source(src), acc.elements,
                       max_rel_diff=_rel(acc))
        declared = tolerances[i] if i < len(tolerances) else None
        limit = max(float_rtol, declared or 0.0, rtol_approx if src.name in loose and rtol_approx else 0.0)
        par.passed = par.max_rel_diff <= limit
        results.append(par)
    failures = [r for r in results if not r.passed]
    worst = sorted(results, key=lambda r: -(r.max_abs_lsb if r.max_abs_lsb is not None else r.max_rel_diff))
    return LayerwiseParity(runtime, not failures and samples > 0, len(results), samples, max_op_lsb, failures,
                           worst[:WORST_LISTED], [f"{k}: {why}" for k, why in skipped.items()])


def _rel(acc: _Acc) -> float:
    if not acc.finite:
        return float("inf")
    return acc.max_abs / acc.ref_max if acc.ref_max > 0 else (0.0 if acc.max_abs == 0 else float("inf"))


def _leaves(value) -> list:
    if isinstance(value, tuple | list):
        return [v for item in value for v in _leaves(item)]
    if isinstance(value, dict):
        return [v for item in value.values() for v in _leaves(item)]
    return [] if value is None else [value]


def approximated_ops(info) -> dict[str, float]:
    """fx node name → relative tolerance, from an export's ``approximations`` (``"node: why"``) and the
    tolerance its outputs were given."""
    tol = max((t for t in getattr(info, "output_tolerances", None) or [] if t is not None), default=None)
    names = [a.partition(": ")[0] for a in getattr(info, "approximations", None) or []]
    if names and tol is None:
        raise VerificationError("the export lists approximated ops but no tolerance for them; re-export the file")
    return dict.fromkeys(names, tol)


def failure_message(fmt: str, parity: dict) -> str:
    """One line saying why the ``fmt`` file failed verification (a :class:`ParityReport` as a dict): the op
    that computes something else given the same inputs, or the end-to-end figures when no op was probed.

    Example:
        >>> failure_message("onnx", {"layerwise": {"first_failure": {"node": "fc_act_quant", "op": "Linear",
        ...     "source": "net.py:9: return self.fc(x)", "max_abs_lsb": 12.0, "within_1lsb_fraction": 0.5,
        ...     "max_rel_diff": 0.3, "tolerance": None}, "ops": 4}, "problems": []})  # doctest: +ELLIPSIS
        "the int8 onnx file disagrees with the torch simulation: op 'fc_act_quant' (Linear at net.py:9: ... 12 LSB off...
    """
    layerwise = parity.get("layerwise") or {}
    first = layerwise.get("first_failure")
    if first is not None:
        fields = {k: first.get(k) for k in ("node", "op", "source", "max_abs_lsb", "within_1lsb_fraction",
                                            "max_rel_diff", "tolerance")}
        where = OpParity(**fields).describe()
        failing = len(layerwise.get("failures") or [first])
        return (f"the int8 {fmt} file disagrees with the torch simulation: {where} ({failing} of "
                f"{layerwise['ops']} ops fail); an exporter bug, not rounding: report it with the model")
    if parity.get("problems"):
        return f"the int8 {fmt} file does not match the torch simulation ({'; '.join(parity['problems'])})"
    within, lsb = parity.get("within_1lsb_fraction"), parity.get("max_abs_lsb")
    figures = (f"{100 * within:.1f}% of outputs within 1 LSB, max {lsb:.0f} LSB; the contract is ≥ 99%"
               if within is not None and lsb is not None else f"max rel diff {parity.get('max_rel_diff', 0):.3g}")
    return (f"the int8 {fmt} file does not match the torch simulation ({figures}); try --target arm or "
            "--per-tensor, and report the model if it persists")
