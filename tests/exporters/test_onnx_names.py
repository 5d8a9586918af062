"""Value names in the ONNX file: short by default, the model's with ``readable_names=True``, the same graph either way.

A readable name is written at every use of a value (34 kB of the zoo BERT's 164 kB int8 file), so the exporter
names values with one or two characters and leaves nodes unnamed; the graph's inputs and outputs keep their
names. Op-by-op verification finds each fx node's int8 value through ``ExportInfo.probe_values`` and its
messages still name the user's op and source line.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import ConfigError, VerificationError
from compress.exporters import OnnxExportConfig, export_onnx, verify_onnx
from compress.exporters.onnx.graph import GraphBuilder
from compress.exporters.verify_ops import failure_message
from compress.passes import calibrate, convert, prepare
from tests.exporters.broken_emitters import wrong_weight_scale

pytestmark = pytest.mark.onnx


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.head(y.flatten(1))


@pytest.fixture(scope="module")
def converted():
    torch.manual_seed(0)
    x = torch.randn(24, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return convert(calibrate(prepare(Net().eval(), x[:1]), [x], progress=False)), x


def _names(proto) -> set[str]:
    g = proto.graph
    return {v for n in g.node for v in (*n.input, *n.output) if v} | {t.name for t in g.initializer}


def _run(path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def test_values_get_short_names_and_the_file_computes_the_same(converted, tmp_path):
    import onnx
    from onnx import numpy_helper

    q, x = converted
    short = export_onnx(q, (x[:1],), tmp_path / "short.onnx")
    readable = export_onnx(q, (x[:1],), tmp_path / "readable.onnx", OnnxExportConfig(readable_names=True))
    ps, pr = onnx.load(str(tmp_path / "short.onnx")), onnx.load(str(tmp_path / "readable.onnx"))
    io = {"x", "output"}
    assert {v.name for v in (*ps.graph.input, *ps.graph.output)} == io
    assert max(len(v) for v in _names(ps) - io) <= 2
    assert not any(n.HasField("name") for n in ps.graph.node)
    assert all(n.name for n in pr.graph.node) and any("conv" in v for v in _names(pr))
    # The same graph: the same ops in the same order, the same constants; only the names differ.
    assert [n.op_type for n in ps.graph.node] == [n.op_type for n in pr.graph.node]
    assert [numpy_helper.to_array(t).tobytes() for t in ps.graph.initializer] == \
        [numpy_helper.to_array(t).tobytes() for t in pr.graph.initializer]
    xs = x[:16].numpy()
    for a, b in zip(_run(tmp_path / "short.onnx", xs), _run(tmp_path / "readable.onnx", xs), strict=True):
        np.testing.assert_array_equal(a, b)
    assert short.bytes < readable.bytes
    # Each fx node's int8 output is found in both files (under a short name in one).
    assert set(short.probe_values) == set(readable.probe_values) and len(short.probe_values) >= 3
    assert all(v == f"{k}/QuantizeLinear" for k, v in readable.probe_values.items())
    assert all(len(v) <= 2 for v in short.probe_values.values())


def test_a_wrong_op_in_a_short_named_file_is_reported_by_the_users_op_and_line(converted, tmp_path, monkeypatch):
    from compress.exporters.onnx import ops_quant

    q, x = converted
    good = export_onnx(q, (x[:1],), tmp_path / "good.onnx")
    ok = verify_onnx(tmp_path / "good.onnx", q, [x.numpy()], info=good, graph=q)
    assert ok.passed and ok.layerwise["ops"] == len(good.probe_values)
    with wrong_weight_scale(monkeypatch, "onnx", ops_quant, "weight_codes", "head"):
        bad = export_onnx(q, (x[:1],), tmp_path / "bad.onnx")
    report = verify_onnx(tmp_path / "bad.onnx", q, [x.numpy()], info=bad, graph=q)
    assert not report.passed
    message = failure_message("onnx", report.to_dict())
    first = report.layerwise["first_failure"]
    assert first["node"].startswith("head"), first
    assert "Linear" in message and "test_onnx_names.py" in message and "self.head(y.flatten(1))" in message
    assert bad.probe_values[first["node"]] not in message  # the file's short name says nothing to the user
    with pytest.raises(VerificationError, match="self.head"):
        verify_onnx(tmp_path / "bad.onnx", q, [x.numpy()], info=bad, graph=q, strict=True)


def test_short_names_skip_the_graphs_own_names(converted, tmp_path):
    import onnx

    q, x = converted
    # "0" and "1" are the first two short names; the graph's input and output keep them, nothing else takes them.
    export_onnx(q, (x[:1],), tmp_path / "m.onnx", OnnxExportConfig(input_names=("0",), output_names=("1",)))
    proto = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    producers = [o for n in proto.graph.node for o in n.output]
    assert producers.count("1") == 1 and "0" not in producers
    assert "0" not in {t.name for t in proto.graph.initializer}
    np.testing.assert_array_equal(_run(tmp_path / "m.onnx", x[:4].numpy())[0],
                                  _run_readable(q, x, tmp_path)[0])


def _run_readable(q, x, tmp_path):
    export_onnx(q, (x[:1],), tmp_path / "r.onnx", OnnxExportConfig(readable_names=True))
    return _run(tmp_path / "r.onnx", x[:4].numpy())


def test_a_body_graph_follows_the_outer_renames_and_keeps_its_own_names():
    import onnx
    from onnx import TensorProto, helper

    b = GraphBuilder(17)
    cond = b.node("Greater", ["x", b.scalar(0.0, np.float32, "zero")], "cond")
    scaled = b.node("Mul", ["x", b.scalar(2.0, np.float32, "two")], "scaled")
    # The branches read `scaled` from the outer scope; `0` is a name of their own, which no outer value may take.
    then = helper.make_graph([helper.make_node("Identity", [scaled], ["0"])], "then", [],
                             [helper.make_tensor_value_info("0", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", [scaled], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    b.node("If", [cond], "branch", then_branch=then, else_branch=other)
    b.nodes[-1].output[0] = "y"
    names = b.shorten_names({"x", "y"})
    assert "0" not in names.values() and len(names[scaled]) == 1
    inner = {a.name: a.g for a in b.nodes[-1].attribute}
    assert list(inner["then_branch"].node[0].input) == [names[scaled]]
    assert list(inner["then_branch"].node[0].output) == ["0"]
    assert list(inner["else_branch"].node[0].input) == [names[scaled]]
    graph = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for x, want in ((1.5, 3.0), (-1.0, 2.0)):  # x > 0: the then branch (2x), else -(2x)
        np.testing.assert_array_equal(sess.run(None, {"x": np.array([x], np.float32)})[0], [want])


def test_attributes_equal_to_the_schema_default_are_left_out():
    b = GraphBuilder(17)
    b.node("LayerNormalization", ["x", "w"], "ln", axis=-1, epsilon=1e-12)
    b.node("Softmax", ["x"], "sm", axis=1)
    ln, sm = b.nodes
    assert [a.name for a in ln.attribute] == ["epsilon"] and [a.name for a in sm.attribute] == ["axis"]


def test_readable_names_must_be_a_bool():
    with pytest.raises(ConfigError, match="readable_names"):
        OnnxExportConfig(readable_names="yes")
