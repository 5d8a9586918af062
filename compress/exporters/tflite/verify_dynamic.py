"""Verification of TFLite dynamic-range (hybrid) ops: the rule, and a numpy reference of LiteRT's arithmetic.

A dynamic-mode Linear is written as a hybrid FULLY_CONNECTED, a Conv as a hybrid CONV_2D / DEPTHWISE_CONV_2D
(:mod:`compress.exporters.tflite.ops_dynamic`). LiteRT quantizes the FC's float input on every call *per row*
(the conv's per image; asymmetric int8, rounding half away from zero), where the torch simulation copies
onnxruntime's DynamicQuantizeLinear (uint8, one scale for the whole tensor, half to even). The two differ by
the input-quantization granularity, so the file cannot be held to the simulation's float tolerance (1e-4).
The rule, one for every hybrid op:

* **op by op, against LiteRT's arithmetic.** The converted graph runs with each hybrid op's output replaced by
  LiteRT's (the op-by-op machinery of :mod:`compress.exporters.verify_ops`), so every op sees the runtime's
  inputs. At each dynamic layer, :func:`hybrid_linear_reference` / :func:`hybrid_conv_reference` compute in
  numpy what LiteRT's kernel computes from that input with the *layer's* int8 codes, scales and float bias
  (per-row / per-image asymmetric int8, exact integer accumulation, ``input scale × weight scale``, float
  bias, fused activation). LiteRT's output passes when every element is within :data:`HYBRID_STEPS` input
  steps of it: ``|diff| ≤ HYBRID_STEPS × input_scale × weight_scale[c] × max |codes[c]|`` + 1e-5 of the
  output's range (float32 rounding). The reference reads LiteRT's own input tensor of the op where it holds
  the simulation's input up to float rounding, so it reproduces the kernel: ≤ 1e-3 step on almost every
  element; one step is what a single input code rounded the other way moves an output by (measured on the
  zoo bert: 1.0 step on 2 of its 14 layers over 64 samples; about 1 code in 10^5 on LiteRT's builtin kernel).
  2 steps leave room for two such codes in one row; a weight scale 2 % off measures 15 steps.
* a dynamic LSTM is one fused hybrid UNIDIRECTIONAL_SEQUENCE_LSTM per layer: each is checked against
  :func:`~compress.exporters.tflite.verify.fused_lstm_reference` given LiteRT's own input to it, with the
  fused-LSTM rule of the static int8 file (``close_fraction`` ≥ ``FUSED_LSTM_MIN_CLOSE_FRACTION`` of the
  hidden values within ``FUSED_LSTM_CLOSE``, none beyond ``FUSED_LSTM_ATOL``: the recurrence carries a
  float32-noise code flip on, so no per-element step bound holds);
* every other op (float, or static int8 in a mixed model) keeps the usual rule given the same inputs;
* the difference of each hybrid op from the *simulation* (per-tensor uint8) is reported as information
  (``dynamic`` in the op-by-op report), as are the end-to-end figures.

Example:
    >>> x = np.array([[1.0, -2.0, 0.5]], np.float32)
    >>> codes, scale = np.array([[127, 0, -127]], np.int8), np.array([0.01])
    >>> y = hybrid_linear_reference(x, codes, scale, np.array([0.25], np.float32))
    >>> bool(abs(y[0, 0] - (0.01 * 127 * (1.0 - 0.5) + 0.25)) < 0.01)
    True
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import fx, nn

from compress.exporters.tflite.hybrid import quantize_rows
from compress.exporters.verify import VerifyConfig, single_samples
from compress.exporters.verify_ops import (
    WORST_LISTED,
    LayerwiseParity,
    OpParity,
    Probe,
    layerwise_parity,
    torch_layouts,
    user_source,
)
from compress.layers.base import FusedActivation, apply_fused
from compress.quant.config import QuantMode

_HYBRID_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
#: Input steps a hybrid op's output may differ from the numpy reference by (see the module docstring).
HYBRID_STEPS = 2.0
# float32 accumulation order of the runtime's rescale: relative to the output's magnitude.
_FLOAT_SLACK = 1e-5


def hybrid_linear_reference(x: np.ndarray, codes: np.ndarray, w_scale: np.ndarray, bias: np.ndarray | None,
                            act: FusedActivation = FusedActivation.NONE) -> np.ndarray:
    """What LiteRT's hybrid FULLY_CONNECTED (asymmetric inputs, per-channel weights) computes, in numpy.

    Args:
        x: the float input ``[..., K]`` (each row over the last axis is quantized on its own).
        codes: int8 weight codes ``[C, K]``; ``w_scale``: their scale per output channel (or one).
        bias: float ``[C]`` or None; ``act``: the fused activation.

    Returns:
        float32 ``[..., C]``: ``(Σ q·w − zp·Σ w) × (row scale × w_scale[c]) + bias[c]``, then the activation.
    """
    x = np.asarray(x, np.float32)
    rows = x.reshape(-1, x.shape[-1])
    q, scale, zp = quantize_rows(rows)
    w = np.asarray(codes, np.int64)
    acc = q.astype(np.int64) @ w.T - zp[:, None].astype(np.int64) * w.sum(axis=1)[None, :]  # exact int32 math
    w_scale = np.broadcast_to(np.asarray(w_scale, np.float32).reshape(-1), (w.shape[0],))
    y = acc.astype(np.float32) * (scale[:, None] * w_scale[None, :]).astype(np.float32)
    if bias is not None:
        y = y + np.asarray(bias, np.float32)[None, :]
    y = apply_fused(torch.from_numpy(y), act).numpy()
    return y.reshape(*x.shape[:-1], w.shape[0])


def hybrid_step(x: np.ndarray, codes: np.ndarray, w_scale: np.ndarray) -> np.ndarray:
    """The output change one input code moves ``[..., C]``: row scale × weight scale[c] × max |codes[c]|."""
    x = np.asarray(x, np.float32)
    _, scale, _ = quantize_rows(x.reshape(-1, x.shape[-1]))
    w = np.abs(np.asarray(codes, np.float64)).max(axis=1)
    w_scale = np.broadcast_to(np.asarray(w_scale, np.float64).reshape(-1), w.shape)
    step = scale.astype(np.float64)[:, None] * (w_scale * w)[None, :]
    return step.reshape(*x.shape[:-1], w.shape[0])


def hybrid_conv_reference(x: np.ndarray, codes: np.ndarray, w_scale: np.ndarray, bias: np.ndarray | None,
                          layer: nn.Module, act: FusedActivation = FusedActivation.NONE) -> np.ndarray:
    """What LiteRT's hybrid CONV_2D / DEPTHWISE_CONV_2D (per-channel weights) computes, in numpy / float64.

    The float input ``x`` (torch layout ``[N, C, ...]``) is quantized *per image* (:func:`asymmetric_rows` of
    each batch element as one row); the integer convolution of the codes minus the zero point (the padding is
    then real 0, as the kernel pads with the zero point) is exact in float64; × image scale × weight scale[c],
    + bias, activation. ``layer`` gives stride, padding, dilation and groups (a Conv1d or Conv2d).
    """
    import torch.nn.functional as F

    x = np.asarray(x, np.float32)
    q, scale, zp = quantize_rows(x.reshape(x.shape[0], -1))
    centred = torch.from_numpy((q.astype(np.float64) - zp[:, None]).reshape(x.shape))
    conv = F.conv1d if x.ndim == 3 else F.conv2d
    acc = conv(centred, torch.from_numpy(np.asarray(codes, np.float64)), None, layer.stride, layer.padding,
               layer.dilation, layer.groups).numpy()
    per_channel = (1, -1) + (1,) * (x.ndim - 2)
    w_scale = np.broadcast_to(np.asarray(w_scale, np.float64).reshape(-1), (acc.shape[1],))
    y = acc * scale.astype(np.float64).reshape(-1, *(1,) * (x.ndim - 1)) * w_scale.reshape(per_channel)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(per_channel)
    return apply_fused(torch.from_numpy(y), act).numpy()


def hybrid_conv_step(x: np.ndarray, codes: np.ndarray, w_scale: np.ndarray, out_shape) -> np.ndarray:
    """The output change one input code moves, ``out_shape``: image scale × weight scale[c] × max |codes[c]|."""
    x = np.asarray(x, np.float32)
    _, scale, _ = quantize_rows(x.reshape(x.shape[0], -1))
    w = np.abs(np.asarray(codes, np.float64)).reshape(codes.shape[0], -1).max(axis=1)
    w_scale = np.broadcast_to(np.asarray(w_scale, np.float64).reshape(-1), w.shape)
    step = scale.astype(np.float64)[:, None] * (w_scale * w)[None, :]
    return np.broadcast_to(step.reshape(step.shape + (1,) * (len(out_shape) - 2)), out_shape)


@dataclass
class HybridOpParity:
    """One hybrid op over all verified samples: against the numpy reference of LiteRT's arithmetic (the
    verdict) and against the torch simulation (information)."""

    node: str
    op: str
    source: str
    elements: int = 0
    max_steps: float = 0.0  # largest |LiteRT − reference| in units of the one-input-code step (FC / conv)
    max_rel_diff: float = 0.0  # vs the reference, relative to its max magnitude
    sim_max_rel_diff: float = 0.0  # vs the simulation (per-tensor uint8), information
    passed: bool = True
    close_fraction: float | None = None  # fused LSTM: share of hidden values within FUSED_LSTM_CLOSE


@dataclass
class DynamicLayerwiseParity(LayerwiseParity):
    """:class:`~compress.exporters.verify_ops.LayerwiseParity` with the hybrid ops' figures (``dynamic``)."""

    dynamic: list[HybridOpParity] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["dynamic"] = [asdict(h) for h in self.dynamic]
        return d


