"""Models with several inputs through the CLI: ``forward(input_ids, attention_mask)`` quantized to int8 ONNX and
TFLite (both verified), exported with ``--sample``, benchmarked with ``--data``; the files are judged here
in onnxruntime and LiteRT, fed by input name. Plus the one-line errors for data that does not fit forward."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

NET_FILE = Path(__file__).with_name("two_input_net.py")
ARCH = f"{NET_FILE}:TwoInputNet"  # what a user passes: the file that defines the model
_spec = importlib.util.spec_from_file_location("two_input_net", NET_FILE)
two_input_net = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(two_input_net)
make_split, train = two_input_net.make_split, two_input_net.train

pytestmark = [pytest.mark.onnx, pytest.mark.tflite]
NAMES = ["input_ids", "attention_mask"]


def _invoke(*args):
    from click.testing import CliRunner

    from compress.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The trained model's state dict and its data, the .npz arrays saved mask first (forward takes ids first)."""
    root = tmp_path_factory.mktemp("multi")
    model = train()
    torch.save(model.state_dict(), root / "model.pt")
    paths = {}
    for name, n, seed in (("calib", 256, 1), ("test", 400, 2), ("train", 512, 3)):
        split = make_split(n, seed)
        np.savez(root / f"{name}.npz", attention_mask=split["attention_mask"], input_ids=split["input_ids"],
                 y=split["y"])
        paths[name] = root / f"{name}.npz"
    return root, model, paths


@pytest.fixture(scope="module")
def quantized(files):
    root, _, paths = files
    out = root / "out"
    result = _invoke("quantize", root / "model.pt", "--arch", ARCH, "--calib", paths["calib"], "--eval",
                     paths["test"], "--format", "onnx,tflite", "-o", out)
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "report.json").read_text())


def _onnx_predict(path: Path, data: dict) -> tuple[list[str], np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return names, sess.run(None, {n: data[n] for n in names})[0]


def _tflite_predict(path: Path, data: dict) -> tuple[list[str], np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    ins, out = it.get_input_details(), it.get_output_details()[0]
    names = [d["name"] for d in ins]
    rows = []
    for k in range(len(data["y"])):  # written with batch 1
        for d in ins:
            it.set_tensor(d["index"], data[d["name"]][k:k + 1].astype(d["dtype"]))
        it.invoke()
        y = it.get_tensor(out["index"]).astype(np.float32)
        scale, zero = out["quantization"]
        rows.append((y - zero) * scale if out["dtype"] == np.int8 else y)
    return names, np.concatenate(rows)


def test_quantize_writes_and_verifies_both_formats_with_named_inputs(files, quantized):
    _, model, paths = files
    out, report = quantized
    test = dict(np.load(paths["test"]))
    assert report["model"]["inputs"] == {"input_ids": [1, 12], "attention_mask": [1, 12]}
    with torch.no_grad():
        torch_acc = float(np.mean(model(torch.from_numpy(test["input_ids"]),
                                        torch.from_numpy(test["attention_mask"])).argmax(1).numpy() == test["y"]))
    assert torch_acc >= 0.95
    for fmt, predict, suffix in (("onnx", _onnx_predict, ".onnx"), ("tflite", _tflite_predict, ".tflite")):
        section = report["formats"][fmt]
        assert section["parity"]["passed"], (fmt, section["parity"])
        for kind, stem in (("fp32", "model_fp32"), ("int8", "model")):
            names, logits = predict(out / f"{stem}{suffix}", test)
            assert names == NAMES, (fmt, kind, names)  # forward's parameter names, in forward's order
            acc = float(np.mean(logits.argmax(1) == test["y"]))
            assert section[kind]["accuracy"] == pytest.approx(acc), (fmt, kind)
        assert section["fp32"]["accuracy"] == pytest.approx(torch_acc)
        assert section["int8"]["accuracy"] >= torch_acc - 0.03, (fmt, section["int8"])
    # The mask matters: with every position marked real, the int8 file scores clearly worse.
    unmasked = dict(test, attention_mask=np.ones_like(test["attention_mask"]))
    _, logits = _onnx_predict(out / "model.onnx", unmasked)
    assert float(np.mean(logits.argmax(1) == test["y"])) < report["int8"]["accuracy"] - 0.1


def test_quantize_with_qat_trains_on_both_inputs(files, tmp_path):
    root, _, paths = files
    result = _invoke("quantize", root / "model.pt", "--arch", ARCH, "--calib", paths["calib"], "--eval",
                     paths["test"], "--qat", "--train", paths["train"], "--epochs", "1", "-o", tmp_path / "qat")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "qat" / "report.json").read_text())
    assert len(report["qat"]["loss_per_epoch"]) == 1 and np.isfinite(report["qat"]["loss_per_epoch"][0])
    assert report["int8"]["accuracy"] >= 0.9


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_export_with_a_multi_input_sample(files, tmp_path, suffix):
    root, model, paths = files
    out = tmp_path / f"fp32{suffix}"
    result = _invoke("export", root / "model.pt", "--arch", ARCH, "--sample", paths["test"], "-o", out)
    assert result.exit_code == 0, result.output
    test = dict(np.load(paths["test"]))
    sample = {k: v[:20] for k, v in test.items()}
    names, logits = (_onnx_predict if suffix == ".onnx" else _tflite_predict)(out, sample)
    assert names == NAMES
    with torch.no_grad():
        want = model(torch.from_numpy(sample["input_ids"]), torch.from_numpy(sample["attention_mask"])).numpy()
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)


