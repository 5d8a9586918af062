"""Every aten handler of compress.capture against eager torch: one small module per op family.

Each case is captured at batch 2 and run at batches 2 and 5: the raised graph must compute what the module
computes (eager torch is the reference, never the raised graph), hold the canonical torch form the op
registry declares for that op, and keep no aten op of its own (no generic node).
"""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.capture import capture, supported_aten_ops


class Fn(nn.Module):
    """A module whose forward is ``fn(*inputs)`` (functional code, as user models write it)."""

    def __init__(self, fn, **children):
        super().__init__()
        self.fn = fn
        for name, child in children.items():
            self.add_module(name, child)

    def forward(self, *xs):
        return self.fn(self, *xs)


def _img(b, c=3, h=6, w=6, seed=0):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(100 * seed + b))


def _seq(b, length=5, d=8, seed=0):
    return torch.randn(b, length, d, generator=torch.Generator().manual_seed(100 * seed + 10 + b))


def _ids(b, length=7, vocab=20):
    ids = torch.randint(1, vocab, (b, length), generator=torch.Generator().manual_seed(20 + b))
    ids[:, -2:] = 0  # padding at the end, as tokenizers produce
    return ids


# name -> (module factory, inputs(batch) -> tuple, the targets the raised graph must contain)
CASES = {
    "zero_pad2d": (lambda: Fn(lambda m, x: m.pad(x), pad=nn.ZeroPad2d((0, 1, 2, 0))), lambda b: (_img(b),),
                   {F.pad}),
    "constant_pad": (lambda: Fn(lambda m, x: F.pad(x, (1, 1), value=0.5)), lambda b: (_img(b),), {F.pad}),
    "reflect_pad2d": (lambda: Fn(lambda m, x: F.pad(x, (1, 2, 2, 1), mode="reflect")), lambda b: (_img(b),),
                      {F.pad}),
    "reflect_pad1d": (lambda: Fn(lambda m, x: m.pad(x), pad=nn.ReflectionPad1d(2)), lambda b: (_seq(b),),
                      {F.pad}),
    "replicate_pad2d": (lambda: Fn(lambda m, x: m.pad(x), pad=nn.ReplicationPad2d(1)), lambda b: (_img(b),),
                        {F.pad}),
    "compare": (lambda: Fn(lambda m, x: ((x > 0.1) & (x <= 0.9) | (x == 0) | ~(x != x) & (x < -1) | (x >= 2))
                           .float()), lambda b: (_img(b),),
                {torch.gt, torch.le, torch.eq, torch.ne, torch.lt, torch.ge, torch.logical_and,
                 torch.logical_or, torch.logical_not}),
    "compare_tensors": (lambda: Fn(lambda m, x, y: torch.logical_not(x > y).float() + (x == y).float()),
                        lambda b: (_img(b), _img(b, seed=1)), {torch.gt, torch.eq, torch.logical_not}),
    "where_masked_fill": (lambda: Fn(lambda m, x: torch.where(x > 0, x, x * 0.1).masked_fill(x < -1, -5.0)),
                          lambda b: (_img(b),), {torch.where, torch.masked_fill}),
    "activations": (lambda: Fn(lambda m, x: F.silu(x) + F.leaky_relu(x, 0.2) + F.elu(x, alpha=0.7) + F.mish(x)
                               + F.hardsigmoid(x) + torch.erf(x) + F.gelu(x, approximate="tanh")),
                    lambda b: (_img(b),), {F.silu, F.leaky_relu, F.elu, F.mish, F.hardsigmoid, torch.erf, F.gelu}),
    "math": (lambda: Fn(lambda m, x: torch.exp(-x.abs()) + torch.log(x.abs() + 1) + torch.sqrt(x.abs())
                        + torch.rsqrt(x.abs() + 1) + x.pow(2) + torch.reciprocal(x.abs() + 2)),
             lambda b: (_img(b),), {torch.exp, torch.log, torch.sqrt, torch.rsqrt, torch.abs, torch.pow,
                                    torch.reciprocal}),
    "prelu": (lambda: Fn(lambda m, x: m.act(x), act=nn.PReLU(3, init=0.1)), lambda b: (_img(b),), {"act"}),
    "prelu_shared": (lambda: Fn(lambda m, x: m.act(x), act=nn.PReLU()), lambda b: (_img(b),), {"act"}),
    "conv_transpose2d": (lambda: Fn(lambda m, x: m.up(x), up=nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1,
                                                                              output_padding=1, groups=1)),
                         lambda b: (_img(b),), {"up"}),
    "conv_transpose2d_grouped": (lambda: Fn(lambda m, x: m.up(x), up=nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2,
                                                                                      bias=False)),
                                 lambda b: (_img(b, c=4),), {"up"}),
    "conv_transpose1d": (lambda: Fn(lambda m, x: m.up(x.transpose(1, 2)), up=nn.ConvTranspose1d(8, 3, 4, stride=2,
                                                                                             dilation=2)),
                         lambda b: (_seq(b),), {"up"}),
    "interpolate_nearest_scale": (lambda: Fn(lambda m, x: F.interpolate(x, scale_factor=2, mode="nearest")),
                                  lambda b: (_img(b),), {F.interpolate}),
    "upsample_module": (lambda: Fn(lambda m, x: m.up(x), up=nn.Upsample(scale_factor=2, mode="bilinear")),
                        lambda b: (_img(b),), {F.interpolate}),
    "interpolate_bilinear_size": (lambda: Fn(lambda m, x: F.interpolate(x, size=(9, 4), mode="bilinear",
                                                                       align_corners=True)),
                                  lambda b: (_img(b),), {F.interpolate}),
    "expand_repeat": (lambda: Fn(lambda m, x: x.mean(1, keepdim=True).expand(-1, 3, -1, -1) + x.repeat(1, 1, 1, 1)
                                 + x[:, :1].expand_as(x)), lambda b: (_img(b),), set()),
    "unflatten_split_chunk_unbind": (
        lambda: Fn(lambda m, x: torch.cat(torch.split(x.unflatten(2, (2, 3)).flatten(2, 3), [2, 4], dim=2), 2)
                   + x.chunk(3, dim=1)[1] + torch.stack(x.unbind(3), 3)),
        lambda b: (_img(b),), {torch.unflatten, torch.split, torch.unbind}),
    "split_even": (lambda: Fn(lambda m, x: sum(t.sum(1) for t in x.split(2, dim=-1))), lambda b: (_seq(b),),
                   {torch.split}),
    "gather_index_select": (
        lambda: Fn(lambda m, x: torch.gather(x, 2, x.argmax(2, keepdim=True).expand(-1, -1, 2)) + torch.index_select(
            x, 2, torch.tensor([0, 2])) + x[:, :, torch.tensor([1, 4])]), lambda b: (_seq(b),),
        {torch.gather, torch.index_select}),
    "index_by_computed_index": (lambda: Fn(lambda m, x: x[:, :, x[0, 0].argmax().reshape(1)]), lambda b: (_seq(b),),
                                {torch.index_select}),
    "reductions": (lambda: Fn(lambda m, x: x.sum(-1, keepdim=True) + x.sum() + x.amax(1, keepdim=True)
                              + x.amin((1, 2), keepdim=True) + x.max(-1, keepdim=True).values
                              + x.min(1, keepdim=True)[0] + x.argmax(-1, keepdim=True).float()
                              + x.cumsum(1) + x.mean((-1, -2), keepdim=True)),
                   lambda b: (_seq(b),), {torch.sum, torch.amax, torch.amin, torch.max, torch.min, torch.argmax,
                                          torch.cumsum}),
    "arange_positions": (lambda: Fn(lambda m, x: m.pos(torch.arange(x.shape[1]).unsqueeze(0).expand(x.shape[0], -1))
                                    + x, pos=nn.Embedding(16, 8)), lambda b: (_seq(b),), set()),
    "arange_symbolic": (lambda: Fn(lambda m, x: x * torch.arange(x.shape[0], dtype=torch.float32)[:, None, None]),
                        lambda b: (_seq(b),), {torch.arange}),
    "constructors": (lambda: Fn(lambda m, x: x + torch.zeros(x.shape[0], 1, 8) + torch.ones_like(x)
                                + torch.full((x.shape[0], 5, 1), 2.0) + torch.zeros_like(x[:, :1])),
                     lambda b: (_seq(b),), {torch.zeros, torch.ones, torch.full}),
    "casts": (lambda: Fn(lambda m, x, ids: x.sum(-1) + (ids != 0).type_as(x)[:, :5] + ids[:, :5].float()),
              lambda b: (_seq(b), _ids(b)), {torch.ne}),
    "baddbmm": (lambda: Fn(lambda m, x, y: torch.baddbmm(y[:, :, :5], x, x.transpose(1, 2), beta=0.5, alpha=2.0)),
                lambda b: (_seq(b), _seq(b, seed=1)), {torch.matmul}),
    "sdpa_additive_mask": (lambda: Fn(lambda m, q, ids: F.scaled_dot_product_attention(
        q[:, None], q[:, None], q[:, None], attn_mask=(1.0 - (ids[:, :5] != 0).float()[:, None, None, :]) * -1e4)),
        lambda b: (_seq(b), _ids(b)), {torch.matmul, torch.softmax}),
    "sdpa_bool_mask_scale": (lambda: Fn(lambda m, q: F.scaled_dot_product_attention(
        q, q * 2, q, attn_mask=torch.tril(torch.ones(5, 5, dtype=torch.bool)), scale=0.3)),
        lambda b: (_seq(b),), {torch.matmul, torch.softmax, torch.masked_fill}),
    "sdpa_causal": (lambda: Fn(lambda m, q: F.scaled_dot_product_attention(q, q, q, is_causal=True)),
                    lambda b: (_seq(b),), {torch.matmul, torch.softmax, torch.masked_fill}),
    "lstm_bidirectional_batch_first": (lambda: Fn(lambda m, x: m.rnn(x)[0], rnn=nn.LSTM(8, 6, num_layers=2,
                                                                                      batch_first=True,
                                                                                      bidirectional=True)),
                                       lambda b: (_seq(b),), {"rnn"}),
    "lstm_state_outputs": (lambda: Fn(lambda m, x: torch.cat([m.rnn(x)[1][0], m.rnn(x)[1][1]], -1),
                                      rnn=nn.LSTM(8, 4)), lambda b: (_seq(b),), {"rnn"}),
    "gru_with_hidden": (lambda: Fn(lambda m, x, h: m.rnn(x, h[:, :, :6].transpose(0, 1).contiguous()[:1])[1],
                                   rnn=nn.GRU(8, 6, batch_first=True, bias=False)),
                        lambda b: (_seq(b), _seq(b, seed=2)), {"rnn"}),
    "multihead_attention": (lambda: Fn(lambda m, x: m.attn(x, x, x)[0], attn=nn.MultiheadAttention(8, 2,
                                                                                                   batch_first=True)),
                            lambda b: (_seq(b),), {"attn.in_proj", "attn.out_proj", torch.softmax}),
}