def dynamic_layers(graph: fx.GraphModule) -> list[fx.Node]:
    """The graph's call_module nodes whose layer runs in dynamic mode (hybrid ops in the file)."""
    from compress.layers.dynamic import layer_mode

    modules = dict(graph.named_modules())
    return [n for n in graph.graph.nodes if n.op == "call_module"
            and isinstance(modules.get(n.target), nn.Linear | nn.Conv1d | nn.Conv2d)
            and layer_mode(modules[n.target]) is QuantMode.DYNAMIC]


def dynamic_lstms(graph: fx.GraphModule) -> list[fx.Node]:
    """The graph's call_module nodes of LSTMs in dynamic mode (fused hybrid LSTMs in the file), in graph order."""
    from compress.layers.dynamic import layer_mode

    modules = dict(graph.named_modules())
    return [n for n in graph.graph.nodes if n.op == "call_module" and isinstance(modules.get(n.target), nn.LSTM)
            and hasattr(modules[n.target], "weight_quants") and layer_mode(modules[n.target]) is QuantMode.DYNAMIC]


@dataclass
class _LstmSite:
    """A dynamic LSTM as the file holds it: its fused ops (one per layer, (details, time_major, asymmetric))."""

    layer: fx.Node
    ops: list
    acc: HybridOpParity
    sequence: fx.Node | None  # the ``getitem(lstm, 0)`` node: LiteRT's sequence is substituted there
    weights: list  # per layer (w_ih, w_hh, bias) from the layer itself: a file with wrong weights fails
    close: int = 0
    total: int = 0
    max_abs: float = 0.0
    ref_max: float = 0.0
    sim_abs: float = 0.0
    sim_max: float = 0.0
    last_out: np.ndarray | None = None

    def check(self, it) -> None:
        """Each fused op of the last invoke against the numpy model of the kernel given LiteRT's input to it."""
        from compress.exporters.tflite.verify import FUSED_LSTM_CLOSE, fused_lstm_expected

        for op, weights in zip(self.ops, self.weights, strict=True):
            got = it.get_tensor(int(op[0]["outputs"][0]))
            want = fused_lstm_expected(it, *op, weights=weights)
            d = np.abs(got.astype(np.float64) - want)
            self.close, self.total = self.close + int((d <= FUSED_LSTM_CLOSE).sum()), self.total + d.size
            self.max_abs = max(self.max_abs, float(d.max(initial=0.0)))
            self.ref_max = max(self.ref_max, float(np.abs(want).max(initial=0.0)))
            self.last_out = got.copy()

    def hook(self, _module, _args, output) -> None:
        """The simulation's output sequence beside the last fused op's (information)."""
        sim = output[0].detach().float().numpy()
        if self.last_out is not None and self.last_out.shape == sim.shape:
            self.sim_abs = max(self.sim_abs, float(np.abs(self.last_out - sim).max(initial=0.0)))
            self.sim_max = max(self.sim_max, float(np.abs(sim).max(initial=0.0)))

    def finish(self) -> None:
        from compress.exporters.tflite.verify import FUSED_LSTM_ATOL, FUSED_LSTM_MIN_CLOSE_FRACTION

        a = self.acc
        a.elements = self.total
        a.close_fraction = self.close / self.total if self.total else 0.0
        a.max_rel_diff, a.sim_max_rel_diff = _rel(self.max_abs, self.ref_max), _rel(self.sim_abs, self.sim_max)
        a.passed = bool(self.total and a.close_fraction >= FUSED_LSTM_MIN_CLOSE_FRACTION
                        and self.max_abs <= FUSED_LSTM_ATOL)


