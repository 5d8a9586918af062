"""Additive attention masks stay float (compress/passes/masks.py): found by structure, never quantized, and the
int8 attention then agrees with the float model in the real runtimes (the float model is the reference)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import DataError
from compress.io import Dataset
from compress.passes import calibrate, convert, prepare
from compress.quant.config import QuantConfig

MASKS = {
    # pre-v4 Hugging Face: (1 - mask) * -10000
    "bert": lambda keep: (1.0 - keep[:, None, :]) * -10000.0,
    # today's Hugging Face: (1 - mask) * finfo.min
    "finfo": lambda keep: (1.0 - keep[:, None, :]) * torch.finfo(torch.float32).min,
    # an additive -inf mask
    "inf": lambda keep: torch.zeros_like(keep[:, None, :]).masked_fill(keep[:, None, :] == 0, float("-inf")),
}


class TinyAttention(nn.Module):
    """One attention head over [B, S, D] with a padding mask ``keep`` [B, S] (1 = token, 0 = padding)."""

    def __init__(self, kind: str = "bert", dim: int = 16):
        super().__init__()
        self.kind = kind
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        with torch.no_grad():
            self.q.weight.mul_(6.0)  # peaked attention, as trained heads have (random ones are near uniform)

    def forward(self, x, keep):
        scores = self.q(x) @ self.k(x).transpose(-1, -2) / 4.0
        probs = torch.softmax(scores + MASKS[self.kind](keep), dim=-1)
        return self.out(probs @ self.v(x))


class LearnedBias(nn.Module):
    """Scores plus a learned position bias (a parameter, not a mask): that add must stay quantized."""

    def __init__(self):
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.bias = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return torch.softmax(self.q(x) @ x.transpose(-1, -2) + self.bias, dim=-1)


def _data(n=64, s=6, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, s, d)).astype(np.float32)
    lengths = rng.integers(2, s + 1, n)
    keep = (np.arange(s)[None, :] < lengths[:, None]).astype(np.float32)
    return x, keep


def _quantizers_after(prepared, names):
    modules = dict(prepared.named_modules())
    return {n.args[0].name for n in prepared.graph.nodes if n.op == "call_module"
            and type(modules[n.target]).__name__ == "Quantizer" and n.args[0].name in names}


@pytest.mark.parametrize("kind", sorted(MASKS))
def test_mask_add_and_mask_ops_have_no_quantizer_and_are_listed(kind):
    torch.manual_seed(0)
    x, keep = _data(1)
    p = prepare(TinyAttention(kind).eval(), (torch.from_numpy(x), torch.from_numpy(keep)), QuantConfig())
    listed = {f.name: f.reason for f in p.compress_info.float_ops if "attention mask" in f.reason}
    adds = [n.name for n in p.graph.nodes if n.name in listed and "add" in n.name]
    assert len(adds) == 1, listed
    mask_ops = set(listed) - set(adds)
    assert mask_ops, listed  # the op making the mask (mul / masked_fill) was int8-bound and is float now
    assert not _quantizers_after(p, set(listed) | {"keep"}), "a mask value is still quantized"
    # The scores keep their own grid: the other operand of the add is still quantized.
    add = next(n for n in p.graph.nodes if n.name == adds[0])
    assert any(type(p.get_submodule(a.target)).__name__ == "Quantizer" for a in add.args if a.op == "call_module")


def test_learned_bias_and_plain_adds_are_not_masks():
    p = prepare(LearnedBias().eval(), (torch.randn(1, 4, 8),), QuantConfig())
    assert not [f for f in p.compress_info.float_ops if "attention mask" in f.reason]
    adds = {n.name for n in p.graph.nodes if n.op == "call_function" and "add" in n.name}
    assert adds and _quantizers_after(p, adds) == adds


def _cosine(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def _int8(model, x, keep):
    p = prepare(model, (torch.from_numpy(x[:1]), torch.from_numpy(keep[:1])), QuantConfig())
    calibrate(p, Dataset({"x": x, "keep": keep}, None, "rand"), progress=False)
    return convert(p)


@pytest.mark.onnx
@pytest.mark.tflite
@pytest.mark.parametrize("kind, formats", [("bert", ("onnx", "tflite")), ("finfo", ("onnx", "tflite")),
                                           ("inf", ("onnx", "tflite"))])
def test_int8_attention_follows_float_in_the_runtimes(kind, formats, tmp_path, monkeypatch):
    import onnxruntime as ort

    from compress.exporters.onnx import export_onnx
    from compress.exporters.tflite import export_tflite
    from compress.exporters.tflite.verify import load_interpreter, run_tflite

    torch.manual_seed(0)
    model = TinyAttention(kind).eval()
    x, keep = _data()
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(keep)).numpy()
    q = _int8(model, x, keep)
    example = (torch.from_numpy(x[:1]), torch.from_numpy(keep[:1]))
    outputs = {}
    if "onnx" in formats:
        export_onnx(q, example, tmp_path / "m.onnx")
        sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
        outputs["onnx"] = sess.run(None, {"x": x, "keep": keep})[0]
    if "tflite" in formats:
        export_tflite(q, example, tmp_path / "m.tflite")
        outputs["tflite"] = run_tflite(load_interpreter(tmp_path / "m.tflite"), (x, keep))[0]
    for fmt, out in outputs.items():
        assert np.isfinite(out).all() and _cosine(ref, out) >= 0.99, fmt

    # Without the pass the mask sets the sum's range: -10000 makes the int8 step ~40 and the attention is lost;
    # finfo.min / -inf overflow it (NaN: calibration refuses the model, or the outputs are not finite).
    # (compress.passes re-exports the function prepare under the module's name: patch the module itself.)
    monkeypatch.setattr(sys.modules["compress.passes.prepare"], "carry_masks_in_float", lambda gm: [])
    try:
        plain_model = _int8(model, x, keep)
    except DataError as exc:
        assert kind != "bert" and "NaN or inf" in str(exc)
        return
    with torch.no_grad(), np.errstate(invalid="ignore"):
        plain = plain_model(torch.from_numpy(x), torch.from_numpy(keep)).numpy()
    assert not np.isfinite(plain).all() or _cosine(ref, plain) < 0.95
