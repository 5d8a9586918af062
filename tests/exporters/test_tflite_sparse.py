"""Pruned fp32 weights stored sparse in TFLite (CSR SparsityParameters + DENSIFY): read back from the file with
the tflite schema package, run in LiteRT against the same model written dense, sizes against numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_litert")
tflite = pytest.importorskip("tflite")

from compress.exporters.tflite import TFLiteExportConfig, export_tflite  # noqa: E402
from compress.exporters.tflite.sparse import OVERHEAD_BYTES  # noqa: E402
from compress.exporters.tflite.verify import load_interpreter, run_tflite, xnnpack_delegation  # noqa: E402


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, groups=32)
        self.fc = nn.Linear(32 * 6 * 6, 300)  # 300 > 255 columns: uint16 indices
        self.small = nn.Linear(300, 4)  # 80 % zeros too, but 1,200 floats: stored sparse as well

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.conv(x))))
        return self.small(torch.relu(self.fc(x.flatten(1))))


def _pruned(sparsity: float = 0.8, seed: int = 0) -> _Net:
    """Unstructured magnitude pruning of every weight (the smallest ``sparsity`` of each tensor set to 0)."""
    torch.manual_seed(seed)
    net = _Net().eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1:
                k = int(sparsity * p.numel())
                p[p.abs() <= p.abs().flatten().kthvalue(k).values] = 0
    return net


def _tflite_layout(name: str, w: np.ndarray) -> np.ndarray:
    """A torch weight in the layout the TFLite file stores it: OHWI convolutions, 1HWC depthwise, [O, I] dense
    (after the NHWC flatten, ``fc``'s columns in (h, w, c) order)."""
    if name == "fc.weight":
        return w.reshape(300, 32, 6, 6).transpose(0, 2, 3, 1).reshape(300, -1)
    if name == "dw.weight":
        return w.transpose(1, 2, 3, 0)
    return w.transpose(0, 2, 3, 1) if w.ndim == 4 else w


def _index_width(top: int) -> int:
    return 1 if top < 256 else 2 if top < 65536 else 4


def _expected_saving(w: np.ndarray) -> int:
    """Dense bytes minus CSR bytes of one weight, from its nonzeros (last dimension sparse, the rest dense)."""
    rows = w.reshape(-1, w.shape[-1])
    nnz = int(np.count_nonzero(rows))
    csr = nnz * 4 + (rows.shape[0] + 1) * _index_width(nnz) + nnz * _index_width(w.shape[-1] - 1)
    return w.size * 4 - csr


def _index_vector(dim, which: str) -> np.ndarray:
    kind = getattr(dim, f"Array{which}Type")()
    table = {1: tflite.Int32Vector, 2: tflite.Uint16Vector, 3: tflite.Uint8Vector}[kind]()
    union = getattr(dim, f"Array{which}")()
    table.Init(union.Bytes, union.Pos)
    return table.ValuesAsNumpy()


def _densify(model, tensor) -> np.ndarray:
    """Expand a sparse tensor of ``model`` in numpy from its SparsityParameters (DENSE dims, then one CSR dim)."""
    sp = tensor.Sparsity()
    assert sp.TraversalOrderAsNumpy().tolist() == list(range(tensor.ShapeLength()))
    assert sp.BlockMapLength() == 0
    shape = tensor.ShapeAsNumpy().tolist()
    dims = [sp.DimMetadata(i) for i in range(sp.DimMetadataLength())]
    assert [d.Format() for d in dims] == [0] * (len(shape) - 1) + [1]  # DENSE ... DENSE, SPARSE_CSR
    assert [d.DenseSize() for d in dims[:-1]] == shape[:-1]
    segments, indices = _index_vector(dims[-1], "Segments"), _index_vector(dims[-1], "Indices")
    values = model.Buffers(tensor.Buffer()).DataAsNumpy().view(np.float32)
    out = np.zeros((int(np.prod(shape[:-1])), shape[-1]), np.float32)
    for r in range(out.shape[0]):
        lo, hi = int(segments[r]), int(segments[r + 1])
        out[r, indices[lo:hi]] = values[lo:hi]
    return out.reshape(shape)


def _export_pair(net, x, tmp_path):
    dense = export_tflite(net, x, tmp_path / "dense.tflite", TFLiteExportConfig(sparse_weights=False))
    sparse = export_tflite(net, x, tmp_path / "sparse.tflite")
    return dense, sparse


def test_pruned_weights_are_sparse_tensors_that_decode_to_the_weights(tmp_path):
    net, x = _pruned(), torch.randn(1, 8, 8, 8)
    dense, sparse = _export_pair(net, x, tmp_path)
    model = tflite.Model.GetRootAsModel((tmp_path / "sparse.tflite").read_bytes(), 0)
    sg = model.Subgraphs(0)
    tensors = [sg.Tensors(i) for i in range(sg.TensorsLength())]
    decoded = [_densify(model, t) for t in tensors if t.Sparsity() is not None]
    weights = {n: _tflite_layout(n, p.detach().numpy()) for n, p in net.named_parameters() if p.ndim > 1}
    assert len(decoded) == len(weights) == len(sparse.sparse_weights) == 4
    for name, w in weights.items():  # each weight is exactly one sparse tensor, zeros restored
        assert sum(d.shape == w.shape and np.array_equal(d, w) for d in decoded) == 1, name
    # Each sparse tensor feeds a DENSIFY whose output its convolution / dense layer reads.
    codes = [model.OperatorCodes(i).BuiltinCode() for i in range(model.OperatorCodesLength())]
    ops = [sg.Operators(i) for i in range(sg.OperatorsLength())]
    densify = [op for op in ops if codes[op.OpcodeIndex()] == tflite.BuiltinOperator.DENSIFY]
    assert len(densify) == 4 and sparse.op_counts["DENSIFY"] == 4 and "DENSIFY" not in dense.op_counts
    assert all(tensors[op.Inputs(0)].Sparsity() is not None for op in densify)
    readers = {op.Inputs(1) for op in ops if codes[op.OpcodeIndex()] != tflite.BuiltinOperator.DENSIFY}
    assert {op.Outputs(0) for op in densify} <= readers


def test_litert_output_equals_the_dense_file_exactly(tmp_path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    net, x = _pruned(), torch.randn(4, 8, 8, 8)
    _export_pair(net, x[:1], tmp_path)
    for name in ("dense", "sparse"):  # XNNPACK takes DENSIFY too: one partition, no builtin fallback
        d = xnnpack_delegation(tmp_path / f"{name}.tflite")
        assert d["partitions"] == 1 and d["fallback"] == [], (name, d)
    xnn = {n: load_interpreter(tmp_path / f"{n}.tflite", 1) for n in ("dense", "sparse")}
    builtin = {}
    for n in ("dense", "sparse"):  # LiteRT's own DENSIFY and float kernels, no delegate
        builtin[n] = Interpreter(model_path=str(tmp_path / f"{n}.tflite"),
                                 experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        builtin[n].allocate_tensors()
    with torch.no_grad():
        want = net(x).numpy()
    for runners in (xnn, builtin):
        for i in range(len(x)):
            got = {n: run_tflite(it, (x[i:i + 1].numpy(),))[0] for n, it in runners.items()}
            assert np.array_equal(got["dense"], got["sparse"])  # densify is exact: the same bits
            np.testing.assert_allclose(got["sparse"], want[i:i + 1], rtol=1e-4, atol=1e-5)


def test_sparse_file_is_smaller_by_the_csr_saving(tmp_path):
    net, x = _pruned(), torch.randn(1, 8, 8, 8)
    dense, sparse = _export_pair(net, x, tmp_path)
    weights = [_tflite_layout(n, p.detach().numpy()) for n, p in net.named_parameters() if p.ndim > 1]
    expected = sum(_expected_saving(w) for w in weights)
    saved = dense.size_bytes - sparse.size_bytes
    assert expected - len(weights) * OVERHEAD_BYTES <= saved <= expected + 16 * len(weights), (saved, expected)
    assert sum(w["dense_bytes"] - w["sparse_bytes"] for w in sparse.sparse_weights) == expected
    assert saved > 0.6 * dense.size_bytes  # 80 % zeros: the file shrinks to well under half


def test_weights_with_few_zeros_and_int8_weights_stay_dense(tmp_path):
    from compress.passes import calibrate, convert, prepare

    x = torch.randn(1, 8, 8, 8)
    # 10 % zeros: CSR's 5 bytes per fp32 nonzero exceed the 4 dense ones
    info = export_tflite(_pruned(0.1), x, tmp_path / "few.tflite")
    assert info.sparse_weights == [] and "DENSIFY" not in info.op_counts
    # int8: XNNPACK fails to prepare a layer reading a DENSIFY'd int8 weight, so int8 weights are written dense
    net = _pruned()
    batches = [torch.randn(4, 8, 8, 8) for _ in range(2)]
    q = convert(calibrate(prepare(net, batches[0]), batches, progress=False))
    info = export_tflite(q, x, tmp_path / "int8.tflite")
    assert info.sparse_weights == [] and "DENSIFY" not in info.op_counts
    assert xnnpack_delegation(tmp_path / "int8.tflite")["fallback"] == []


def test_a_weight_another_op_reads_too_stays_dense(tmp_path):
    """A tied embedding table (GATHER reads it, FULLY_CONNECTED too): sparse for one reader would store it twice."""

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(300, 64)
            self.head = nn.Linear(64, 300, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(self.emb(ids))

    torch.manual_seed(0)
    net = Tied().eval()
    with torch.no_grad():
        net.emb.weight[torch.rand(300, 64) < 0.8] = 0
    ids = torch.tensor([[1, 5, 7]])
    info = export_tflite(net, (ids,), tmp_path / "tied.tflite")
    assert info.sparse_weights == [] and "DENSIFY" not in info.op_counts
    untied = nn.Linear(64, 300, bias=False).eval()  # the same weight read by the dense layer alone: sparse
    with torch.no_grad():
        untied.weight.copy_(net.emb.weight)
    assert len(export_tflite(untied, torch.randn(1, 64), tmp_path / "fc.tflite").sparse_weights) == 1


@pytest.mark.onnx
def test_cli_prune_reports_dense_and_sparse_tflite_sizes(cli, tmp_path, calib_npz):
    arch = "compress.models:DemoCNN(width=32)"
    torch.manual_seed(0)
    from compress.models import DemoCNN

    torch.save(DemoCNN(width=32).state_dict(), tmp_path / "sd.pt")
    result = cli("prune", tmp_path / "sd.pt", "--arch", arch, "--sparsity", "0.8", "--format", "tflite",
                 "--eval", calib_npz, "-o", "out")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    sec = report["formats"]["tflite"]["sparse_weights"]
    path = tmp_path / "out" / "model_fp32.tflite"
    assert sec["sparse_file"]["bytes"] == path.stat().st_size
    saving = sec["weights_dense_bytes"] - sec["weights_sparse_bytes"]
    file_saving = sec["dense_file"]["bytes"] - sec["sparse_file"]["bytes"]
    assert saving - sec["tensors"] * OVERHEAD_BYTES <= file_saving <= saving + 16 * sec["tensors"]
    assert sec["sparse_file"]["bytes"] < 0.5 * sec["dense_file"]["bytes"]
    assert sec["sparse_file"]["gzip_bytes"] < sec["dense_file"]["gzip_bytes"]
    assert "TFLite fp32 dense → sparse" in result.stdout and "TFLite fp32 gzip" in result.stdout
    assert f"TFLite file stores {sec['tensors']} weights sparse" in report["sparse_speed"]["note"]
    # The file in the output directory holds sparse tensors; what they decode to has the pruned weights' zeros
    # (BatchNorm is folded into the file's weights, so the values are scaled per output channel).
    from compress.io import load_model

    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    sg = model.Subgraphs(0)
    decoded = [_densify(model, sg.Tensors(i)) for i in range(sg.TensorsLength()) if sg.Tensors(i).Sparsity()]
    assert len(decoded) == sec["tensors"] >= 3
    pruned = {n: p.detach().numpy() for n, p in load_model(tmp_path / "out" / "model.pt2").named_parameters()}
    for d in decoded:
        assert any(w.shape == d.shape[:1] + d.shape[-1:] + d.shape[1:-1] and
                   np.array_equal(_tflite_layout(n, w) != 0, d != 0) for n, w in pruned.items() if w.ndim == 4) \
            or any(w.shape == d.shape and np.array_equal(w != 0, d != 0) for w in pruned.values())
