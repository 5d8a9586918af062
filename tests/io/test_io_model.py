"""compress.io.model: every model format, safe-by-default unpickling, and each failure's message."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from compress.errors import DataError, ModelLoadError, UnsafePickleError
from compress.io import Dataset, ExportedModule, build_arch, check_fits, load_model
from compress.models import DemoCNN


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_state_dict_with_arch_loads_the_same_weights(state_dict_file, tiny_cnn, tiny_arch):
    model = load_model(state_dict_file, arch=tiny_arch)
    assert isinstance(model, DemoCNN) and not model.training
    _same_outputs(model, tiny_cnn)


def test_checkpoint_dicts_and_wrapper_prefixes(tmp_path, tiny_cnn, tiny_arch):
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"epoch": 7, "state_dict": tiny_cnn.state_dict(), "best": 0.9}, ckpt)
    _same_outputs(load_model(ckpt, arch=tiny_arch), tiny_cnn)
    ddp = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in tiny_cnn.state_dict().items()}, ddp)
    _same_outputs(load_model(ddp, arch=tiny_arch), tiny_cnn)


def test_state_dict_without_arch_says_to_pass_arch(state_dict_file):
    with pytest.raises(ModelLoadError, match="--arch MODULE:CALLABLE"):
        load_model(state_dict_file)


def test_mismatched_arch_lists_missing_unexpected_and_shape_mismatches(state_dict_file):
    with pytest.raises(ModelLoadError) as info:
        load_model(state_dict_file, arch="compress.models:ResNet18")
    message = str(info.value)
    assert "missing keys layer1.0.conv1.weight" in message
    assert "unexpected keys stem.0.weight" in message
    assert "more)" in message and "\n" not in message
    with pytest.raises(ModelLoadError, match=r"shape mismatch .* stem\.0\.weight \[4, 1, 3, 3\] vs \[8, 1, 3, 3\]"):
        load_model(state_dict_file, arch="compress.models:DemoCNN(width=8)")


def test_arch_from_a_python_file_with_kwargs(tmp_path, tiny_cnn):
    nets = tmp_path / "nets.py"
    nets.write_text(textwrap.dedent(
        """
        from compress.models import DemoCNN

        def build(width=16):
            return DemoCNN(width=width)

        def not_a_model():
            return 3

        def explodes(**kw):
            raise ValueError("bad config")
        """
    ))
    sd = tmp_path / "w.pt"
    torch.save(tiny_cnn.state_dict(), sd)
    _same_outputs(load_model(sd, arch=f"{nets}:build(width=4)"), tiny_cnn)
    with pytest.raises(ModelLoadError, match="not a torch.nn.Module"):
        load_model(sd, arch=f"{nets}:not_a_model")
    with pytest.raises(ModelLoadError, match="ValueError: bad config"):
        load_model(sd, arch=f"{nets}:explodes")
    with pytest.raises(ModelLoadError, match="no attribute 'nope'"):
        load_model(sd, arch=f"{nets}:nope")
    with pytest.raises(ModelLoadError, match="cannot import module"):
        load_model(sd, arch="compress.no_such_module:Net")
    with pytest.raises(ModelLoadError, match="MODULE:CALLABLE"):
        build_arch("just_a_name")


def test_safetensors_with_arch(tmp_path, tiny_cnn, tiny_arch):
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file(tiny_cnn.state_dict(), str(path))
    _same_outputs(load_model(path, arch=tiny_arch), tiny_cnn)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ModelLoadError, match="not a readable safetensors"):
        load_model(path, arch=tiny_arch)


def test_torch_export_pt2(tmp_path, tiny_cnn):
    path = tmp_path / "m.pt2"
    batch = torch.export.Dim("batch")
    program = torch.export.export(tiny_cnn, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    model = load_model(path)
    assert isinstance(model, torch.fx.GraphModule) and not model.training
    assert model.cpu().train().eval() is model  # callers may switch modes freely
    _same_outputs(model, tiny_cnn)
    torch.fx.symbolic_trace(model)  # the passes trace models with fx: a loaded .pt2 must be traceable
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelLoadError, match="not a readable torch.export program"):
        load_model(bad)


def test_static_batch_pt2(tmp_path, tiny_cnn):
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(tiny_cnn, (torch.zeros(1, 1, 8, 8),)), str(path))
    model = load_model(path)
    check_fits(model, Dataset(np.zeros((4, 1, 8, 8))))  # the guard is dropped; convolutions take any batch
    wrapped = ExportedModule(torch.export.load(str(path)).module())
    with pytest.raises(DataError, match="dynamic batch dimension"):
        check_fits(wrapped, Dataset(np.zeros((4, 1, 8, 8))))


def test_pickled_module_refused_by_default_and_loaded_when_trusted(pickled_model_file, tiny_cnn):
    with pytest.raises(UnsafePickleError) as info:
        load_model(pickled_model_file)
    message = str(info.value)
    assert "compress.models.DemoCNN" in message and "--trust-pickle" in message and "--arch" in message
    model = load_model(pickled_model_file, trust_pickle=True)
    assert isinstance(model, DemoCNN) and not model.training
    _same_outputs(model, tiny_cnn)


class _Payload:
    """Unpickling this calls exec(): the attack --trust-pickle guards against."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_refused_pickle_runs_no_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": _Payload(marker)}, path)
    with pytest.raises(UnsafePickleError, match="exec"):
        load_model(path, arch="compress.models:DemoCNN")
    assert not marker.exists()


def test_pickled_class_that_cannot_be_imported(tmp_path):
    path = tmp_path / "ghost.pt"
    mod = tmp_path / "ghost_mod_for_pickle.py"
    mod.write_text("import torch\nclass Ghost(torch.nn.Linear):\n    pass\n")
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("ghost_mod_for_pickle", mod)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ghost_mod_for_pickle"] = module
    spec.loader.exec_module(module)
    try:
        torch.save(module.Ghost(2, 2), path)
    finally:
        del sys.modules["ghost_mod_for_pickle"]
    with pytest.raises(ModelLoadError, match="cannot be imported here"):
        load_model(path, trust_pickle=True)


@pytest.mark.parametrize(
    ("content", "name", "fragment"),
    [
        (b"garbage" * 20, "bad.pt", "not a readable PyTorch file"),
        (None, "trunc.pt", "not a readable PyTorch file"),
        (b"abc", "model.h5", "unknown model format '.h5'"),
    ],
)
def test_corrupt_or_unknown_files(tmp_path, state_dict_file, content, name, fragment):
    path = tmp_path / name
    path.write_bytes(content if content is not None else state_dict_file.read_bytes()[:300])
    with pytest.raises(ModelLoadError, match=fragment):
        load_model(path, arch="compress.models:DemoCNN")


def test_missing_file_directory_and_non_model_contents(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "absent.pt")
    with pytest.raises(ModelLoadError, match="is a directory"):
        load_model(tmp_path)
    lst = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], lst)
    with pytest.raises(ModelLoadError, match="holds a list"):
        load_model(lst, arch="compress.models:DemoCNN")
    meta = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, meta)
    with pytest.raises(ModelLoadError, match="holds no state dict"):
        load_model(meta, arch="compress.models:DemoCNN")
