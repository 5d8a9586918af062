"""`compress export` (float ONNX / TFLite, verified) and `compress quantize --format`: files checked in their
runtimes against torch directly, and every bad input as one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.cli.quantize import FORMAT_CHOICES, parse_formats
from compress.errors import ConfigError, VerificationError

ARCH_ARGS = ("--arch", "compress.models:DemoCNN(width=4)")


def _one_line_error(result, exit_code: int, *fragments: str) -> str:
    assert result.exit_code == exit_code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _no_leftovers(root: Path) -> None:
    assert [p.name for p in root.iterdir() if ".partial-" in p.name] == []


@pytest.mark.tflite
def test_export_tflite_from_input_shape(cli, tmp_path, state_dict_file, tiny_cnn):
    from ai_edge_litert.interpreter import Interpreter

    result = cli("export", state_dict_file, *ARCH_ARGS, "--input-shape", "1,1,8,8", "-o", "m.tflite")
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert line.startswith("wrote m.tflite (tflite fp32") and "LiteRT vs torch" in line and "\n" not in line
    # Run the file in LiteRT here and compare with the float torch model.
    it = Interpreter(model_path=str(tmp_path / "m.tflite"))
    it.allocate_tensors()
    x = np.random.default_rng(5).random((1, 1, 8, 8), dtype=np.float32)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    got = it.get_tensor(it.get_output_details()[0]["index"])
    with torch.no_grad():
        want = tiny_cnn(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert open(tmp_path / "m.tflite", "rb").read()[4:8] == b"TFL3"
    _no_leftovers(tmp_path)


@pytest.mark.onnx
def test_export_onnx_from_sample_with_opset(cli, tmp_path, state_dict_file, tiny_cnn, calib_npz, digits_like):
    import onnx
    import onnxruntime as ort

    result = cli("export", state_dict_file, *ARCH_ARGS, "--sample", calib_npz, "--format", "onnx", "--opset", "13",
                 "-o", "out/m.onnx")
    assert result.exit_code == 0, result.output
    assert "opset 13" in result.stdout
    path = tmp_path / "out" / "m.onnx"
    assert {o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")} == {13}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, _ = digits_like
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, tiny_cnn(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("args, code, fragments", [
    (("--format", "coreml", "--input-shape", "1,1,8,8", "-o", "m.bin"), 2, ("'coreml'", "onnx", "tflite")),
    (("-o", "m.tflite"), ConfigError.exit_code, ("--input-shape", "--sample")),
    (("--input-shape", "1,1,8,8", "--sample", "x.npz", "-o", "m.tflite"), ConfigError.exit_code, ("one of them",)),
    (("--input-shape", "1,1,8,8", "-o", "m.bin"), ConfigError.exit_code, ("--format onnx",)),
    (("--input-shape", "1,1,8,8", "--format", "tflite", "-o", "m.onnx"), ConfigError.exit_code, ("m.tflite",)),
    (("--input-shape", "1,1,8,8", "--opset", "13", "-o", "m.tflite"), ConfigError.exit_code, ("ONNX only",)),
    (("--input-shape", "1,three,8", "-o", "m.tflite"), ConfigError.exit_code, ("1,3,224,224",)),
    # an --input-shape the model rejects is an option to change: exit 2, naming the shape it takes
    (("--input-shape", "1,3,8,8", "-o", "m.tflite"), ConfigError.exit_code, ("1 channels", "--input-shape 1,1,8,8")),
])
def test_export_bad_input(cli, tmp_path, state_dict_file, args, code, fragments):
    result = cli("export", state_dict_file, *ARCH_ARGS, *args)
    _one_line_error(result, code, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]


def test_export_refuses_to_overwrite_and_to_write_over_its_input(cli, tmp_path, state_dict_file):
    (tmp_path / "m.tflite").write_bytes(b"old")
    result = cli("export", state_dict_file, *ARCH_ARGS, "--input-shape", "1,1,8,8", "-o", "m.tflite")
    _one_line_error(result, ConfigError.exit_code, "already exists", "--force")
    assert (tmp_path / "m.tflite").read_bytes() == b"old"
    before = state_dict_file.read_bytes()
    result = cli("export", state_dict_file, *ARCH_ARGS, "--input-shape", "1,1,8,8", "--format", "onnx", "-o",
                 state_dict_file, "--force")
    _one_line_error(result, ConfigError.exit_code, "is the input file")
    assert state_dict_file.read_bytes() == before
    (tmp_path / "d.tflite").mkdir()
    _one_line_error(cli("export", state_dict_file, *ARCH_ARGS, "--input-shape", "1,1,8,8", "-o", "d.tflite",
                        "--force"), ConfigError.exit_code, "is a directory")


@pytest.mark.tflite
def test_failed_verification_writes_nothing_and_keeps_the_old_file(cli, monkeypatch, tmp_path, state_dict_file):
    import importlib

    vt = importlib.import_module("compress.exporters.tflite.verify")  # the packages re-export a same-named function

    def failing(*args, **kwargs):
        raise VerificationError("LiteRT disagrees (max rel err 3e-1); check the exported ops")

    monkeypatch.setattr(vt, "verify_tflite", failing)
    result = cli("export", state_dict_file, *ARCH_ARGS, "--input-shape", "1,1,8,8", "-o", "new/m.tflite")
    _one_line_error(result, VerificationError.exit_code, "LiteRT disagrees")
    assert not (tmp_path / "new").exists()
    (tmp_path / "m.tflite").write_bytes(b"old")
    result = cli("export", state_dict_file, *ARCH_ARGS, "--input-shape", "1,1,8,8", "-o", "m.tflite", "--force")
    _one_line_error(result, VerificationError.exit_code)
    assert (tmp_path / "m.tflite").read_bytes() == b"old"
    _no_leftovers(tmp_path)


def test_quantize_format_option_reaches_the_library(cli, monkeypatch, calib_npz, state_dict_file):
    import compress.pipeline
    from compress.pipeline import Format, QuantizeOptions

    calls = []

    def fake(model, calib, out_dir, options=None, **kwargs):
        calls.append(options)
        (Path(out_dir) / "report.json").write_text(json.dumps({"artifacts": []}))
        return {"artifacts": []}

    monkeypatch.setattr(compress.pipeline, "quantize_model", fake)
    monkeypatch.setattr(compress.pipeline, "render_summary", lambda report: "SUMMARY")
    base = ["quantize", state_dict_file, *ARCH_ARGS, "--calib", calib_npz]
    assert cli(*base, "-o", "a", "--format", "onnx,tflite").exit_code == 0
    assert cli(*base, "-o", "b", "--format", "TFLite").exit_code == 0
    assert cli(*base, "-o", "c").exit_code == 0
    assert [o.formats for o in calls] == [(Format.ONNX, Format.TFLITE), (Format.TFLITE,), (Format.ONNX,)]
    assert calls[2] == QuantizeOptions()
    result = cli(*base, "-o", "d", "--format", "onnx,coreml")
    _one_line_error(result, ConfigError.exit_code, "'coreml'", "onnx, tflite")
    assert FORMAT_CHOICES == tuple(f.value for f in Format)
    with pytest.raises(ConfigError, match="choose from"):
        parse_formats("")


@pytest.mark.tflite
@pytest.mark.onnx
def test_quantize_writes_verified_tflite_files(cli, tmp_path, calib_npz, state_dict_file, digits_like):
    from ai_edge_litert.interpreter import Interpreter

    result = cli("quantize", state_dict_file, *ARCH_ARGS, "--calib", calib_npz, "--eval", calib_npz,
                 "--format", "onnx,tflite", "-o", "out")
    assert result.exit_code == 0, result.output
    assert "LiteRT int8" in result.stdout and "LiteRT fp32" in result.stdout
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    tfl = report["formats"]["tflite"]
    assert tfl["parity"]["within_1lsb_fraction"] >= 0.99
    # The reported int8 accuracy, recomputed by running model.tflite in LiteRT here.
    it = Interpreter(model_path=str(out / "model.tflite"))
    it.allocate_tensors()
    x, y = digits_like
    preds = []
    for i in range(len(x)):
        it.set_tensor(it.get_input_details()[0]["index"], x[i:i + 1])
        it.invoke()
        preds.append(int(it.get_tensor(it.get_output_details()[0]["index"]).argmax()))
    assert tfl["int8"]["accuracy"] == pytest.approx(np.mean(np.array(preds) == y))
    assert {a["path"] for a in report["artifacts"]} >= {"model.tflite", "model_fp32.tflite"}