def _targets(gm: torch.fx.GraphModule) -> set:
    return {n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_handler_matches_eager_at_other_batch_sizes(name):
    build, inputs, wanted = CASES[name]
    torch.manual_seed(0)
    model = build().eval()
    gm = capture(model, inputs(2))
    generic = [str(n.target) for n in gm.graph.nodes if isinstance(n.target, torch._ops.OpOverload)]
    assert generic == [], f"aten ops left without a torch-level form: {generic}"
    missing = {w for w in wanted if w not in _targets(gm)}
    assert not missing, f"{missing} not in the raised graph:\n{gm.code}"
    for batch in (2, 5, 1):
        with torch.no_grad():
            got, want = gm(*inputs(batch)), model(*inputs(batch))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m, b=batch: f"batch {b}: {m}")


def test_canonical_forms_and_module_hyper_parameters():
    """The exact forms other modules read: pad value kwarg only for constant, interpolate by scale factor,
    ConvTranspose2d / PReLU / LSTM rebuilt with the original hyper-parameters under the original names."""
    model = Fn(lambda m, x: m.rnn(F.interpolate(F.pad(m.up(m.act(x)), (1, 1, 1, 1), mode="reflect"), scale_factor=2)
                                  .mean(3).transpose(1, 2))[0],  # 28 steps: export walks each one
               act=nn.PReLU(3), up=nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1, dilation=1),
               rnn=nn.LSTM(2, 4, batch_first=True, bidirectional=True)).eval()
    gm = capture(model, (_img(2),))
    pad = next(n for n in gm.graph.nodes if n.target is F.pad)
    assert pad.args[1] == [1, 1, 1, 1] and pad.kwargs == {"mode": "reflect"}
    resize = next(n for n in gm.graph.nodes if n.target is F.interpolate)
    assert resize.kwargs == {"size": None, "scale_factor": [2.0, 2.0], "mode": "nearest", "align_corners": None}
    up, act, rnn = gm.get_submodule("up"), gm.get_submodule("act"), gm.get_submodule("rnn")
    assert type(up) is nn.ConvTranspose2d and (up.stride, up.padding, up.output_padding) == ((2, 2), (1, 1), (1, 1))
    assert type(act) is nn.PReLU and act.num_parameters == 3
    assert type(rnn) is nn.LSTM and (rnn.hidden_size, rnn.bidirectional, rnn.batch_first) == (4, True, True)
    torch.testing.assert_close(rnn.weight_hh_l0_reverse, model.rnn.weight_hh_l0_reverse)
    zero_pad = capture(Fn(lambda m, x: F.pad(x, (0, 1, 0, 1))), (_img(2),))
    node = next(n for n in zero_pad.graph.nodes if n.target is F.pad)
    assert node.kwargs == {"mode": "constant", "value": 0.0}


