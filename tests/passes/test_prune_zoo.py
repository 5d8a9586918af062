"""Pruning on the trained zoo, checked in the runtimes the files are for.

Structured removal on each architecture family (residual adds, depthwise + inverted residual + SE,
concatenation, attention heads, LSTM units) exports to ONNX and TFLite and both files match the pruned torch
model in onnxruntime / LiteRT; unstructured masks leave nothing behind once finalized; 2:4 holds on every
weight it applies to (counted with numpy); a pruned ``.pt2`` reloads and quantizes. Exact-removal, replay and
accuracy-recovery cases live in test_prune_structured.py / test_prune_recurrent.py.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from compress.layers.prune import finalize, masked_tensors, prunable_tensors
from compress.passes.prune import NM, PruneConfig, count_params, prune

pytestmark = [pytest.mark.onnx, pytest.mark.tflite]

ZOO_PRUNED = ["resnet", "efficient_lite", "unet", "bert", "audio_lstm"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small nets on a shared 2-core machine: more threads only contend
    yield
    torch.set_num_threads(threads)


def _zoo(name: str):
    from tests.zoo.train import trained

    model, _, test = trained(name)
    return copy.deepcopy(model).eval(), test  # trained() memoizes: masking in place must not leak


def _close(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    err = float(np.abs(got - ref).max())
    assert err <= 1e-4 * max(float(np.abs(ref).max()), 1e-6), f"{what}: max |diff| {err:.3g} vs max |ref| " \
                                                                f"{float(np.abs(ref).max()):.3g}"


def _ort_run(path, xs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: xs[i:i + 1]})[0] for i in range(len(xs))])


def _litert_run(path, xs: np.ndarray) -> np.ndarray:
    from compress.exporters.tflite.verify import load_interpreter, run_tflite

    it = load_interpreter(path, 1)
    return np.concatenate([run_tflite(it, (xs[i:i + 1],))[0] for i in range(len(xs))])


@pytest.mark.parametrize("name", ZOO_PRUNED)
def test_structured_pruning_exports_to_onnx_and_tflite_and_matches_both_runtimes(name, tmp_path):
    from compress.exporters import export_onnx, export_tflite

    model, test = _zoo(name)
    xs = test.x[:4]
    x = torch.from_numpy(xs[:2])
    result = prune(model, x, PruneConfig(channels=0.5))
    pruned = result.model
    assert count_params(pruned) < count_params(model)
    assert any(g["kept"] is not None and g["width_after"] < g["width_before"] for g in result.plan["groups"])
    if name == "bert":  # head pruning: one of the two heads of each layer goes
        heads = [g for g in result.plan["groups"] if g.get("unit")]
        assert heads and all(g["width_after"] < g["width_before"] for g in heads)
    if name == "audio_lstm":
        assert pruned.get_submodule("lstm").hidden_size < model.get_submodule("lstm").hidden_size
    with torch.no_grad():
        ref = pruned(torch.from_numpy(xs)).numpy()
    export_onnx(pruned, (x[:1],), tmp_path / "m.onnx")
    export_tflite(pruned, (x[:1],), tmp_path / "m.tflite")
    _close(_ort_run(tmp_path / "m.onnx", xs), ref, f"{name} onnxruntime")
    _close(_litert_run(tmp_path / "m.tflite", xs), ref, f"{name} LiteRT")


def _has_parametrization(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m) for m in model.modules())


@pytest.mark.parametrize("name", ["efficient_lite", "audio_lstm"])
def test_finalized_masks_leave_only_zeros_in_the_model_and_the_files(name, tmp_path):
    import onnx

    from compress.exporters import OnnxExportConfig, export_onnx, export_tflite

    model, test = _zoo(name)
    keys = set(model.state_dict())
    x = torch.from_numpy(test.x[:2])
    prune(model, x, PruneConfig(sparsity=0.5))
    assert list(masked_tensors(model)) and _has_parametrization(model)  # the masks were really attached
    with torch.no_grad():
        masked_out = model(x).numpy()
    finalize(model)
    assert not list(masked_tensors(model)) and not _has_parametrization(model)
    assert set(model.state_dict()) == keys  # no mask buffers, no parametrizations.* entries
    for path, module, tensor in prunable_tensors(model):
        w = getattr(module, tensor).detach().numpy()
        assert type(getattr(module, tensor)) is nn.Parameter, f"{path}.{tensor}"
        assert (w == 0).sum() >= int(0.5 * w.size), f"{path}.{tensor}: the zeros are not in the weight"
    with torch.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), masked_out)  # baking in changed nothing
    # Readable names: the default short names would make the name check below vacuous.
    export_onnx(model, (x[:1],), tmp_path / "m.onnx", OnnxExportConfig(readable_names=True))
    inits = onnx.load(str(tmp_path / "m.onnx")).graph.initializer
    assert not [i.name for i in inits if "mask" in i.name.lower() or "parametriz" in i.name.lower()]
    zeros = sum(int((onnx.numpy_helper.to_array(i) == 0).sum()) for i in inits)
    assert zeros >= sum(int(0.5 * getattr(m, t).numel()) for _, m, t in prunable_tensors(model))
    export_tflite(model, (x[:1],), tmp_path / "m.tflite")
    with torch.no_grad():
        ref = model(torch.from_numpy(test.x[:2])).numpy()
    _close(_litert_run(tmp_path / "m.tflite", test.x[:2]), ref, f"{name} finalized LiteRT")


def _in_axis(module: nn.Module) -> int:
    # ConvTranspose weights are [in, out/groups, k...]; every other weight is [out, in(/groups), ...]
    return 0 if isinstance(module, nn.ConvTranspose1d | nn.ConvTranspose2d) else 1


@pytest.mark.parametrize("name", ZOO_PRUNED)
def test_two_four_holds_on_every_weight_it_can(name):
    model, test = _zoo(name)
    result = prune(model, torch.from_numpy(test.x[:2]), PruneConfig(nm=NM(2, 4)))
    rows = result.plan["tensors"]
    finalize(model)
    checked = 0
    for path, module, tensor in prunable_tensors(model):
        key = f"{path}.{tensor}"
        w = getattr(module, tensor).detach().numpy()
        axis = _in_axis(module)
        if rows[key].get("skipped"):  # only weights 2:4 cannot apply to may be left: say which and why
            assert isinstance(module, nn.Embedding) or w.shape[axis] % 4, f"{key} skipped: {rows[key]['skipped']}"
            continue
        groups = np.moveaxis(w, axis, -1)
        groups = groups.reshape(*groups.shape[:-1], groups.shape[-1] // 4, 4)
        nonzero = (groups != 0).sum(-1)
        assert nonzero.max() <= 2, f"{key}: a group of 4 input channels keeps {nonzero.max()}"
        assert (w == 0).mean() >= 0.5 - 1e-9, key
        checked += 1
    assert checked >= 0.5 * len(rows), f"{name}: 2:4 applied to only {checked} of {len(rows)} weights"


def test_pruned_resnet_saved_as_pt2_reloads_and_quantizes(tmp_path):
    from compress.io import Dataset, load_model
    from compress.passes.prune import save_pruned
    from compress.pipeline import QuantizeOptions, quantize_model
    from tests.zoo.train import trained

    model, calib, test = trained("resnet")
    x = torch.from_numpy(test.x[:2])
    result = prune(model, x, PruneConfig(channels=0.5))
    (tmp_path / "pruned").mkdir()
    paths = save_pruned(result.model, x, result.plan, tmp_path / "pruned")
    loaded = load_model(paths["pt2"])
    xs = test.x[:64]
    with torch.no_grad():
        want = result.model(torch.from_numpy(xs)).numpy()
        np.testing.assert_allclose(loaded(torch.from_numpy(xs)).numpy(), want, rtol=1e-5, atol=1e-5)
    report = quantize_model(loaded, Dataset(calib.x[:128], None, "zoo resnet calib"), tmp_path / "q",
                            QuantizeOptions(formats=("onnx", "tflite")),
                            eval_data=Dataset(xs, test.y[:64], "zoo resnet test"), progress=False)
    assert report["verified"]
    assert report["model"]["parameters"] == count_params(result.model) < count_params(model)
    # independent of the report: the int8 files, run in their runtimes, pick the pruned float model's class
    for got in (_ort_run(tmp_path / "q" / "model.onnx", xs), _litert_run(tmp_path / "q" / "model.tflite", xs)):
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
