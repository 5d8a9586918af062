"""Every command against a table of bad inputs: missing, empty, truncated and random files under every accepted
suffix, wrong shapes, NaN / inf, read-only and existing outputs, outputs equal to an input.

Each case must end with a documented exit code ≠ 0, one ``error:`` line naming the cause (a fragment per case)
and saying what to do, no traceback, nothing on stdout, and the workspace byte-identical afterwards (no file
left behind, no input touched). All cases share one workspace, so a leftover of one case fails that case.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TINY = "compress.models:DemoCNN(width=4)"
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
# What a message says to do: it must contain one of these (the fix), besides the cause.
FIX = re.compile(r"\b(pass|choose|use|remove|install|check|add|give|name|re-export|rerun|create|free|lower|try|"
                 r"save|drop|export|move|replace|provide|keep|see|write|reshape|fix|make|clean)\b|e\.g\. ", re.I)


def documented_exit_codes() -> set[int]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Exit codes"):]
    section = section[:section.index("\n## ", 3)]
    return {int(m[1]) for m in re.finditer(r"^\| `?(\d+)`? \|", section, re.M)} - {0}


def _valid_files(root: Path) -> None:
    from compress.models import DemoCNN

    torch.manual_seed(0)
    net = DemoCNN(width=4).eval()
    torch.save(net.state_dict(), root / "good.pt")
    rng = np.random.default_rng(0)
    x = rng.random((16, 1, 8, 8), dtype=np.float32)
    np.savez(root / "calib.npz", x=x, y=rng.integers(0, 10, 16))
    ep = torch.export.export(net, (torch.from_numpy(x[:2]),),
                             dynamic_shapes=({0: torch.export.Dim("batch", max=1024)},))
    torch.export.save(ep, root / "good.pt2")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, root / "good.safetensors")
    from compress.exporters import export_onnx

    export_onnx(net, (torch.from_numpy(x[:1]),), root / "good.onnx")


def _bad_files(root: Path) -> dict[str, str]:
    """name -> what is wrong with it, for every accepted suffix (the missing ones are named, not created)."""
    rng = np.random.default_rng(1)
    made = {}
    for suffix in (*STATE_DICT_SUFFIXES, ".pt2", ".onnx", ".tflite", ".npz"):
        source = root / f"good{suffix}" if (root / f"good{suffix}").exists() else root / "good.pt"
        good = source.read_bytes()
        (root / f"empty{suffix}").write_bytes(b"")
        (root / f"truncated{suffix}").write_bytes(good[: len(good) // 2])
        (root / f"random{suffix}").write_bytes(rng.integers(0, 256, 2048, dtype=np.uint8).tobytes())
        made.update({f"empty{suffix}": "empty", f"truncated{suffix}": "truncated", f"random{suffix}": "random"})
    x = np.random.default_rng(2).random((8, 1, 8, 8), dtype=np.float32)
    for name, arrays in {
        "no_x.npz": {"a": x, "b": x},  # two arrays, neither named x nor after forward's parameter
        "wrong_shape.npz": {"x": np.zeros((8, 3, 8, 8), np.float32)},
        "wrong_rank.npz": {"x": np.zeros((8, 64), np.float32)},
        "nan.npz": {"x": np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x)},
        "inf.npz": {"x": np.where(np.arange(x.size).reshape(x.shape) == 9, np.inf, x)},
        "zero_samples.npz": {"x": np.zeros((0, 1, 8, 8), np.float32)},
        "short_labels.npz": {"x": x, "y": np.zeros(3, np.int64)},
        "labels_out_of_range.npz": {"x": x, "y": np.full(8, 42)},
        "string_x.npz": {"x": np.array(["a", "b"])},
    }.items():
        np.savez(root / name, **arrays)
    (root / "existing.onnx").write_bytes(b"an existing file that is not ours to replace")
    (root / "existing-dir").mkdir()
    (root / "existing-dir" / "notes.txt").write_text("user data")
    (root / "ro").mkdir()
    (root / "loader.py").write_text("def batches():\n    raise ValueError('the loader itself fails')\n")
    return made


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    _valid_files(root)
    _bad_files(root)
    return root


def _model_args(name: str) -> tuple[str, ...]:
    return (name,) if name.endswith(".pt2") else (name, "--arch", TINY)


def _cases() -> list[tuple[str, tuple[str, ...], str]]:
    """(id, argv, a fragment the error line must contain)."""
    cases = []
    bad_models = [f"{kind}{suffix}" for suffix in (*STATE_DICT_SUFFIXES, ".pt2")
                  for kind in ("missing", "empty", "truncated", "random")]
    for model in bad_models:
        m = _model_args(model)
        cases += [
            (f"quantize-model-{model}", ("quantize", *m, "--calib", "calib.npz", "-o", "out"), model),
            (f"export-model-{model}", ("export", *m, "--input-shape", "1,1,8,8", "-o", "out.onnx"), model),
            (f"inspect-model-{model}", ("inspect", *m), model),
        ]
    bad_data = ["missing.npz", "empty.npz", "truncated.npz", "random.npz", "no_x.npz", "wrong_shape.npz",
                "wrong_rank.npz", "nan.npz", "inf.npz", "zero_samples.npz", "short_labels.npz", "string_x.npz",
                "loader.py:batches", "loader.py:absent", "no_such_module_xyz:load"]
    for data in bad_data:
        cause = data.split(":")[0] if data.endswith(".npz") or "loader" in data else "no_such_module_xyz"
        cases += [
            (f"quantize-calib-{data}", ("quantize", "good.pt", "--arch", TINY, "--calib", data, "-o", "out"), cause),
            (f"export-sample-{data}", ("export", "good.pt", "--arch", TINY, "--sample", data, "-o", "out.onnx"),
             cause),
        ]
    for data in ("nan.npz", "wrong_shape.npz", "labels_out_of_range.npz", "short_labels.npz"):
        cases.append((f"quantize-eval-{data}",
                      ("quantize", "good.pt", "--arch", TINY, "--calib", "calib.npz", "--eval", data, "-o", "out"),
                      data if data != "labels_out_of_range.npz" else "--eval labels"))
    cases.append(("quantize-train-labels", ("quantize", "good.pt", "--arch", TINY, "--calib", "calib.npz", "--qat",
                                            "--train", "labels_out_of_range.npz", "-o", "out"), "--train labels"))
    for shape, cause in (("1,3,8,8", "--input-shape 1,1,8,8"), ("0,1,8,8", "0,1,8,8"), ("abc", "abc"),
                         ("1,1,8", "1,1,8"), ("1,3,100000,100000", "needs about")):
        cases += [(f"export-shape-{shape}", ("export", "good.pt", "--arch", TINY, "--input-shape", shape,
                                             "-o", "out.onnx"), cause)]
    cases += [(f"inspect-shape-{s}", ("inspect", "good.pt", "--arch", TINY, "--input-shape", s), s)
              for s in ("0,1,8,8", "abc")]
    base_q = ("quantize", "good.pt", "--arch", TINY, "--calib", "calib.npz")
    base_e = ("export", "good.pt", "--arch", TINY, "--input-shape", "1,1,8,8")
    cases += [
        ("quantize-out-is-model", (*base_q, "-o", "good.pt"), "good.pt"),
        ("quantize-out-is-data", (*base_q, "-o", "calib.npz"), "calib.npz"),
        ("quantize-out-existing-dir", (*base_q, "-o", "existing-dir"), "existing-dir"),
        ("quantize-out-existing-dir-force", (*base_q, "-o", "existing-dir", "--force"), "existing-dir"),
        ("quantize-out-existing-file", (*base_q, "-o", "existing.onnx"), "existing.onnx"),
        ("quantize-out-inside-a-file", (*base_q, "-o", "calib.npz/out"), "calib.npz"),
        ("quantize-out-read-only", (*base_q, "-o", "ro/out"), "read-only"),
        ("quantize-out-cwd", (*base_q, "-o", "."), "output directory ."),
        ("export-out-is-model", ("export", "good.onnx", "--input-shape", "1,1,8,8", "-o", "good.onnx"), "good.onnx"),
        ("export-out-is-sample", ("export", "good.pt", "--arch", TINY, "--sample", "calib.npz", "--format", "onnx",
                                  "-o", "calib.npz"), "calib.npz"),
        ("export-out-existing", (*base_e, "-o", "existing.onnx"), "existing.onnx"),
        ("export-out-dir", (*base_e, "--format", "onnx", "-o", "existing-dir"), "existing-dir"),
        ("export-out-inside-a-file", (*base_e, "-o", "good.pt/m.onnx"), "good.pt"),
        ("export-out-read-only", (*base_e, "-o", "ro/m.onnx"), "read-only"),
        ("export-bad-suffix", (*base_e, "-o", "m.bin"), "m.bin"),
        ("bench-json-is-artifact", ("bench", "good.onnx", "--json", "good.onnx"), "good.onnx"),
        ("bench-markdown-is-data", ("bench", "good.onnx", "--data", "calib.npz", "--markdown", "calib.npz"),
         "calib.npz"),
        ("bench-json-existing", ("bench", "good.onnx", "--json", "existing.onnx"), "existing.onnx"),
        ("bench-json-is-dir", ("bench", "good.onnx", "--json", "existing-dir"), "existing-dir"),
        ("bench-two-outputs-one-file", ("bench", "good.onnx", "--json", "r.x", "--markdown", "r.x"), "r.x"),
        ("bench-plot-not-png", ("bench", "good.onnx", "--plot", "r.jpg"), "r.png"),
        ("bench-artifact-missing", ("bench", "missing.onnx"), "missing.onnx"),
        ("bench-artifact-random-onnx", ("bench", "random.onnx", "--rounds", "1", "--runs", "1"), "random.onnx"),
        ("bench-artifact-empty-tflite", ("bench", "empty.tflite", "--rounds", "1", "--runs", "1"), "empty.tflite"),
        ("bench-data-nan", ("bench", "good.onnx", "--data", "nan.npz"), "nan.npz"),
        ("bench-threads", ("bench", "good.onnx", "--threads", "0"), "--threads"),
    ]
    cases += _prune_cases(bad_models)
    cases += _distill_cases(bad_models)
    return cases


def _prune_cases(bad_models: list[str]) -> list[tuple[str, tuple[str, ...], str]]:
    base = ("prune", "good.pt", "--arch", TINY, "--input-shape", "1,1,8,8")
    cut = (*base, "--channels", "0.5")
    cases = [(f"prune-model-{m}", ("prune", *_model_args(m), "--channels", "0.5", "--input-shape", "1,1,8,8",
                                   "-o", "out"), m) for m in bad_models if m.endswith((".pt", ".pt2"))]
    cases += [
        ("prune-no-mode", (*base, "-o", "out"), "pruning mode"),
        ("prune-two-modes", (*cut, "--sparsity", "0.5", "-o", "out"), "--sparsity"),
        ("prune-nm-reversed", (*base, "--nm", "4:2", "-o", "out"), "4:2"),
        ("prune-latency-target-range", (*base, "--latency-target", "1.5", "-o", "out"), "--latency-target"),
        ("prune-runtime-without-latency", (*cut, "--runtime", "torch", "-o", "out"), "--runtime"),
        ("prune-taylor-without-data", (*cut, "--criterion", "taylor", "-o", "out"), "taylor"),
        ("prune-quantize-without-calib", (*cut, "--quantize", "-o", "out"), "--calib"),
        ("prune-calib-nan", ("prune", "good.pt", "--arch", TINY, "--channels", "0.5", "--quantize", "--calib",
                             "nan.npz", "-o", "out"), "nan.npz"),
        ("prune-eval-wrong-shape", ("prune", "good.pt", "--arch", TINY, "--channels", "0.5", "--eval",
                                    "wrong_shape.npz", "-o", "out"), "wrong_shape.npz"),
        ("prune-train-labels", ("prune", "good.pt", "--arch", TINY, "--channels", "0.5", "--train",
                                "labels_out_of_range.npz", "-o", "out"), "--train labels"),
        ("prune-plan-missing", (*base, "--plan", "missing.json", "-o", "out"), "missing.json"),
        ("prune-format-unknown", (*cut, "--format", "coreml", "-o", "out"), "coreml"),
        ("prune-shape-abc", ("prune", "good.pt", "--arch", TINY, "--channels", "0.5", "--input-shape", "abc",
                             "-o", "out"), "abc"),
        ("prune-out-is-model", (*cut, "-o", "good.pt"), "good.pt"),
        ("prune-out-existing-dir", (*cut, "-o", "existing-dir"), "existing-dir"),
        ("prune-out-read-only", (*cut, "-o", "ro/out"), "read-only"),
    ]
    return cases


def _distill_cases(bad_models: list[str]) -> list[tuple[str, tuple[str, ...], str]]:
    student = ("--student-arch", TINY)
    base = ("distill", "--teacher", "good.pt", "--teacher-arch", TINY, *student, "--train", "calib.npz")
    cases = [(f"distill-teacher-{m}", ("distill", "--teacher", m, *(() if m.endswith(".pt2") else
                                                                    ("--teacher-arch", TINY)),
                                       *student, "--train", "calib.npz", "-o", "out"), m)
             for m in bad_models if m.endswith((".pt", ".pt2"))]
    cases += [(f"distill-student-{m}", (*base[:5], "--student", m, *(() if m.endswith(".pt2") else student),
                                        "--train", "calib.npz", "-o", "out"), m)
              for m in ("missing.pt2", "random.pt2", "truncated.pt")]
    for data, cause in (("missing.npz", "missing.npz"), ("nan.npz", "nan.npz"), ("wrong_shape.npz", "wrong_shape.npz"),
                        ("short_labels.npz", "short_labels.npz"), ("labels_out_of_range.npz", "--train labels"),
                        ("inf.npz", "inf.npz")):
        cases.append((f"distill-train-{data}", (*base[:-1], data, "-o", "out"), cause))
    cases += [
        ("distill-transfer-nan", (*base, "--transfer", "nan.npz", "-o", "out"), "nan.npz"),
        ("distill-eval-wrong-shape", (*base, "--eval", "wrong_shape.npz", "-o", "out"), "wrong_shape.npz"),
        ("distill-eval-labels", (*base, "--eval", "labels_out_of_range.npz", "-o", "out"), "--eval labels"),
        ("distill-calib-without-qat", (*base, "--calib", "calib.npz", "-o", "out"), "--qat"),
        ("distill-prune-spec", (*base, "--prune", "half", "-o", "out"), "--prune"),
        ("distill-loss-unknown", (*base, "--loss", "magic", "-o", "out"), "magic"),
        ("distill-format-unknown", (*base, "--format", "coreml", "-o", "out"), "coreml"),
        ("distill-no-student", ("distill", "--teacher", "good.pt", "--teacher-arch", TINY, "--train", "calib.npz",
                                "-o", "out"), "--student-arch"),
        ("distill-out-is-teacher", (*base, "-o", "good.pt"), "good.pt"),
        ("distill-out-is-data", (*base, "-o", "calib.npz"), "calib.npz"),
        ("distill-out-existing-dir", (*base, "-o", "existing-dir"), "existing-dir"),
        ("distill-out-read-only", (*base, "-o", "ro/out"), "read-only"),
        ("distill-out-cwd", (*base, "-o", "."), "output directory ."),
    ]
    return cases


CASES = _cases()


@pytest.fixture
def read_only(workspace, monkeypatch):
    """``workspace/ro`` refuses new entries for root too (EROFS from mkdir / open(O_CREAT)), as a read-only
    mount would; chmod 555 as well for everyone else."""
    ro = workspace / "ro"
    ro.chmod(0o555)
    real_mkdir, real_open = os.mkdir, os.open

    def inside(path) -> bool:
        return Path(os.fsdecode(path)).absolute().parent == ro

    def mkdir(path, mode=0o777, *args, **kwargs):
        if inside(path):
            raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))
        return real_mkdir(path, mode, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and inside(path):
            raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)
    yield
    ro.chmod(0o755)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("argv, cause", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(workspace, monkeypatch, read_only, argv, cause):
    from click.testing import CliRunner

    from compress.cli import main

    monkeypatch.chdir(workspace)
    before = _digest(workspace)
    try:
        result = CliRunner().invoke(main, list(argv))
        after = _digest(workspace)
    finally:  # a case that fails by writing must not make the next cases fail too
        for name in sorted(set(_digest(workspace)) - set(before), key=len, reverse=True):
            path = workspace / name
            path.rmdir() if path.is_dir() else path.unlink()
    line = result.stderr.strip()
    assert result.exit_code != 0, result.output
    assert result.exit_code in documented_exit_codes(), (result.exit_code, line)
    assert "Traceback" not in result.output, result.output
    assert len(line.splitlines()) == 1, result.stderr
    assert line.startswith("error: "), line  # never "internal error": a bad input is not a bug
    assert cause in line, (cause, line)
    assert FIX.search(line), f"no fix in: {line}"
    assert result.stdout == ""
    assert after == before, "the workspace changed: a file left behind or an input modified"


def test_the_sweep_covers_every_command_and_enough_cases():
    commands = {argv[0] for _, argv, _ in CASES}
    assert commands >= {"quantize", "export", "inspect", "bench", "prune", "distill"}
    assert len(CASES) >= 120
