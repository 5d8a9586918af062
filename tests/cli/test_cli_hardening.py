"""Issue 11, one test (or a few) per item: no output clobbered, no leftovers on kill, no silent collapse, every
error blames the right cause, and the small things (exit codes, piped width, .gitignore, install hint)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.errors import CompressError, ConfigError, DataError, QualityError, ResourceError

REPO = Path(__file__).resolve().parents[2]
TINY = "compress.models:DemoCNN(width=4)"


def one_error_line(result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def digest(root: Path) -> dict[str, str]:
    """Every file under root (hidden ones included) and its content hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def staging_left(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if ".partial-" in p.name or ".old-" in p.name]


@pytest.fixture
def onnx_file(cli, tmp_path, state_dict_file) -> Path:
    result = cli("export", state_dict_file, "--arch", TINY, "--input-shape", "1,1,8,8", "-o", "x.onnx")
    assert result.exit_code == 0, result.output
    return tmp_path / "x.onnx"


# 1. bench outputs never overwrite an input or an existing file


@pytest.mark.parametrize("option", ["--json", "--markdown"])
def test_bench_refuses_to_write_over_the_artifact_it_measures(cli, tmp_path, onnx_file, option):
    before = onnx_file.read_bytes()
    result = cli("bench", onnx_file, option, onnx_file, "--rounds", "1", "--runs", "1", "--warmup", "0")
    one_error_line(result, ConfigError.exit_code, f"{option} {onnx_file}", "input file", "choose another")
    assert onnx_file.read_bytes() == before


def test_bench_refuses_an_existing_file_without_force_and_two_outputs_on_one_path(cli, tmp_path, onnx_file):
    (tmp_path / "r.json").write_text("mine")
    result = cli("bench", onnx_file, "--json", "r.json")
    one_error_line(result, ConfigError.exit_code, "r.json already exists", "--force")
    assert (tmp_path / "r.json").read_text() == "mine"
    result = cli("bench", onnx_file, "--json", "same.out", "--markdown", "same.out")
    one_error_line(result, ConfigError.exit_code, "--json and --markdown both name same.out")


def test_bench_force_replaces_an_existing_report_in_one_rename(cli, tmp_path, onnx_file):
    (tmp_path / "r.md").write_text("old")
    result = cli("bench", onnx_file, "--markdown", "r.md", "--force", "--rounds", "1", "--runs", "2",
                 "--warmup", "0")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.md").read_text().startswith("## compress bench")
    assert staging_left(tmp_path) == []


# 2. killed runs leave no staging behind (a real process: signals cannot be sent to CliRunner)


def _start_long_quantize(tmp_path: Path, state_dict_file: Path, calib_npz: Path, out: str) -> subprocess.Popen:
    # QAT with a huge epoch count on a tiny model: a quantize that runs until it is killed.
    cmd = [sys.executable, "-m", "compress.cli", "quantize", str(state_dict_file), "--arch", TINY,
           "--calib", str(calib_npz), "--qat", "--train", str(calib_npz), "--epochs", "100000", "-o", out]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_staging(proc: subprocess.Popen, root: Path, limit_s: float = 120) -> list[str]:
    deadline = time.monotonic() + limit_s  # a generous bound on start-up, not a timed assertion
    while time.monotonic() < deadline:
        found = staging_left(root)
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"quantize ended before staging appeared: {proc.communicate()}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail("no staging directory appeared")


