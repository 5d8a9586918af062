"""The public API is explicit and `import compress` stays light."""

import ast
import subprocess
import sys
from pathlib import Path

import compress


def test_all_names_resolve_and_are_unique():
    assert len(compress.__all__) == len(set(compress.__all__))
    missing = [name for name in compress.__all__ if not hasattr(compress, name)]
    assert missing == []


def test_all_is_a_literal_list_matching_the_imports():
    # __all__ must be written out (greppable), and every public import must be listed in it
    tree = ast.parse(Path(compress.__file__).read_text())
    literal = next(
        node.value for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets)
    )
    assert isinstance(literal, ast.List)
    imported = {
        alias.asname or alias.name
        for node in tree.body if isinstance(node, ast.ImportFrom) and node.module.startswith("compress")
        for alias in node.names
    }
    lazy = set(compress._LAZY)
    assert imported | lazy == set(compress.__all__)


def test_import_does_not_load_heavy_optional_dependencies():
    code = (
        "import sys, compress; "
        "print(','.join(m for m in ('onnx', 'onnxruntime', 'ai_edge_litert', 'click', 'matplotlib', 'tflite') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_lazy_exporter_names_load_on_use():
    assert compress.export_onnx.__name__ == "export_onnx"


def test_unknown_attribute_is_an_attribute_error():
    try:
        compress.not_a_thing  # noqa: B018
    except AttributeError as exc:
        assert "not_a_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_subpackage_names_are_not_shadowed():
    # `from compress.distill import distill` at the top level would make `compress.distill` a function and
    # break `import compress.distill.train`: the function is reached as compress.distill.distill.
    import types

    assert isinstance(compress.distill, types.ModuleType)
    assert compress.distill.distill.__name__ == "distill"
    assert compress.Distiller is compress.distill.Distiller
