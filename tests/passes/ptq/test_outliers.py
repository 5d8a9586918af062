"""LayerNorm / GELU outlier channels: the migration keeps the float function, int8 ONNX in onnxruntime reaches
cosine ≥ 0.99 with it where it falls clearly short without, and what cannot migrate is reported with why.

Outliers are injected by an exact reparametrization (LayerNorm gain and bias ×100 on five channels, the
reading linears' input columns ÷100), checked here against the untouched model, so every difference in the
int8 files comes from the grids, not from a different float function.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from compress.io import Dataset
from compress.passes import calibrate, capture_graph, convert, prepare
from compress.passes.ptq import OutlierConfig, PTQConfig, apply_before_calibration, suppress_outliers
from compress.quant.config import QuantConfig

CHANNELS = [3, 17, 40, 51, 60]
FACTOR = 100.0  # BERT-family LayerNorm outliers are 10-100x the other channels
GOAL = 0.99


class PreLNBlock(nn.Module):
    """GPT-2 / ViT layout: each LayerNorm feeds only linears (q/k/v; the MLP's first layer)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.query, self.key, self.value, self.out = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.act, self.fc2 = nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)

    def _split(self, x):
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).permute(0, 2, 1, 3)

    def forward(self, x, mask):
        a = self.ln1(x)
        q, k, v = self._split(self.query(a)), self._split(self.key(a)), self._split(self.value(a))
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask, dim=-1)
        x = x + self.out((p @ v).permute(0, 2, 1, 3).flatten(2))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class PreLNEncoder(nn.Module):
    def __init__(self, vocab: int = 16, d: int = 64, layers: int = 2, heads: int = 2, max_len: int = 32):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.register_buffer("position_ids", torch.arange(max_len)[None], persistent=False)
        self.blocks = nn.ModuleList(PreLNBlock(d, heads) for _ in range(layers))
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, 2)

    def forward(self, ids):
        mask = (1.0 - (ids != 0).float()[:, None, None, :]) * -10000.0
        x = self.tok(ids) + self.pos(self.position_ids[:, :ids.shape[1]])
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln_f(x)[:, 0])


def _preln_groups(m: PreLNEncoder):
    groups = [g for b in m.blocks for g in ((b.ln1, [b.query, b.key, b.value]), (b.ln2, [b.fc1]))]
    return groups + [(m.ln_f, [m.head])]


