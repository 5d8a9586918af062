"""`compress quantize --keep-unverified`: a file that fails op-by-op verification is still written, with a
report.json that marks the failure, and the exit code stays 6; without the flag nothing is written and the
message names no file."""

from __future__ import annotations

import json

import pytest
import torch

from compress.errors import VerificationError
from compress.passes import prepare
from compress.quant.config import QuantConfig
from tests.exporters.broken_emitters import wrong_weight_scale


@pytest.mark.slow
@pytest.mark.onnx
def test_cli_keep_unverified_writes_a_report_that_marks_the_failure(cli, tmp_path, calib_npz, state_dict_file,
                                                                    tiny_arch, tiny_cnn, monkeypatch):
    from compress.exporters.onnx import ops_quant

    net = prepare(tiny_cnn.eval(), (torch.rand(1, 1, 8, 8),), QuantConfig())
    fc = next(n.name for n in net.graph.nodes if n.op == "call_module" and "Linear" in type(net.get_submodule(
        n.target)).__name__)
    with wrong_weight_scale(monkeypatch, "onnx", ops_quant, "weight_codes", fc, factor=3.0):
        refused = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "-o", "refused")
        kept = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "-o", "kept",
                   "--keep-unverified")
    assert refused.exit_code == VerificationError.exit_code and not (tmp_path / "refused").exists()
    assert "report.json anyway" in refused.output and "Traceback" not in refused.output
    assert kept.exit_code == VerificationError.exit_code, kept.output
    report = json.loads((tmp_path / "kept" / "report.json").read_text())
    assert report["verified"] is False and (tmp_path / "kept" / "model.onnx").is_file()
    failure = report["formats"]["onnx"]["parity"]["layerwise"]["first_failure"]
    error = kept.output.strip().splitlines()[-1]
    assert error.startswith("error:") and f"op {failure['node']!r}" in error, error
    assert error.endswith("kept/report.json marks the failure"), error