def _layer_weights(mod: nn.Module, layer: int) -> tuple[list, list, list]:
    """Layer ``layer`` of a converted LSTM as the fused op should hold it: per gate the int8 codes and scale of
    each weight (:func:`~compress.exporters.tflite.ops_seq.gate_codes`) and the two biases summed."""
    from compress.exporters.tflite.ops_seq import gate_codes

    sfx = f"_l{layer}"
    w = [[(codes, np.float32(scale)) for codes, scale in gate_codes(getattr(mod, k + sfx), mod.weight_quants[k + sfx])]
         for k in ("weight_ih", "weight_hh")]
    bias = np.zeros(4 * mod.hidden_size, np.float32)
    if mod.bias:
        bias = sum(getattr(mod, b + sfx).detach().float().numpy() for b in ("bias_ih", "bias_hh")).astype(np.float32)
    return w[0], w[1], list(bias.reshape(4, -1))


def _lstm_sites(path, it, graph: fx.GraphModule) -> tuple[list[_LstmSite], dict[str, tuple[str, str]]]:
    """Each dynamic LSTM's fused ops: the file's UNIDIRECTIONAL_SEQUENCE_LSTMs in execution order, ``num_layers``
    for each dynamic LSTM in graph order (the exporter writes them so); when the counts disagree, every dynamic
    LSTM is reported as not found (it fails)."""
    from compress.exporters.tflite.verify import fused_lstm_ops

    nodes = dynamic_lstms(graph)
    if not nodes:
        return [], {}
    modules = dict(graph.named_modules())
    found = fused_lstm_ops(path, it)
    if len(found) != sum(modules[n.target].num_layers for n in nodes):
        why = f"{len(found)} fused LSTMs in the file for {len(nodes)} dynamic LSTM layers"
        return [], {n.name: (n.target, why) for n in nodes}
    sites = []
    for n in nodes:
        k = modules[n.target].num_layers
        seq = [u for u in n.users if u.op == "call_function" and u.target is operator.getitem and u.args[1] == 0]
        sites.append(_LstmSite(n, found[:k], HybridOpParity(n.name, type(modules[n.target]).__name__,
                                                            user_source(n)), seq[0] if seq else None,
                               [_layer_weights(modules[n.target], layer) for layer in range(k)]))
        found = found[k:]
    return sites, {}