class ZooPooled(nn.Module):
    """The zoo BERT's pooled [CLS] embedding (what a sentence encoder returns); same weights as the classifier."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, ids):
        m = self.bert
        extended = m.get_extended_attention_mask((ids != m.config.pad_token_id).float())
        return m.pooler(m.encoder(m.embeddings(input_ids=ids), attention_mask=extended))


def _zoo_groups(m: ZooPooled):
    # Post-LN BERT: every LayerNorm but the last also feeds a residual add into the next LayerNorm, whose
    # statistics a per-channel scale would change; the last feeds only the pooler's linear (through h[:, 0]).
    return [(m.bert.encoder.layer[-1].output.LayerNorm, [m.bert.pooler.dense])]


def _inject(net: nn.Module, groups) -> nn.Module:
    net = copy.deepcopy(net)
    with torch.no_grad():
        for ln, linears in groups(net):
            ln.weight[CHANNELS] *= FACTOR
            ln.bias[CHANNELS] *= FACTOR
            for lin in linears:
                lin.weight[:, CHANNELS] /= FACTOR
    return net.eval()


def _token_data(n: int, seed: int) -> np.ndarray:
    from tests.zoo.data import token_order

    train, _ = token_order(seed, n=n + 500)
    return train.inputs["input_ids"][:n]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _int8_onnx(net: nn.Module, calib: np.ndarray, tmp_path, *, auto: bool, mode: str = "static"):
    import onnxruntime as ort

    from compress.exporters.onnx import export_onnx

    x = torch.as_tensor(calib[:1])
    prepared = prepare(net, x, QuantConfig(mode=mode))
    report = apply_before_calibration(prepared, [torch.as_tensor(calib)], PTQConfig(auto_outliers=auto))
    calibrate(prepared, [torch.as_tensor(calib)])
    path = tmp_path / f"{mode}-{auto}.onnx"
    export_onnx(convert(prepared), (x,), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return (lambda ids: session.run(None, {session.get_inputs()[0].name: ids})[0]), report, path


def _ln_output_ratio(net: nn.Module, ln_path: str, x) -> float:
    """max / median over channels of max |LayerNorm output| (a hook on the float module: no pass code)."""
    seen = []
    handle = net.get_submodule(ln_path).register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    with torch.no_grad():
        net(x)
    handle.remove()
    amax = torch.cat(seen).abs().reshape(-1, seen[0].shape[-1]).amax(0).numpy()
    return float(amax.max() / np.median(amax))


def test_injection_keeps_the_float_function():
    torch.manual_seed(0)
    net = PreLNEncoder().eval()
    ids = torch.as_tensor(_token_data(64, seed=1))
    injected = _inject(net, _preln_groups)
    with torch.no_grad():
        torch.testing.assert_close(injected(ids), net(ids), rtol=1e-4, atol=1e-5)
    assert _ln_output_ratio(injected, "blocks.0.ln1", ids) > 50  # the outliers are there to be found


def test_migration_is_exact_and_equalizes_the_layernorm_outputs():
    torch.manual_seed(0)
    net = _inject(PreLNEncoder().eval(), _preln_groups)
    ids = torch.as_tensor(_token_data(128, seed=2))
    gm, _ = capture_graph(net, ids[:1])
    summary = suppress_outliers(gm, [ids])
    by_op = {s["op"]: s for s in summary["sites"]}
    assert {s["action"] for s in summary["sites"]} == {"migrated"}
    assert by_op["blocks_0_ln1"]["into"] == ["blocks.0.query", "blocks.0.key", "blocks.0.value"]
    assert by_op["ln_f"]["into"] == ["head"] and by_op["ln_f"]["outliers"] == len(CHANNELS)
    with torch.no_grad():
        torch.testing.assert_close(gm(ids), net(ids), rtol=1e-4, atol=1e-5)
    for path in ("blocks.0.ln1", "blocks.1.ln2", "ln_f"):
        assert _ln_output_ratio(gm, path, ids) < OutlierConfig().k, path  # no channel is an outlier any more
    assert suppress_outliers(gm, [ids])["sites"] == []  # idempotent: nothing left to find


def test_a_layernorm_that_feeds_the_residual_is_blocked_or_copied_for_the_linears():
    from tests.zoo.models_seq import BertConfig, BertOutput

    torch.manual_seed(0)
    block = BertOutput(BertConfig(hidden_size=32, intermediate_size=64)).eval()

    class PostLN(nn.Module):  # BERT's output sub-layer, then a next-layer linear reading the LayerNorm output
        def __init__(self):
            super().__init__()
            self.block, self.next = block, nn.Linear(32, 32)

        def forward(self, h, residual):
            out = self.block(h, residual)
            return out + self.next(out)

    net = PostLN().eval()
    with torch.no_grad():
        net.block.LayerNorm.weight[[5, 9]] *= 40  # outliers the residual also carries: no exact fold exists
    x = (torch.randn(64, 8, 64), torch.randn(64, 8, 32))
    gm, _ = capture_graph(net, tuple(t[:1] for t in x))
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    # ((h, residual),): one batch of a two-input model
    (site,) = suppress_outliers(gm, [(x,)], OutlierConfig(copy=False))["sites"]
    assert site["action"] == "blocked" and site["outliers"] == 2 and site["module"] == "block.LayerNorm"
    assert "add" in site["reason"] and "residual" in site["reason"], site["reason"]
    assert all(torch.equal(before[k], v) for k, v in gm.state_dict().items())

    (site,) = suppress_outliers(gm, [(x,)])["sites"]  # by default the linear reads a copy of the LayerNorm
    assert site["action"] == "migrated" and site["copy"] and site["into"] == ["next"]
    with torch.no_grad():
        torch.testing.assert_close(gm(*x), net(*x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gm.get_submodule("block.LayerNorm").weight, net.block.LayerNorm.weight)
    copies = [m for name, m in gm.named_modules() if isinstance(m, nn.LayerNorm) and name != "block.LayerNorm"]
    assert len(copies) == 1 and copies[0].weight[[5, 9]].abs().max() < net.block.LayerNorm.weight[[5, 9]].abs().min()


def test_gelu_outliers_are_reported_not_migrated():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4)).eval()
    with torch.no_grad():
        net[0].weight[7] *= 30  # one FFN channel far above the rest
    x = torch.randn(64, 16)
    gm, _ = capture_graph(net, x[:1])
    (site,) = suppress_outliers(gm, [x])["sites"]
    assert site["kind"] == "gelu" and site["action"] == "blocked" and site["indices"] == [7]
    assert "GELU" in site["reason"]


def test_a_model_without_outliers_is_untouched_and_unreported():
    torch.manual_seed(0)
    net = PreLNEncoder().eval()
    ids = torch.as_tensor(_token_data(64, seed=3))
    prepared = prepare(net, ids[:1])
    before = {k: v.detach().clone() for k, v in prepared.named_parameters()}
    assert apply_before_calibration(prepared, [ids], PTQConfig()) == {}
    assert all(torch.equal(before[k], v) for k, v in prepared.named_parameters())
    assert apply_before_calibration(prepared, [ids], PTQConfig.parse("outliers"))["outliers"]["sites"] == []


@pytest.mark.onnx
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_preln_int8_onnx_reaches_the_goal_only_with_the_pass(mode, tmp_path):
    torch.manual_seed(0)
    net = _inject(PreLNEncoder().eval(), _preln_groups)
    calib, test = _token_data(256, seed=4), _token_data(300, seed=5)
    with torch.no_grad():
        ref = net(torch.as_tensor(test)).numpy()
    without, report_off, _ = _int8_onnx(net, calib, tmp_path, auto=False, mode=mode)
    with_pass, report_on, path = _int8_onnx(net, calib, tmp_path, auto=True, mode=mode)
    assert "outliers" not in report_off
    assert [s["action"] for s in report_on["outliers"]["sites"]] == ["migrated"] * 5
    cos_off, cos_on = _cosine(without(test), ref), _cosine(with_pass(test), ref)
    goal = GOAL if mode == "static" else 0.995  # issue 8's goals vs fp32
    assert cos_on >= goal > cos_off + 0.01, (cos_off, cos_on)  # measured 0.818 / 0.9998 static, 0.975 / 0.9999 dynamic
    if mode == "static":
        _assert_softmax_grid(path)


def _assert_softmax_grid(path) -> None:
    """Every softmax output is quantized on the fixed [0, 1) grid: scale 1/256 (TFLite's int8 SOFTMAX)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    softmax = {n.output[0] for n in model.graph.node if n.op_type == "Softmax"}
    scales = [float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"
              and n.input[0] in softmax]
    assert scales and all(s == 1 / 256 for s in scales), scales


@pytest.mark.slow
@pytest.mark.onnx
def test_zoo_bert_with_real_scale_outliers_through_the_default_pipeline(tmp_path):
    """The trained zoo BERT (post-LN) with outliers at its last LayerNorm, through quantize_model's defaults:
    the pass runs unasked, migrates that one, and the pooled embedding in onnxruntime keeps cosine ≥ 0.99."""
    import onnxruntime as ort

    from compress.pipeline import QuantizeOptions, quantize_model
    from tests.zoo.train import trained

    bert, calib, test = trained("bert")
    net = _inject(ZooPooled(copy.deepcopy(bert)).eval(), _zoo_groups)
    ids = test.inputs["input_ids"][:300]
    with torch.no_grad():
        ref = net(torch.as_tensor(ids)).numpy()
        torch.testing.assert_close(torch.as_tensor(ref), ZooPooled(bert)(torch.as_tensor(ids)), rtol=1e-4,
                                   atol=1e-5)
    report = quantize_model(net, Dataset(calib.inputs["input_ids"]), tmp_path, QuantizeOptions(latency_runs=1),
                            progress=False)
    (site,) = report["ptq"]["outliers"]["sites"]
    assert site["action"] == "migrated" and site["into"] == ["bert.pooler.dense"] and site["ratio"] > 50
    assert json.loads((tmp_path / "report.json").read_text())["ptq"]["outliers"]["sites"][0]["op"] == site["op"]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    with_pass = _cosine(session.run(None, {session.get_inputs()[0].name: ids})[0], ref)
    without, _, _ = _int8_onnx(net, calib.inputs["input_ids"], tmp_path, auto=False)
    cos_off = _cosine(without(ids), ref)
    assert with_pass >= GOAL and cos_off < GOAL, (cos_off, with_pass)  # measured 0.978 / 0.9999


NET_PY = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.Linear(32, 4))
    with torch.no_grad():
        net[1].weight[[4, 20]] *= 60.0
        net[2].weight[:, [4, 20]] /= 60.0
    return net