def test_sigterm_removes_the_staging_and_exits_143(tmp_path, state_dict_file, calib_npz):
    proc = _start_long_quantize(tmp_path, state_dict_file, calib_npz, "out")
    _wait_for_staging(proc, tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines() == ["error: stopped by SIGTERM; nothing was written"]
    assert staging_left(tmp_path) == []
    assert not (tmp_path / "out").exists()


def test_staging_of_a_killed_run_is_removed_by_the_next_run(cli, tmp_path, state_dict_file, calib_npz):
    proc = _start_long_quantize(tmp_path, state_dict_file, calib_npz, "out")
    stale = _wait_for_staging(proc, tmp_path)
    proc.kill()  # SIGKILL: no handler runs, the staging stays
    proc.communicate(timeout=60)
    assert staging_left(tmp_path) == stale
    result = cli("quantize", state_dict_file, "--arch", TINY, "--calib", calib_npz, "-o", "out")
    assert result.exit_code == 0, result.output
    assert staging_left(tmp_path) == []


def test_staging_of_a_living_process_is_left_alone(tmp_path):
    from compress.io.atomic import clean_stale_staging, staging_name

    mine = tmp_path / staging_name("out")  # this process's pid: alive
    mine.mkdir()
    dead = tmp_path / ".out.partial-999999999-0badcafe"
    dead.mkdir()
    assert clean_stale_staging(tmp_path) == [dead]
    assert mine.exists()


# 3. no silent collapse; every figure says which set it was measured on


def _trained_classifier(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny CNN trained to 100 % on 48 images of 4 classes (class k: a bright band at rows 2k, 2k+1)."""
    from compress.models import DemoCNN

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = np.arange(48) % 4
    x = rng.random((48, 1, 8, 8), dtype=np.float32) * 0.3
    for i, k in enumerate(y):
        x[i, 0, 2 * k:2 * k + 2, :] += 1.0
    net = DemoCNN(width=4)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    net.eval()
    assert (net(torch.from_numpy(x)).argmax(-1).numpy() == y).mean() > 0.9
    torch.save(net.state_dict(), tmp_path / "trained.pt")
    np.savez(tmp_path / "labelled.npz", x=x, y=y)
    return tmp_path / "trained.pt", tmp_path / "labelled.npz"


def test_qat_that_destroys_the_model_fails_unless_accepted(cli, tmp_path):
    model, data = _trained_classifier(tmp_path)
    args = ("quantize", model, "--arch", TINY, "--calib", data, "--qat", "--train", data,
            "--epochs", "2", "--lr", "1000")
    result = cli(*args, "-o", "out")
    one_error_line(result, QualityError.exit_code, "collapsed", "--lr", "--accept-degraded")
    assert not (tmp_path / "out").exists() and staging_left(tmp_path) == []
    accepted = cli(*args, "-o", "out", "--accept-degraded")
    assert accepted.exit_code == 0, accepted.output
    assert any(line.startswith("warning: the int8 onnx model collapsed") for line in accepted.stderr.splitlines())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any("collapsed" in w for w in report["warnings"])


def test_eval_labels_outside_the_models_classes_are_refused_before_the_work(cli, tmp_path, write_npz,
                                                                           state_dict_file, calib_npz):
    data = write_npz("eval.npz", x=np.zeros((4, 1, 8, 8), np.float32), y=np.array([50, 51, 52, 59]))
    result = cli("quantize", state_dict_file, "--arch", TINY, "--calib", calib_npz, "--eval", data, "-o", "out")
    one_error_line(result, DataError.exit_code, "--eval labels", "50..59", "10 outputs")
    assert not (tmp_path / "out").exists()


def test_accuracy_without_eval_is_labelled_as_measured_on_the_calibration_set(cli, tmp_path, state_dict_file,
                                                                             calib_npz, write_npz):
    result = cli("quantize", state_dict_file, "--arch", TINY, "--calib", calib_npz, "-o", "out")
    assert result.exit_code == 0, result.output
    assert "accuracy (calibration)" in result.stdout
    assert "calibration set (calib.npz)" in result.stdout
    assert "warning: accuracy was measured on the calibration set" in result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["evaluated_on"]["set"] == "calibration" and report["evaluated_on"]["samples"] == 48
    assert Path(report["evaluated_on"]["source"]).name == "calib.npz"
    x, y = np.load(calib_npz)["x"][:20], np.load(calib_npz)["y"][:20]
    held_out = write_npz("test.npz", x=x, y=y)
    result = cli("quantize", state_dict_file, "--arch", TINY, "--calib", calib_npz, "--eval", held_out, "-o", "o2")
    assert result.exit_code == 0, result.output
    assert "accuracy (eval)" in result.stdout and "on 20 samples of the eval set (test.npz)" in result.stdout
    assert "calibration set" not in result.stderr


# 4. errors blame the right cause


def test_an_input_shape_too_big_for_memory_is_refused_before_allocating(cli, tmp_path, state_dict_file):
    result = cli("export", state_dict_file, "--arch", TINY, "--input-shape", "1,3,100000,100000", "-o", "m.onnx")
    line = one_error_line(result, ResourceError.exit_code, "--input-shape 1,3,100000,100000", "needs about",
                          "smaller shape")
    assert "MemoryError" not in line and "Reshape" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]


def test_the_memory_estimate_counts_the_layer_outputs(cli, tmp_path, state_dict_file, monkeypatch):
    import compress.cli._shapes as shapes

    # 16 MB of input, but the first conv's output is 4x that: the estimate must blame memory, not the shape.
    monkeypatch.setattr(shapes, "available_memory", lambda: 100 * 2**20)
    result = cli("export", state_dict_file, "--arch", TINY, "--input-shape", "1,1,2000,2000", "-o", "m.onnx")
    one_error_line(result, ResourceError.exit_code, "largest layer output", "100 MiB are available")


def test_a_wrong_input_shape_names_the_shape_the_model_takes(cli, tmp_path, state_dict_file):
    result = cli("export", state_dict_file, "--arch", TINY, "--input-shape", "1,3,224,224", "-o", "m.onnx")
    line = one_error_line(result, ConfigError.exit_code, "it takes 1,1,224,224", "pass --input-shape 1,1,224,224")
    assert "Reshape the data" not in line


@pytest.mark.parametrize("exc", [MemoryError("Unable to allocate 112. GiB"),
                                 RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                                              "allocate memory: you tried to allocate 1600000000 bytes")])
def test_running_out_of_memory_is_not_an_internal_error(cli, monkeypatch, state_dict_file, calib_npz, exc):
    import compress.io

    def oom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(compress.io, "load_model", oom)
    result = cli("quantize", state_dict_file, "--arch", TINY, "--calib", calib_npz, "-o", "out")
    one_error_line(result, ResourceError.exit_code, "out of memory", "smaller")


def test_a_shape_check_that_ran_out_of_memory_blames_memory_not_the_data(cli, monkeypatch, state_dict_file,
                                                                         calib_npz):
    import compress.io

    def check_fits(*args, **kwargs):
        try:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 6 GB")
        except RuntimeError as exc:
            raise DataError("data x has shape [1, 1, 20000, 20000] but the model rejects it; Reshape the data") \
                from exc

    monkeypatch.setattr(compress.io, "check_fits", check_fits)
    result = cli("quantize", state_dict_file, "--arch", TINY, "--calib", calib_npz, "-o", "out")
    line = one_error_line(result, ResourceError.exit_code, "out of memory")
    assert "Reshape" not in line


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch) -> Path:
    """A directory nothing can be created in, for root too (root ignores mode bits): chmod 555, and the calls
    that create entries refuse inside it with EROFS, as a read-only mount would."""
    ro = tmp_path / "ro"
    ro.mkdir()
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
    yield ro
    ro.chmod(0o755)


@pytest.mark.parametrize("command", ["export", "quantize"])
def test_a_read_only_output_directory_is_named_not_an_internal_error(cli, tmp_path, read_only_dir,
                                                                     state_dict_file, calib_npz, command):
    if command == "export":
        args = ("export", state_dict_file, "--arch", TINY, "--input-shape", "1,1,8,8", "-o", "ro/m.onnx")
    else:
        args = ("quantize", state_dict_file, "--arch", TINY, "--calib", calib_npz, "-o", "ro/out")
    result = cli(*args)
    one_error_line(result, ConfigError.exit_code, "cannot write ro/", "read-only", "choose another -o")
    assert list(read_only_dir.iterdir()) == []


def test_torch_onnx_ir_dump_is_held_back_on_an_unexportable_op(cli, tmp_path, capfd):
    (tmp_path / "fftnet.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.c = nn.Conv2d(1, 2, 3)\n\n"
        "    def forward(self, x):\n"
        "        return torch.fft.rfft(self.c(x)).abs()\n")
    sys.path.insert(0, str(tmp_path))
    try:
        from fftnet import Net  # noqa: PLC0415

        torch.save(Net().state_dict(), tmp_path / "fft.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fftnet", None)
    capfd.readouterr()
    result = cli("export", "fft.pt", "--arch", "fftnet.py:Net", "--input-shape", "1,1,8,8", "-o", "fft.onnx")
    assert result.exit_code == 5, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    leaked = capfd.readouterr()
    assert "Torch IR graph" not in leaked.err + leaked.out
    assert not (tmp_path / "fft.onnx").exists() and staging_left(tmp_path) == []


# 5. small things


def _documented_exit_codes() -> dict[int, str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Exit codes"):]
    section = section[:section.index("\n## ", 3)]
    return {int(m[1]): m[2] for m in re.finditer(r"^\| `?(\d+)`? \| (.+?) \|", section, re.M)}


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def test_readme_exit_code_table_is_complete_and_true():
    import compress.runtime.remote  # noqa: F401  (defines RemoteDeviceError, exit 8)
    from compress.cli._common import EXIT_INTERNAL, EXIT_INTERRUPTED

    codes = {sub.exit_code for sub in _all_subclasses(CompressError)}
    codes |= {EXIT_INTERNAL, EXIT_INTERRUPTED, 128 + signal.SIGTERM, 128 + signal.SIGHUP}
    documented = _documented_exit_codes()
    assert documented.pop(0).startswith("success")
    assert set(documented) == codes, (sorted(documented), sorted(codes))
    assert 8 in documented and "device" in documented[8]


def test_piped_output_is_not_wrapped_at_80_columns(cli, tmp_path, monkeypatch, state_dict_file, calib_npz):
    monkeypatch.delenv("COLUMNS", raising=False)
    out = "an-output-directory-with-a-name-long-enough-to-be-split-by-an-80-column-console-" + "x" * 20
    result = cli("quantize", state_dict_file, "--arch", TINY, "--calib", calib_npz, "-o", out)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stdout.splitlines() if "agree: top-1 agreement with fp32" in line]
    assert len(notes) == 1 and "ops left in float: none" in notes[0], result.stdout
    assert any(line.startswith(f"wrote {out}: model.onnx") for line in result.stdout.splitlines())


def test_files_the_readme_examples_create_are_git_ignored():
    if not (REPO / ".git").exists():
        pytest.fail("run the tests from a git checkout: the check reads .gitignore through git")
    created = ["demo-out/report.json", "my-out/model.onnx", "out/model.onnx", "r.json", "r.md", "r.png",
               "model.onnx", "model.tflite", "bench.png"]
    result = subprocess.run(["git", "check-ignore", "--no-index", *created], cwd=REPO, capture_output=True,
                            text=True)
    assert sorted(result.stdout.split()) == sorted(created), result


def test_readme_cpu_wheel_hint_is_a_runnable_command():
    readme = (REPO / "README.md").read_text()
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in readme


def test_low_agreement_of_outputs_that_are_not_working_class_scores_only_warns():
    from compress.pipeline import quality_warnings

    # fp32 at chance level on these labels: argmax agreement says little (an embedding, an untrained head)
    report = {"evaluated_on": {"set": "eval", "samples": 50, "classes": 10}, "formats": {"onnx": {
        "fp32": {"accuracy": 0.1}, "int8": {"accuracy": 0.08, "top1_agreement": 0.3}}}}
    collapse, warns = quality_warnings(report)
    assert collapse is None
    assert any("may have collapsed" in w for w in warns)
    report["formats"]["onnx"]["fp32"]["accuracy"] = 0.9  # a working classifier: the same figure is an error
    assert quality_warnings(report)[0].startswith("the int8 onnx model collapsed")


@pytest.mark.parametrize("err, code, fragments", [
    (errno.EACCES, ConfigError.exit_code, ("cannot access /data/m.pt", "permission denied", "permissions")),
    (errno.ENOSPC, ResourceError.exit_code, ("cannot write /data/m.pt", "no space left", "free some space")),
])
def test_os_errors_name_the_path_and_the_cause(cli, monkeypatch, state_dict_file, calib_npz, err, code, fragments):
    import compress.io

    def fail(*args, **kwargs):
        raise OSError(err, os.strerror(err), "/data/m.pt")

    monkeypatch.setattr(compress.io, "load_model", fail)
    result = cli("quantize", state_dict_file, "--arch", TINY, "--calib", calib_npz, "-o", "out")
    one_error_line(result, code, *fragments)