def test_bench_feeds_every_named_array(files, quantized, tmp_path):
    _, _, paths = files
    out, report = quantized
    result = _invoke("bench", out / "model.onnx", out / "model.tflite", "--data", paths["test"], "--runs", "5",
                     "--rounds", "1", "--warmup", "1", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    rows = {Path(r["artifact"]).name: r for r in json.loads((tmp_path / "r.json").read_text())["results"]}
    assert rows["model.onnx"]["accuracy"] == pytest.approx(report["formats"]["onnx"]["int8"]["accuracy"])
    assert rows["model.tflite"]["accuracy"] == pytest.approx(report["formats"]["tflite"]["int8"]["accuracy"])
    assert rows["model.onnx"]["input_shapes"] == [[1, 12], [1, 12]]


def _bad(root: Path, name: str, **arrays) -> Path:
    path = root / name
    np.savez(path, **arrays)
    return path


def test_data_that_does_not_fit_forward_exits_4_with_one_line(files, quantized, tmp_path):
    root, _, paths = files
    out, _ = quantized
    test = dict(np.load(paths["test"]))
    ids, mask = test["input_ids"], test["attention_mask"]
    cases = [
        (_bad(tmp_path, "typo.npz", input_ids=ids, attn_mask=mask), ["unknown attn_mask", "missing attention_mask",
                                                                      "TwoInputNet.forward(input_ids, attention_mask)"]),
        (_bad(tmp_path, "one.npz", input_ids=ids), ["1 input (input_ids)", "needs 2"]),
        (_bad(tmp_path, "uneven.npz", input_ids=ids, attention_mask=mask[:-1]), ["different sample counts"]),
    ]
    for data, fragments in cases:
        result = _invoke("quantize", root / "model.pt", "--arch", ARCH, "--calib", data, "-o", tmp_path / data.stem)
        assert result.exit_code == 4, result.output
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        for fragment in fragments:
            assert fragment in lines[0], lines[0]
        assert not (tmp_path / data.stem).exists()
    result = _invoke("bench", out / "model.onnx", "--data", cases[0][0], "--runs", "2", "--rounds", "1")
    assert result.exit_code == 4, result.output
    assert "takes inputs input_ids, attention_mask but --data has input_ids, attn_mask" in result.stderr


def test_inspect_with_a_multi_input_sample(files):
    root, _, paths = files
    result = _invoke("inspect", root / "model.pt", "--arch", ARCH, "--sample", paths["test"])
    assert result.exit_code == 0, result.output
    assert "QuantEmbedding" in result.stdout and "[2, 2]" in result.stdout  # the head's output on 2 samples