def _clamp_of(node: fx.Node, modules: dict) -> FusedActivation | None:
    """RELU / RELU6 when ``node`` is a clamp the exporter fuses into the op before it (its sole input)."""
    from compress import ops

    spec = ops.lookup(node, modules)
    name = getattr(spec, "name", None)
    if name == "relu":
        return FusedActivation.RELU
    if name == "relu6":
        return FusedActivation.RELU6
    if name == "hardtanh":
        mod = modules.get(node.target) if node.op == "call_module" else None
        bounds = (float(mod.min_val), float(mod.max_val)) if isinstance(mod, nn.Hardtanh) else \
            tuple(float(a) for a in (list(node.args[1:3]) + [node.kwargs.get("min_val", -1.0),
                                                             node.kwargs.get("max_val", 1.0)])[:2])
        return FusedActivation.RELU6 if bounds == (0.0, 6.0) else None
    return None


@dataclass
class _HybridSite:
    """A dynamic layer as the file holds it: the fx node whose value LiteRT's tensor holds (the layer, or the
    ReLU fused into it) and what the reference needs."""

    layer: fx.Node
    module: nn.Module
    probe: fx.Node
    key: int
    input_key: int  # the tensor the hybrid op quantizes (LiteRT's own input to it)
    codes: np.ndarray
    w_scale: np.ndarray
    bias: np.ndarray | None
    act: FusedActivation
    clamp: FusedActivation  # the part of ``act`` the graph applies after the layer (the simulation's output)
    acc: HybridOpParity = None  # type: ignore[assignment]
    ref_max: float = 0.0
    max_abs: float = 0.0
    sim_max: float = 0.0
    sim_abs: float = 0.0

    def reference(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(LiteRT's output by the numpy reference, the one-input-code step per element) for input ``x``."""
        if isinstance(self.module, nn.Linear):
            return (hybrid_linear_reference(x, self.codes, self.w_scale, self.bias, self.act),
                    hybrid_step(x, self.codes, self.w_scale))
        y = hybrid_conv_reference(x, self.codes, self.w_scale, self.bias, self.module, self.act)
        return y, hybrid_conv_step(x, self.codes, self.w_scale, y.shape)


def _sites(it, graph: fx.GraphModule) -> tuple[list[_HybridSite], dict[str, tuple[str, str]]]:
    """Each dynamic layer's hybrid op in the loaded interpreter: the float tensor named after the layer's fx
    node, written by a FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D whose weight is int8, or by the RESHAPE
    that takes a Conv1d's 2-D conv output back to ``[N, L, C]``; and the layers with none (they fail)."""
    from compress.exporters.numerics import weight_codes
    from compress.exporters.tflite.graph import combine_act

    modules = dict(graph.named_modules())
    details = {int(t["index"]): t for t in it.get_tensor_details()}
    producer = {int(t): o for o in it._get_ops_details() if o["op_name"] != "DELEGATE" for t in o["outputs"]}

    def hybrid_input(tensor: int) -> int | None:
        """The input tensor of the hybrid op that writes ``tensor`` (through one RESHAPE), else None."""
        op = producer.get(tensor)
        if op is not None and op["op_name"] == "RESHAPE":
            op = producer.get(int(op["inputs"][0]))
        if op is None or op["op_name"] not in _HYBRID_OPS or len(op["inputs"]) < 2:
            return None
        x, w = (details[int(i)] for i in op["inputs"][:2])
        return int(x["index"]) if x["dtype"] == np.float32 and w["dtype"] == np.int8 else None

    by_name = {t["name"]: int(t["index"]) for t in details.values() if t["dtype"] == np.float32 and t["name"]}
    sites, missing = [], {}
    for node in dynamic_layers(graph):
        layer = modules[node.target]
        users = list(node.users)
        clamp = _clamp_of(users[0], modules) if len(users) == 1 else None
        act = combine_act(getattr(layer, "activation", FusedActivation.NONE), clamp or FusedActivation.NONE)
        key = by_name.get(node.name)
        input_key = None if key is None else hybrid_input(key)
        if input_key is None:
            missing[node.name] = (node.target, "no float tensor named after it written by a hybrid op in the file")
            continue
        codes, scale, _ = weight_codes(layer.weight, layer.weight_quant, node.name)
        bias = layer.quantized_bias()
        sites.append(_HybridSite(node, layer, users[0] if clamp is not None else node, key, input_key,
                                 np.asarray(codes), np.asarray(scale, np.float64).reshape(-1),
                                 None if bias is None else bias.detach().float().numpy(), act,
                                 clamp or FusedActivation.NONE))
    return sites, missing


def dynamic_layerwise(path, graph: fx.GraphModule, inputs: Iterable, *, info=None, config=None,
                      samples: int | None = None) -> DynamicLayerwiseParity:
    """Op-by-op parity of a ``.tflite`` file with hybrid ops (the rule in the module docstring).

    The int8 probes of a mixed model (static layers beside dynamic ones) are checked as
    :func:`~compress.exporters.tflite.verify.tflite_layerwise` checks them; each dynamic layer's LiteRT output
    is a float probe, substituted into the simulation and judged against :func:`hybrid_linear_reference`.
    """
    # verify.py calls this module: its names are imported here, at call time.
    from compress.exporters.tflite.verify import (
        LAYERWISE_SAMPLES,
        _approximated,
        load_interpreter,
        run_tflite,
        tflite_probes,
    )

    config = config or VerifyConfig()
    limit = LAYERWISE_SAMPLES if samples is None else samples
    it = load_interpreter(path, config.intra_op_threads, preserve_all_tensors=True)
    probes, unprobed = tflite_probes(it, graph)
    sites, missing = _sites(it, graph)
    lstms, lstm_missing = _lstm_sites(path, it, graph)
    missing.update(lstm_missing)
    modules = dict(graph.named_modules())
    for s in sites:
        s.acc = HybridOpParity(s.probe.name, type(modules[s.layer.target]).__name__, user_source(s.layer))
    probes = [p for p in probes if p.node not in {s.probe.name for s in sites}]
    probes += [Probe(s.probe.name, s.key, None) for s in sites]
    # What follows a fused LSTM sees LiteRT's hidden sequence (the op is judged by the kernel model, not here).
    probes += [Probe(s.sequence.name, int(s.ops[-1][0]["outputs"][0]), None) for s in lstms if s.sequence is not None]
    nhwc = bool(info.nhwc_input) if info is not None else False
    last: dict = {}
    inputs_seen: dict = {}

    def run(sample):
        outputs = run_tflite(it, sample, nhwc)
        last.clear()
        last.update({p.key: it.get_tensor(p.key).copy() for p in probes})
        inputs_seen.update({s.input_key: it.get_tensor(s.input_key).copy() for s in sites})
        for site in lstms:
            site.check(it)
        return dict(last), outputs

    def check(site: _HybridSite):
        def hook(_module, args, output):
            x = _runtime_input(inputs_seen[site.input_key], args[0].detach().float().numpy())
            ref, unit = site.reference(x)
            # A 4-D tensor with as many channels as rows and columns fits NCHW and NHWC: the closer one.
            fits = torch_layouts(np.asarray(last[site.key], np.float32), ref.shape)
            got = min(fits, key=lambda c: float(np.abs(c - ref).max()), default=None)
            if got is None:
                site.acc.passed = False
                return
            d = np.abs(got.astype(np.float64) - ref)
            ref_max = float(np.abs(ref).max(initial=0.0))
            unit = np.maximum(unit, 1e-30)
            site.acc.elements += d.size
            site.acc.max_steps = max(site.acc.max_steps, float((d / unit).max(initial=0.0)))
            site.acc.passed &= bool(np.isfinite(d).all() and (d <= HYBRID_STEPS * unit + _FLOAT_SLACK * ref_max).all())
            site.max_abs = max(site.max_abs, float(d.max(initial=0.0)))
            site.ref_max = max(site.ref_max, ref_max)
            sim = apply_fused(output.detach().float(), site.clamp).numpy()
            site.sim_abs = max(site.sim_abs, float(np.abs(got - sim).max(initial=0.0)))
            site.sim_max = max(site.sim_max, float(np.abs(sim).max(initial=0.0)))
        return hook

    handles = [modules[s.layer.target].register_forward_hook(check(s)) for s in sites]
    handles += [modules[s.layer.target].register_forward_hook(s.hook) for s in lstms]
    try:
        base = layerwise_parity(graph, run, single_samples(inputs, limit), probes, runtime="LiteRT",
                                max_op_lsb=config.max_op_lsb, float_rtol=config.float_rtol,
                                approximated=_approximated(graph, info),
                                unchecked=unprobed)
    finally:
        for h in handles:
            h.remove()
    for site in lstms:
        site.finish()
    return _merged(base, sites, missing, modules, lstms)


def _runtime_input(runtime: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """The input the hybrid op quantized, in torch layout: LiteRT's own tensor when it holds the simulation's
    input up to float rounding (the same inputs, so no input code flips between the two), else the
    simulation's (a PAD or Conv1d RESHAPE in front of the op, an NHWC flatten's permuted columns)."""
    fits = torch_layouts(np.asarray(runtime, np.float32), sim.shape)
    best = min(fits, key=lambda c: float(np.abs(c - sim).max()), default=None)
    if best is None or float(np.abs(best - sim).max()) > 1e-4 * max(float(np.abs(sim).max()), 1e-30):
        return sim
    return best


def _rel(diff: float, magnitude: float) -> float:
    return diff / magnitude if magnitude > 0 else (0.0 if diff == 0 else float("inf"))


def _merged(base: LayerwiseParity, sites: list[_HybridSite], missing: dict[str, tuple[str, str]],
            modules: dict, lstms: list[_LstmSite] = ()) -> DynamicLayerwiseParity:
    """``base`` with each hybrid probe judged by the reference of LiteRT's arithmetic instead of the
    simulation (the simulation's figure kept as information in ``dynamic``). A dynamic layer whose hybrid op
    was not found fails: it would otherwise pass unchecked."""
    hybrid = {s.probe.name for s in sites} | {s.sequence.name for s in lstms if s.sequence is not None}
    results = [OpParity(name, f"{type(modules[target]).__name__}, not found: {why}", "",
                        max_rel_diff=float("inf"), passed=False) for name, (target, why) in missing.items()]
    for s in sites:
        s.acc.max_rel_diff = _rel(s.max_abs, s.ref_max)
        s.acc.sim_max_rel_diff = _rel(s.sim_abs, s.sim_max)
        s.acc.passed &= s.acc.elements > 0
        results.append(OpParity(s.acc.node, s.acc.op, s.acc.source, s.acc.elements, max_rel_diff=s.acc.max_rel_diff,
                                passed=s.acc.passed))
    for s in lstms:
        results.append(OpParity(s.acc.node, f"{s.acc.op} (fused, vs the kernel model)", s.acc.source, s.acc.elements,
                                max_rel_diff=s.acc.max_rel_diff, passed=s.acc.passed))
    failures = [f for f in base.failures if f.node not in hybrid] + [r for r in results if not r.passed]
    worst = sorted([w for w in base.worst if w.node not in hybrid] + results,
                   key=lambda r: -(r.max_abs_lsb if r.max_abs_lsb is not None else r.max_rel_diff))
    return DynamicLayerwiseParity(base.runtime, not failures and base.samples > 0, base.ops + len(missing) + len(lstms),
                                  base.samples,
                                  base.max_op_lsb, failures, worst[:WORST_LISTED], base.unchecked,
                                  base.instrumentation_changed_outputs,
                                  dynamic=[s.acc for s in sites] + [s.acc for s in lstms])
