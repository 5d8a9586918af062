"""compress.capture.capture and prepare() on the code patterns of issue 7 that torch.fx could not trace.

Each model is written the way public code writes it (a shape check in forward, a HuggingFace-style position
buffer slice and additive mask, a TF-"same" Conv2d subclass calling F.conv2d after nn.ZeroPad2d, functional
code). The reference is always the eager model: captured graphs run at batch sizes other than the example's.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.capture import KEPT_META, capture
from compress.errors import CaptureError
from compress.layers import QuantLayerMixin
from compress.layers.conv import QuantConvBn2d
from compress.models import ResNet18, randomize_bn
from compress.passes import calibrate, convert, prepare

WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.ConvTranspose2d, nn.Embedding)


class ShapeChecked(nn.Module):
    """pytorch/examples' MNIST net behind the input guard published packages put in front of it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 13 * 13, 10)

    def forward(self, x):
        if x.shape[-2:] != (28, 28):
            raise ValueError(f"expected (N, 1, 28, 28), got {tuple(x.shape)}")
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        return F.log_softmax(self.fc(torch.flatten(x, 1)), dim=1)


class HFStyleEncoder(nn.Module):
    """BERT-style: position ids sliced from a buffer by the sequence length, an additive mask from ids != 0."""

    def __init__(self, vocab=30, dim=16, max_len=32):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim, padding_idx=0)
        self.position_embeddings = nn.Embedding(max_len, dim)
        self.register_buffer("position_ids", torch.arange(max_len).expand((1, -1)), persistent=False)
        self.LayerNorm = nn.LayerNorm(dim)
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.heads = 2
        self.out = nn.Linear(dim, 3)

    def split_heads(self, x):
        return x.view(x.size()[:-1] + (self.heads, x.size(-1) // self.heads)).permute(0, 2, 1, 3)

    def forward(self, input_ids):
        seq_length = input_ids.size()[1]
        position_ids = self.position_ids[:, :seq_length]
        h = self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(position_ids))
        mask = (1.0 - (input_ids != 0).float()[:, None, None, :]) * -10000.0
        q, k, v = (self.split_heads(f(h)) for f in (self.query, self.key, self.value))
        scores = torch.matmul(q, k.transpose(-1, -2)) / (q.size(-1) ** 0.5) + mask
        ctx = torch.matmul(F.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).contiguous()
        ctx = ctx.view(ctx.size()[:-2] + (h.size(-1),))
        return self.out(F.gelu(ctx)[:, 0])


class Conv2dStaticSamePadding(nn.Conv2d):
    """lukemelas/EfficientNet-PyTorch's TF-"same" port: an nn.ZeroPad2d, then a padding-free F.conv2d."""

    def __init__(self, cin, cout, k, stride=1, groups=1, image_size=16):
        super().__init__(cin, cout, k, stride=stride, groups=groups, bias=False)
        pad = max((-(-image_size // stride) - 1) * stride + k - image_size, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x):
        x = self.static_padding(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class SamePaddingNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = Conv2dStaticSamePadding(3, 8, 3, stride=2)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = Conv2dStaticSamePadding(8, 8, 3, groups=8, image_size=8)
        self.bn1 = nn.BatchNorm2d(8)
        self.se_reduce, self.se_expand = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = F.silu(self.bn0(self.stem(x)))
        y = F.silu(self.bn1(self.dw(x)))
        s = torch.sigmoid(self.se_expand(F.silu(self.se_reduce(F.adaptive_avg_pool2d(y, 1)))))
        x = x + y * s
        return self.head(F.hardswish(x).mean((2, 3)))


class Functional(nn.Module):
    """Weights as bare parameters, everything else functional."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(6, 3, 3, 3) * 0.3)
        self.b1 = nn.Parameter(torch.randn(6) * 0.1)
        self.w2 = nn.Parameter(torch.randn(4, 6) * 0.3)

    def forward(self, x):
        x = F.relu(F.conv2d(x, self.w1, self.b1, padding=1))
        x = F.avg_pool2d(x, 2).flatten(1).view(x.size(0), 6, -1).mean(-1)
        return F.linear(x, self.w2)


def _seeded(cls):
    torch.manual_seed(0)
    model = cls()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _ids(batch, length=9):
    ids = torch.randint(1, 30, (batch, length), generator=torch.Generator().manual_seed(batch))
    ids[0, -3:] = 0
    return ids


PATTERNS = {
    "shape_check": (ShapeChecked, lambda b: torch.randn(b, 1, 28, 28, generator=torch.Generator().manual_seed(b))),
    "hf_position_ids_and_mask": (HFStyleEncoder, _ids),
    "conv2d_subclass_same_padding": (SamePaddingNet,
                                     lambda b: torch.randn(b, 3, 16, 16, generator=torch.Generator().manual_seed(b))),
    "functional": (Functional, lambda b: torch.randn(b, 3, 8, 8, generator=torch.Generator().manual_seed(b))),
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_fx_untraceable_patterns_are_captured_and_match_eager(name):
    cls, data = PATTERNS[name]
    model = _seeded(cls)
    if name in ("shape_check", "hf_position_ids_and_mask"):
        with pytest.raises(Exception):  # noqa: B017  (fx raises TraceError, TypeError...: the reason for issue 7)
            torch.fx.symbolic_trace(model)
    elif name == "conv2d_subclass_same_padding":  # fx traces it to F.conv2d: no module to quantize
        assert F.conv2d in {n.target for n in torch.fx.symbolic_trace(model).graph.nodes}
    gm = capture(model, (data(1),))
    assert [str(n.target) for n in gm.graph.nodes if isinstance(n.target, torch._ops.OpOverload)] == []
    for batch in (1, 4):
        with torch.no_grad():
            torch.testing.assert_close(gm(data(batch)), model(data(batch)), rtol=1e-5, atol=1e-5)
    assert model.training is False and not any(m.training for m in model.modules())  # modes left as they were


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_prepare_captures_with_export_and_quantizes_every_weight_layer(name):
    cls, data = PATTERNS[name]
    model = _seeded(cls)
    prepared = prepare(model, data(1))
    info = prepared.compress_info
    assert info.capture == "export"
    weight_layers = [n for n, m in prepared.named_modules() if isinstance(m, WEIGHT_LAYERS)]
    assert weight_layers and all(isinstance(prepared.get_submodule(n), QuantLayerMixin) for n in weight_layers)
    assert not [m for m in prepared.modules() if isinstance(m, nn.BatchNorm2d)]  # folded into the convs
    want = {n for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}
    if name == "functional":
        want = {"w1", "w2"}  # functional weights get modules named after their parameters
    # Positions sliced from a buffer at a fixed sequence length are constants: their lookup is folded.
    want.discard("position_embeddings")
    assert want <= set(info.quantized_layers)
    q = convert(calibrate(prepared, [data(8)], progress=False))
    with torch.no_grad():
        got, ref = q(data(6)), model(data(6))
    assert got.shape == ref.shape and torch.isfinite(got).all()
    assert (got - ref).abs().max() < 0.1 * ref.abs().max() + 0.1  # an int8 simulation of the same function


def test_keep_float_names_the_users_module_paths():
    model = _seeded(SamePaddingNet)
    prepared = prepare(model, torch.randn(1, 3, 16, 16), keep_float=("stem", "se_expand"))
    assert type(prepared.get_submodule("stem")) is nn.Conv2d  # the F.conv2d of the subclass, kept float
    assert type(prepared.get_submodule("se_expand")) is nn.Conv2d
    assert isinstance(prepared.get_submodule("dw"), QuantLayerMixin)
    reasons = {f.name: f.reason for f in prepared.compress_info.float_ops}
    assert any("keep_float" in r for r in reasons.values())


def test_qat_prepare_fuses_conv_and_batchnorm_of_the_captured_graph():
    model = _seeded(ShapeChecked)
    prepared = prepare(model, torch.randn(1, 1, 28, 28), qat=True)
    assert prepared.compress_info.capture == "export" and prepared.training
    fused = prepared.get_submodule("conv1")
    assert isinstance(fused, QuantConvBn2d) and fused.training
    before = fused.bn.running_mean.clone()
    prepared(torch.randn(8, 1, 28, 28) * 3 + 1)  # a training step updates the live BatchNorm statistics
    assert not torch.equal(before, fused.bn.running_mean)


def test_captured_nodes_keep_the_users_source_line_and_module():
    model = _seeded(SamePaddingNet)
    gm = capture(model, (torch.randn(2, 3, 16, 16),))
    stem = next(n for n in gm.graph.nodes if n.target == "stem")
    assert set(KEPT_META) <= set(stem.meta)
    assert "test_capture_export.py" in stem.meta["stack_trace"] and "F.conv2d" in stem.meta["stack_trace"]
    assert [path for path, _ in stem.meta["nn_module_stack"].values()][-1] == "stem"
    silu = next(n for n in gm.graph.nodes if n.target is F.silu)
    assert "x = F.silu(self.bn0(self.stem(x)))" in silu.meta["stack_trace"]


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        if y.sum() > 0:  # a branch on tensor values: no graph can hold it
            return y * 2
        return y


def test_data_dependent_control_flow_names_the_users_line():
    with pytest.raises(CaptureError) as info:
        capture(DataDependent(), (torch.randn(2, 4),))
    message = str(info.value)
    assert "\n" not in message
    assert "DataDependent at test_capture_export.py:" in message and "if y.sum() > 0" in message
    line = int(message.split("test_capture_export.py:")[1].split()[0])
    import inspect

    source, first = inspect.getsourcelines(DataDependent.forward)
    assert "if y.sum() > 0" in source[line - first]  # the exact line of the branch
    assert "torch.where" in message  # what to do


def test_prepare_falls_back_to_module_swap_with_the_reason():
    prepared = prepare(DataDependent(), torch.randn(1, 4))
    info = prepared.compress_info
    assert info.capture == "module_swap" and info.quantized_layers == ["fc"]
    reason = next(f.reason for f in info.float_ops if f.op == "*")
    assert "test_capture_export.py:" in reason and "if y.sum() > 0" in reason


def test_models_holding_compress_layers_are_traced_with_fx():
    from compress.layers import QuantLinear

    # torch.export would decompose the quant layer into aten ops; fx keeps it one module.
    model = nn.Sequential(QuantLinear.from_float(nn.Linear(4, 4)), nn.ReLU(), nn.Linear(4, 2)).eval()
    prepared = prepare(model, torch.randn(1, 4))
    assert prepared.compress_info.capture == "fx"
    assert isinstance(prepared.get_submodule("0"), QuantLinear) and isinstance(prepared.get_submodule("2"),
                                                                               QuantLayerMixin)


def test_a_batch_fixed_by_the_code_is_exported_static():
    class FixedBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 2)

        def forward(self, x):
            return self.fc(x.reshape(1, 12))  # only ever batch 1

    model = FixedBatch().eval()
    gm = capture(model, (torch.randn(1, 3, 4),))
    x = torch.randn(1, 3, 4)
    torch.testing.assert_close(gm(x), model(x))


class LoopedCell(nn.Module):
    """A decoder step unrolled 20 times: one GRU and one Linear called with different inputs each step."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(6, 6, batch_first=True)
        self.proj = nn.Linear(6, 6)

    def forward(self, x):
        h = None
        outs = []
        for _ in range(20):
            y, h = self.gru(x, h)
            x = torch.tanh(self.proj(y))
            outs.append(x)
        return torch.cat(outs, 1)


def test_a_module_called_many_times_keeps_one_weight_tensor():
    torch.manual_seed(0)
    model = LoopedCell().eval()
    x = torch.randn(1, 1, 6)
    prepared = prepare(model, x)
    layers = [n for n in prepared.graph.nodes if n.op == "call_module"
              and isinstance(prepared.get_submodule(n.target), QuantLayerMixin)]
    calls = [n for n in layers if "proj" in n.target]
    assert len(calls) == 20 and len({n.target for n in calls}) == 20  # one module (input scale) per call
    weights = {id(p) for n in calls for p in prepared.get_submodule(n.target).parameters()}
    assert len(weights) == 2  # weight and bias: one tensor each, shared by the 20 calls
    grus = {n.target for n in layers if "gru" in n.target}
    assert len(grus) == 20
    gru_params = {id(p) for t in grus for p in prepared.get_submodule(t).parameters()}
    assert len(gru_params) == len(list(model.gru.parameters()))
    n_float = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in prepared.parameters()) <= n_float + 1000  # not 20 copies
    q = convert(calibrate(prepared, [torch.randn(8, 1, 6)], progress=False))
    with torch.no_grad():
        assert (q(x) - model(x)).abs().max() < 0.1


def test_resnet18_capture_time():
    """ResNet-18 (width 64, 11.7 M parameters) captures in seconds, not minutes."""
    torch.manual_seed(0)
    model = randomize_bn(ResNet18(num_classes=10, width=64)).eval()
    x = torch.randn(1, 3, 64, 64)
    start = time.perf_counter()
    gm = capture(model, (x,))
    seconds = time.perf_counter() - start
    assert seconds < 30, seconds
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-4)


def test_long_recurrent_sequences_capture_in_constant_time():
    """nn.LSTM / nn.GRU run as single ops while exporting: 400 steps cost what 10 do (CPU time, not wall)."""

    class Audio(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(8, 16, num_layers=2, batch_first=True, bidirectional=True)
            self.gru = nn.GRU(32, 8)

        def forward(self, x):
            y, (h, _) = self.rnn(x)
            z, _ = self.gru(y)
            return z[:, -1] + h.sum(0)[:, :8]

    torch.manual_seed(0)
    model = Audio().eval()
    capture(model, (torch.randn(2, 10, 8),))  # warm-up: the first export pays one-off costs
    start = time.process_time()
    gm = capture(model, (torch.randn(2, 400, 8),))
    assert time.process_time() - start < 5  # aten's per-step decomposition took ~30 s of CPU at 256 steps
    assert [type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes if n.op == "call_module"] == [
        "LSTM", "GRU"]
    x = torch.randn(3, 400, 8)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)
