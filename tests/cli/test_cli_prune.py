"""`compress prune` end to end: files, report, parity in onnxruntime, plan replay, .pt2 → quantize, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.onnx


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_channels_end_to_end_replay_and_quantize(cli, tmp_path, calib_npz, state_dict_file, tiny_arch, digits_like):
    from compress.io import load_model

    result = cli("prune", state_dict_file, "--arch", tiny_arch, "--channels", "0.5", "--eval", calib_npz,
                 "--train", calib_npz, "--epochs", "1", "-o", "out")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {"model.pt2", "state_dict.pt", "plan.json", "model_fp32.onnx",
                                               "report.json"}
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    assert "parameters" in result.stdout and "wrote out" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["after"]["params"] < report["before"]["params"]
    assert report["after"]["macs"] < report["before"]["macs"]
    assert {"before", "after_prune", "after_finetune"} <= set(report["accuracy"])
    assert report["after"]["onnx_fp32"]["bytes"] < report["before"]["onnx_fp32"]["bytes"]
    assert [g["width_after"] for g in report["groups"]] == [2, 2, 4, 10]
    assert "model output" in report["groups"][-1]["skipped"]
    assert all(str(out.resolve()) in f for f in report["files"].values())

    # The saved program, its ONNX file and the state dict agree; the .pt2 loads without --arch.
    x, _ = digits_like
    pruned = load_model(out / "model.pt2")
    with torch.no_grad():
        want = pruned(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_ort(out / "model_fp32.onnx", x), want, rtol=1e-4, atol=1e-4)

    # --plan replays onto the original weights: the same widths.
    again = cli("prune", state_dict_file, "--arch", tiny_arch, "--plan", out / "plan.json", "--input-shape",
                "1,1,8,8", "-o", "replayed")
    assert again.exit_code == 0, again.output
    shapes = {k: v.shape for k, v in torch.load(tmp_path / "replayed" / "state_dict.pt").items()}
    assert shapes == {k: v.shape for k, v in torch.load(out / "state_dict.pt").items()}

    quantized = cli("quantize", out / "model.pt2", "--calib", calib_npz, "-o", "q")
    assert quantized.exit_code == 0, quantized.output
    assert (tmp_path / "q" / "model.onnx").is_file()


def test_nm_masks_are_baked_into_the_onnx_file(cli, tmp_path, calib_npz, state_dict_file, tiny_arch):
    import onnx
    from onnx import numpy_helper

    result = cli("prune", state_dict_file, "--arch", tiny_arch, "--nm", "2:4", "--train", calib_npz, "-o", "out")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["layer_sparsity"]["conv1.weight"] == 0.5
    speed = report["sparse_speed"]  # the honest part: zeros in dense tensors do not make the file faster
    assert speed["onnx_fp32_latency_ratio"] == pytest.approx(
        report["after"]["latency_ms"]["onnx"] / report["before"]["latency_ms"]["onnx"])
    assert "no sparse or N:M kernels" in speed["note"] and "no sparse" in result.stdout
    assert report["after"]["onnx_fp32"]["gzip_bytes"] < report["before"]["onnx_fp32"]["gzip_bytes"]
    model = onnx.load(str(tmp_path / "out" / "model_fp32.onnx"))
    convs = [numpy_helper.to_array(i) for i in model.graph.initializer if i.dims[:2] == [4, 4]]
    assert convs, "the 4→4 convolutions' weights should be initializers"
    for w in convs:
        groups = np.moveaxis(w, 1, -1).reshape(*w.shape[:1], *w.shape[2:], 1, 4)
        assert ((groups == 0).sum(-1) >= 2).all()
    # By size, not name (the exporter may shorten names): masks would double the stored weights.
    stored = sum(int(np.prod(i.dims)) for i in model.graph.initializer if len(i.dims) >= 2)
    state = torch.load(tmp_path / "out" / "state_dict.pt")
    assert stored <= sum(v.numel() for v in state.values() if v.dim() >= 2)


def test_errors_are_one_line_and_leave_nothing(cli, tmp_path, calib_npz, state_dict_file, tiny_arch):
    base = ("prune", state_dict_file, "--arch", tiny_arch, "--input-shape", "1,1,8,8")
    none = cli(*base, "-o", "out")
    assert none.exit_code == 2 and "choose one pruning mode" in none.stderr
    both = cli(*base, "--sparsity", "0.5", "--channels", "0.5", "-o", "out")
    assert both.exit_code == 2 and "--sparsity, --channels" in both.stderr
    assert len(both.stderr.strip().splitlines()) == 1
    bad = cli(*base, "--nm", "4:2", "-o", "out")
    assert bad.exit_code == 2 and "N:M" in bad.stderr
    wrong = cli(*base, "--sparsity", "0.5", "--round-to", "8", "-o", "out")
    assert wrong.exit_code == 2 and "--channels" in wrong.stderr
    assert not (tmp_path / "out").exists()

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "mode": "channels", "config": {"channels": 0.5}, "groups": [
        {"key": "nowhere", "width_before": 3, "kept": [0]}]}))
    mismatch = cli(*base, "--plan", plan, "-o", "out")
    assert mismatch.exit_code == 2 and "another --arch" in mismatch.stderr
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if ".partial" in p.name]

    ok = cli(*base, "--sparsity", "0.5", "-o", "out")
    assert ok.exit_code == 0, ok.output
    again = cli(*base, "--sparsity", "0.5", "-o", "out")
    assert again.exit_code == 2 and "--force" in again.stderr
    forced = cli(*base, "--sparsity", "0.7", "-o", "out", "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads((tmp_path / "out" / "report.json").read_text())["config"]["sparsity"] == 0.7


def test_criterion_choices_match_the_library():
    from compress.cli.prune import CRITERION_CHOICES
    from compress.passes.prune import Criterion

    assert CRITERION_CHOICES == tuple(c.value for c in Criterion)


@pytest.mark.slow
@pytest.mark.tflite
def test_quantize_writes_verified_int8_files_of_the_pruned_model(cli, tmp_path, calib_npz, state_dict_file,
                                                                  tiny_arch, digits_like):
    from compress.exporters.tflite.verify import load_interpreter, run_tflite
    from compress.io import load_model

    result = cli("prune", state_dict_file, "--arch", tiny_arch, "--channels", "0.5", "--eval", calib_npz,
                 "--quantize", "--calib", calib_npz, "--format", "onnx,tflite", "-o", "out")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert {"model_fp32.onnx", "model_fp32.tflite", "model_int8.onnx", "model_int8.tflite"} <= \
        {p.name for p in out.iterdir()}
    assert "onnxruntime int8" in result.stdout and "LiteRT int8" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert set(report["quantized"]["formats"]) == {"onnx", "tflite"}

    # Independent of the report: both int8 files, run in their runtimes, track the pruned fp32 model
    # (loaded from the .pt2) and the fp32 TFLite file matches it to float precision.
    x, _ = digits_like
    with torch.no_grad():
        want = load_model(out / "model.pt2")(torch.from_numpy(x)).numpy()
    lite = load_interpreter(out / "model_int8.tflite", 1)
    got = {"onnx": _ort(out / "model_int8.onnx", x),
           "tflite": np.concatenate([run_tflite(lite, (x[i:i + 1],))[0] for i in range(len(x))])}
    span = float(want.max() - want.min())
    for fmt, y in got.items():
        assert np.abs(y - want).max() < 0.1 * span, fmt  # int8 error is a few LSB of a 256-step grid
        assert np.mean(y.argmax(1) == want.argmax(1)) >= 0.8, fmt
    fp32_lite = load_interpreter(out / "model_fp32.tflite", 1)
    np.testing.assert_allclose(run_tflite(fp32_lite, (x[:1],))[0], want[:1], rtol=1e-4, atol=1e-5)

    # The int8 ONNX file holds the pruned widths (conv1: 2 of 4 output channels), not the original ones.
    import onnx
    from onnx import numpy_helper

    shapes = [numpy_helper.to_array(i).shape for i in onnx.load(str(out / "model_int8.onnx")).graph.initializer]
    # conv1 reads the 1-channel image: [out, 1, 3, 3], or [out, 9, 1, 1] where the exporter writes a narrow stem
    # as im2col + a 1 x 1 conv (ops_quant.narrow_conv_input).
    stem = [s for s in shapes if len(s) == 4 and s[1] in (1, 9)]
    assert stem and all(s[0] == 2 for s in stem), shapes
    # The saved program is accepted without --arch by export, inspect and prune itself.
    for args in (("export", out / "model.pt2", "-o", "e.tflite", "--input-shape", "1,1,8,8"),
                 ("inspect", out / "model.pt2", "--input-shape", "1,1,8,8"),
                 ("prune", out / "model.pt2", "--sparsity", "0.5", "--input-shape", "1,1,8,8", "-o", "twice")):
        again = cli(*args)
        assert again.exit_code == 0, (args[0], again.output)
    bad = cli("prune", state_dict_file, "--arch", tiny_arch, "--channels", "0.5", "--eval", calib_npz,
              "--quantize", "-o", "again")
    assert bad.exit_code == 2 and "--calib" in bad.stderr and not (tmp_path / "again").exists()


@pytest.mark.slow
def test_latency_target_reports_table_target_and_the_final_file(cli, tmp_path, calib_npz, state_dict_file, tiny_arch,
                                                                monkeypatch):
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    result = cli("prune", state_dict_file, "--arch", tiny_arch, "--latency-target", "0.8", "--runtime", "torch",
                 "--eval", calib_npz, "-o", "out")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    lat = report["latency"]
    assert lat["runtime"].startswith("torch-") and lat["target_ms"] == pytest.approx(0.8 * lat["base_ms"])
    assert lat["final_file"]["ratio_to_unpruned"] == pytest.approx(
        report["after"]["latency_ms"]["onnx"] / report["before"]["latency_ms"]["onnx"])
    prunable = [g["key"] for g in report["groups"] if not g["skipped"]]
    assert sorted(report["latency_table"]) == sorted(prunable) and "latency target" in result.stdout
    assert json.loads((tmp_path / "out" / "plan.json").read_text())["mode"] == "latency"
    assert list((tmp_path / "cache" / "prune-latency").glob("*.json"))
    wrong = cli("prune", state_dict_file, "--arch", tiny_arch, "--channels", "0.5", "--runtime", "torch",
                "--input-shape", "1,1,8,8", "-o", "x")
    assert wrong.exit_code == 2 and "--latency-target" in wrong.stderr


@pytest.mark.slow
def test_demo_pruned_rows_match_the_files_they_describe(tmp_path):
    from compress.demo import load_digits, prune_demo, train_demo_model
    from compress.io.data import Dataset

    train, test = load_digits()
    train, test = train.take(256), test.take(100)
    model = train_demo_model(train, epochs=2, progress=False)
    calib = Dataset(train.x[:64], train.y[:64], source="calib")
    section = prune_demo(model, train, test, calib, tmp_path / "pruned")
    assert section["params_after"] < 0.3 * section["params_before"]
    # the accuracy the row shows is what the written files score in onnxruntime
    for kind, name in (("fp32", "model_fp32.onnx"), ("int8", "model.onnx")):
        logits = np.concatenate([_ort(tmp_path / "pruned" / name, test.x[i:i + 1]) for i in range(len(test))])
        assert section[kind]["accuracy"] == pytest.approx(float(np.mean(logits.argmax(1) == test.y)))
        assert section[kind]["bytes"] == (tmp_path / "pruned" / name).stat().st_size
    assert section["fp32"]["accuracy"] > 0.3  # 10 classes: well above chance after this short training
