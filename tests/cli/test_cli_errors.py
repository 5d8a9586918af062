"""Every bad input to the CLI: one line on stderr, a non-zero exit code, no traceback, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.errors import ConfigError, DataError, ModelLoadError, UnsafePickleError


def assert_one_line_error(result, exit_code: int, *fragments: str) -> str:
    """The whole stderr is one `error: ...` line, stdout is empty, and no traceback is shown."""
    assert result.exit_code == exit_code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(("error: ", "internal error: ")), lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def nothing_written(root: Path, *names: str) -> None:
    for name in names:
        assert not (root / name).exists(), f"{name} was left behind"
    leftovers = [p.name for p in root.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    assert leftovers == [], leftovers


def test_missing_model_file(cli, tmp_path, calib_npz):
    result = cli("quantize", "absent.pt", "--calib", calib_npz, "-o", "out")
    assert_one_line_error(result, ModelLoadError.exit_code, "absent.pt", "not found")
    nothing_written(tmp_path, "out")


def test_corrupt_model_file(cli, tmp_path, calib_npz, tiny_arch):
    (tmp_path / "bad.pt").write_bytes(b"\x80\x02garbage" * 10)
    result = cli("quantize", "bad.pt", "--arch", tiny_arch, "--calib", calib_npz, "-o", "out")
    assert_one_line_error(result, ModelLoadError.exit_code, "not a readable PyTorch file")
    nothing_written(tmp_path, "out")


def test_pickle_without_trust_pickle_is_refused_and_loads_with_it(cli, tmp_path, calib_npz, pickled_model_file):
    result = cli("quantize", pickled_model_file, "--calib", calib_npz, "-o", "out")
    assert_one_line_error(result, UnsafePickleError.exit_code, "--trust-pickle", "runs code")
    nothing_written(tmp_path, "out")
    loaded = cli("inspect", pickled_model_file, "--trust-pickle")
    assert loaded.exit_code == 0, loaded.output
    assert "stem.0" in loaded.stdout and "Conv2d" in loaded.stdout


def test_state_dict_without_arch(cli, tmp_path, calib_npz, state_dict_file):
    result = cli("quantize", state_dict_file, "--calib", calib_npz, "-o", "out")
    assert_one_line_error(result, ModelLoadError.exit_code, "--arch")


def test_data_whose_shape_does_not_fit(cli, tmp_path, write_npz, state_dict_file, tiny_arch):
    data = write_npz("rgb.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", data, "-o", "out")
    assert_one_line_error(result, DataError.exit_code, "[4, 3, 8, 8]", "takes [N, 1, H, W]")
    nothing_written(tmp_path, "out")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_data(cli, tmp_path, write_npz, state_dict_file, tiny_arch, bad):
    x = np.zeros((4, 1, 8, 8), np.float32)
    x[2, 0, 3, 3] = bad
    data = write_npz("nan.npz", x=x)
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", data, "-o", "out")
    assert_one_line_error(result, DataError.exit_code, "NaN or inf", "index 2")
    nothing_written(tmp_path, "out")


def test_non_finite_eval_data_is_caught_before_the_work(cli, tmp_path, write_npz, calib_npz, state_dict_file, tiny_arch):
    data = write_npz("eval.npz", x=np.full((2, 1, 8, 8), np.nan, np.float32))
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "--eval", data, "-o", "out")
    assert_one_line_error(result, DataError.exit_code, "eval.npz")


def test_empty_calibration_set(cli, tmp_path, write_npz, state_dict_file, tiny_arch):
    data = write_npz("empty.npz", x=np.zeros((0, 1, 8, 8), np.float32))
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", data, "-o", "out")
    assert_one_line_error(result, DataError.exit_code, "empty")
    nothing_written(tmp_path, "out")


def test_missing_calibration_file(cli, state_dict_file, tiny_arch):
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", "nope.npz", "-o", "out")
    assert_one_line_error(result, DataError.exit_code, "nope.npz", "not found")


def test_output_that_is_the_input_file(cli, tmp_path, calib_npz, state_dict_file, tiny_arch):
    before = state_dict_file.read_bytes()
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "-o", state_dict_file,
                 "--force")
    assert_one_line_error(result, ConfigError.exit_code, "is the input file")
    assert state_dict_file.read_bytes() == before


def test_output_that_contains_the_input(cli, tmp_path, calib_npz, tiny_cnn, tiny_arch):
    models = tmp_path / "models"
    models.mkdir()
    torch.save(tiny_cnn.state_dict(), models / "m.pt")
    (models / ".compress-output").write_text("{}")  # even a compress output dir is not replaced over its input
    result = cli("quantize", models / "m.pt", "--arch", tiny_arch, "--calib", calib_npz, "-o", models, "--force")
    assert_one_line_error(result, ConfigError.exit_code, "contains the input")
    assert (models / "m.pt").exists()
    result = cli("quantize", models / "m.pt", "--arch", tiny_arch, "--calib", models / "m.pt", "-o", tmp_path,
                 "--force")
    assert result.exit_code == ConfigError.exit_code


def test_existing_output_needs_force_and_is_left_untouched(cli, tmp_path, calib_npz, state_dict_file, tiny_arch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "-o", out)
    assert_one_line_error(result, ConfigError.exit_code, "already exists", "--force")
    # --force does not delete a directory compress did not write.
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "-o", out, "--force")
    assert_one_line_error(result, ConfigError.exit_code, "not written by compress")
    assert (out / "keep.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "-o", "afile", "--force")
    assert_one_line_error(result, ConfigError.exit_code, "is a file")


def test_output_may_not_be_the_working_directory(cli, monkeypatch, calib_npz, state_dict_file, tiny_arch, tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "-o", ".", "--force")
    assert_one_line_error(result, ConfigError.exit_code, "current directory")


def test_unknown_observer_is_a_one_line_usage_error(cli, calib_npz, state_dict_file):
    result = cli("quantize", state_dict_file, "--calib", calib_npz, "-o", "out", "--observer", "median")
    assert_one_line_error(result, 2, "--observer", "'median' is not one of", "percentile", "compress quantize --help")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--qat"], "--qat needs labelled training data"),
        (["--epochs", "3"], "--epochs only apply to quantization-aware training"),
        (["--train", "calib.npz", "--lr", "0.1"], "--train, --lr only apply"),
    ],
)
def test_qat_options_are_consistent(cli, calib_npz, state_dict_file, tiny_arch, args, fragment):
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "-o", "out", *args)
    assert_one_line_error(result, ConfigError.exit_code, fragment)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["quantize", "m.pt", "-o", "out"], "Missing option '--calib'"),
        (["quantize", "m.pt", "--calib", "c.npz", "-o", "out", "--epochs", "0"], "--epochs"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["inspect"], "Missing argument 'MODEL'"),
    ],
)
def test_usage_errors_are_one_line(cli, args, fragment):
    assert_one_line_error(cli(*args), 2, fragment)


def test_unexpected_exceptions_are_internal_errors_and_debug_shows_them(cli, monkeypatch, calib_npz, state_dict_file):
    import compress.io

    def boom(*args, **kwargs):
        raise ValueError("boom\nsecond line")

    monkeypatch.setattr(compress.io, "load_model", boom)
    result = cli("quantize", state_dict_file, "--calib", calib_npz, "-o", "out")
    line = assert_one_line_error(result, 70, "internal error: ValueError: boom second line", "--debug")
    assert not line.startswith("error:")
    debug = cli("quantize", state_dict_file, "--calib", calib_npz, "-o", "out", "--debug")
    assert debug.exit_code == 70  # --debug adds the traceback and keeps the documented code
    assert "Traceback" in debug.stderr and "ValueError: boom" in debug.stderr


def test_debug_shows_the_traceback_of_user_errors_and_keeps_their_exit_code(cli, calib_npz):
    result = cli("quantize", "absent.pt", "--calib", calib_npz, "-o", "out", "--debug")
    assert result.exit_code == ModelLoadError.exit_code
    assert "Traceback" in result.stderr and "ModelLoadError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_failure_inside_the_pipeline_leaves_no_partial_output(cli, monkeypatch, tmp_path, calib_npz,
                                                              state_dict_file, tiny_arch):
    import compress.pipeline

    def half_then_fail(model, calib, out_dir, options=None, **kwargs):
        (Path(out_dir) / "model_fp32.onnx").write_bytes(b"partial")
        raise DataError("simulated failure half way; fix nothing")

    monkeypatch.setattr(compress.pipeline, "quantize_model", half_then_fail)
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "-o", "deep/nested/out")
    assert_one_line_error(result, DataError.exit_code, "simulated failure")
    nothing_written(tmp_path, "deep")

    # An existing output survives a failed --force run unchanged.
    old = tmp_path / "old"
    old.mkdir()
    (old / ".compress-output").write_text(json.dumps({"written_by": "compress quantize"}))
    (old / "report.json").write_text('{"old": true}')
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "-o", old, "--force")
    assert result.exit_code == DataError.exit_code
    assert json.loads((old / "report.json").read_text()) == {"old": True}
    assert sorted(p.name for p in old.iterdir()) == [".compress-output", "report.json"]
    nothing_written(tmp_path)


def test_inspect_errors(cli, state_dict_file, tiny_arch):
    assert_one_line_error(cli("inspect", state_dict_file), ModelLoadError.exit_code, "--arch")
    assert_one_line_error(cli("inspect", state_dict_file, "--arch", tiny_arch, "--input-shape", "one,two"),
                          ConfigError.exit_code, "--input-shape")
    assert_one_line_error(cli("inspect", state_dict_file, "--arch", tiny_arch, "--input-shape", "1,3,8,8"),
                          DataError.exit_code, "[1, 3, 8, 8]")