def test_zero_pad_before_a_conv_stays_explicit():
    """ZeroPad2d + conv: the pad is not folded into the conv's padding (the exporters decide)."""
    model = Fn(lambda m, x: m.conv(m.pad(x)), pad=nn.ZeroPad2d((0, 1, 0, 1)), conv=nn.Conv2d(3, 4, 3, 2)).eval()
    gm = capture(model, (_img(2),))
    conv_node = next(n for n in gm.graph.nodes if n.target == "conv")
    assert conv_node.args[0].target is F.pad and gm.get_submodule("conv").padding == (0, 0)


def test_max_with_indices_outputs_both_values():
    model = Fn(lambda m, x: x.max(-1)[0] + x.max(-1)[1].float() + x.min(1).indices.float().sum(-1, keepdim=True))
    gm = capture(model, (_seq(2),))
    assert {torch.max, torch.min, operator.getitem} <= _targets(gm)
    torch.testing.assert_close(gm(_seq(4)), model(_seq(4)))


def test_supported_ops_list_the_new_handlers():
    ops = set(supported_aten_ops())
    for name in ("pad", "constant_pad_nd", "reflection_pad2d", "replication_pad1d", "ne", "eq", "where",
                 "masked_fill", "logical_not", "bitwise_not", "silu", "prelu", "elu", "mish", "hardsigmoid",
                 "conv_transpose2d", "upsample_nearest2d", "upsample_bilinear2d", "expand", "repeat", "unflatten",
                 "split", "split_with_sizes", "chunk", "unbind", "gather", "index_select", "index", "sum", "amax",
                 "amin", "max", "min", "argmax", "cumsum", "arange", "zeros", "ones", "full", "zeros_like",
                 "baddbmm", "scaled_dot_product_attention", "lstm", "gru", "erf", "rsqrt", "reciprocal", "pow"):
        assert f"aten.{name}" in ops, name
    assert "aten.cumprod" not in ops


def test_lstm_with_projections_stays_the_aten_op_and_computes_the_same():
    """No nn.LSTM rebuild for proj_size: the generic node is aten's own lstm (never capture's stand-in op)."""
    model = Fn(lambda m, x: m.rnn(x)[0], rnn=nn.LSTM(8, 16, proj_size=4, batch_first=True)).eval()
    gm = capture(model, (_seq(2),))
    generic = [n.target for n in gm.graph.nodes if isinstance(n.target, torch._ops.OpOverload)]
    assert generic == [torch.ops.aten.lstm.input]
    torch.testing.assert_close(gm(_seq(3)), model(_seq(3)))