"""


@pytest.mark.onnx
def test_cli_prints_the_outlier_table(cli, tmp_path):
    (tmp_path / "nets.py").write_text(NET_PY)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32))
    import importlib.util

    spec = importlib.util.spec_from_file_location("nets_for_cli", tmp_path / "nets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.save(module.build().state_dict(), tmp_path / "net.pt")
    result = cli("quantize", "net.pt", "--arch", "nets.py:build", "--calib", "calib.npz", "-o", "out")
    assert result.exit_code == 0, result.output
    assert "outlier channels" in result.output and "2 of 32" in result.output and "migrated into 2" in result.output
    assert json.loads((tmp_path / "out" / "report.json").read_text())["ptq"]["outliers"]["sites"][0]["op"] == "_1"


class _ResidualLN(nn.Module):
    """Post-LN: LayerNorm → (linear, residual add) twice, then a head; the first LayerNorm has outliers."""

    def __init__(self):
        super().__init__()
        self.fc0, self.ln1, self.fc1, self.ln2, self.head = (nn.Linear(16, 32), nn.LayerNorm(32),
                                                             nn.Linear(32, 32), nn.LayerNorm(32), nn.Linear(32, 3))

    def forward(self, x):
        h = self.ln1(self.fc0(x))
        return self.head(self.ln2(h + self.fc1(h)))


@pytest.mark.onnx
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_the_layernorm_copy_exports_and_verifies_in_onnxruntime(mode, tmp_path):
    from compress.pipeline import QuantizeOptions, quantize_model

    torch.manual_seed(0)
    net = _ResidualLN().eval()
    with torch.no_grad():
        net.ln1.weight[[2, 11, 30]] *= 50
    x = np.random.default_rng(0).standard_normal((128, 16)).astype(np.float32)
    prepared = prepare(net, torch.as_tensor(x[:1]), QuantConfig(mode=mode))
    apply_before_calibration(prepared, [torch.as_tensor(x)], PTQConfig())
    quantizers = [n.target for n in prepared.graph.nodes if n.op == "call_module" and "act_quant" in n.target]
    # the copy is quantized where the original is (static), and not where dynamic linears read it in float
    assert ("ln1_smoothed_act_quant" in quantizers) == (mode == "static"), quantizers
    report = quantize_model(net, Dataset(x), tmp_path, QuantizeOptions(latency_runs=1, mode=mode), progress=False)
    (site,) = report["ptq"]["outliers"]["sites"]
    assert site["op"] == "ln1" and site["copy"] and site["into"] == ["fc1"]
    assert report["formats"]["onnx"]["parity"]["passed"], report["formats"]["onnx"]["parity"]
    assert report["formats"]["onnx"]["int8"]["top1_agreement"] >= 0.95


def test_a_linear_shared_with_another_input_blocks_the_migration():
    class Shared(nn.Module):  # one linear applied to the LayerNorm output and to the raw input
        def __init__(self):
            super().__init__()
            self.ln, self.fc = nn.LayerNorm(16), nn.Linear(16, 16)

        def forward(self, x):
            return self.fc(self.ln(x)) + self.fc(x)

    torch.manual_seed(0)
    net = Shared().eval()
    with torch.no_grad():
        net.ln.weight[[1, 8]] *= 40
    x = torch.randn(64, 16)
    prepared = prepare(net, x[:1])  # prepare gives each call its own module, sharing the parameters
    (site,) = apply_before_calibration(prepared, [x], PTQConfig())["outliers"]["sites"]
    assert site["action"] == "blocked" and "shares its weights" in site["reason"], site
    with torch.no_grad():
        torch.testing.assert_close(prepared.get_submodule("fc").weight, net.fc.weight)
