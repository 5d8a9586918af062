"""`compress distill` end to end on the bundled digits: files, report figures checked against onnxruntime and
numpy, no overwrite without --force, --resume after an interruption, and bad inputs (one line, exit code)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.onnx

TEACHER_ARCH = "compress.models:DemoCNN(width=16)"
LABELS = 300  # labelled training samples; the rest of the digits' training split is --transfer


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A trained teacher (state dict), labelled train / unlabelled transfer / labelled test .npz files."""
    from compress.demo import load_digits
    from compress.distill import DistillConfig, train_baseline
    from compress.models import DemoCNN

    root = tmp_path_factory.mktemp("distill-cli")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train, test = load_digits()
        torch.manual_seed(0)
        teacher = train_baseline(DemoCNN(width=16), train, DistillConfig(epochs=4, lr=3e-3, device="cpu"),
                                 progress=False).student
    finally:
        torch.set_num_threads(threads)
    torch.save(teacher.state_dict(), root / "teacher.pt")
    torch.save(teacher, root / "teacher_pickled.pt")
    np.savez(root / "train.npz", x=train.x[:LABELS], y=train.y[:LABELS])
    np.savez(root / "transfer.npz", x=train.x[LABELS:])
    np.savez(root / "test.npz", x=test.x, y=test.y)
    return root


@pytest.fixture
def run(work, monkeypatch):
    """``run(*args)``: `compress distill ...` in the workspace (one torch thread: tests/distill/conftest.py)."""
    from click.testing import CliRunner

    from compress.cli import main

    monkeypatch.chdir(work)

    def invoke(*args):
        return CliRunner().invoke(main, ["distill", *map(str, args)])

    return invoke


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


BASE = ("--teacher", "teacher.pt", "--teacher-arch", TEACHER_ARCH, "--train", "train.npz", "--eval", "test.npz")


@pytest.mark.slow
def test_prune_distill_qat_end_to_end(run, work):
    from compress.io import load_model

    result = run(*BASE, "--student", "teacher.pt", "--student-arch", TEACHER_ARCH, "--transfer", "transfer.npz",
                 "--prune", "channels=0.5", "--epochs", "2", "--lr", "3e-3", "--qat", "--baseline", "-o", "full")
    assert result.exit_code == 0, result.output
    out = work / "full"
    assert {p.name for p in out.iterdir()} == {".compress-output", "student.pt2", "student_state_dict.pt",
                                               "plan.json", "student_fp32.onnx", "student_int8.onnx", "report.json"}
    assert not (work / ".full.distill-checkpoints").exists()  # a finished run leaves nothing to resume
    assert "baseline" in result.stdout and "wrote full" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["initial", "prune", "bn_reestimate", "distill", "qat"]

    test = np.load(work / "test.npz")
    x, y = test["x"], test["y"]
    teacher = load_model(work / "teacher.pt", arch=TEACHER_ARCH)
    with torch.no_grad():
        teacher_acc = float(np.mean(teacher(torch.from_numpy(x)).numpy().argmax(1) == y))
    assert report["teacher"]["metric"] == pytest.approx(teacher_acc)
    assert report["stages"][0]["metric"] == pytest.approx(teacher_acc)  # the student starts as the teacher

    # The saved program is the distilled student: it loads without --arch, is half as wide, and its ONNX
    # file computes the same outputs in onnxruntime.
    student = load_model(out / "student.pt2")
    with torch.no_grad():
        want = student(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_ort(out / "student_fp32.onnx", x), want, rtol=1e-4, atol=1e-4)
    state = torch.load(out / "student_state_dict.pt")
    assert state["stem.0.weight"].shape[0] == 8 and teacher.stem[0].weight.shape[0] == 16
    assert float(np.mean(want.argmax(1) == y)) == pytest.approx(report["stages"][3]["metric"])

    # int8 accuracy as onnxruntime computes it here: well above chance (10 %), near the float student's.
    int8_acc = float(np.mean(_ort(out / "student_int8.onnx", x).argmax(1) == y))
    assert report["formats"]["onnx"]["int8"]["accuracy"] == pytest.approx(int8_acc)
    assert int8_acc > 0.5 and abs(int8_acc - report["stages"][3]["metric"]) < 0.05
    assert report["formats"]["onnx"]["int8"]["bytes"] == (out / "student_int8.onnx").stat().st_size
    lat = report["latency"]
    assert lat["teacher_fp32"]["latency_ms_median"] > 0
    assert lat["student_int8"]["speedup_vs_teacher"] == pytest.approx(
        lat["teacher_fp32"]["latency_ms_median"] / lat["student_int8"]["latency_ms_median"])
    assert report["baseline"]["steps"] == report["stages"][3]["steps"]  # the same budget without the teacher
    assert report["gain_over_baseline"] == pytest.approx(report["stages"][3]["metric"] - report["baseline"]["metric"])


@pytest.mark.slow
def test_no_overwrite_without_force_and_resume_after_interruption(run, work, monkeypatch):
    import compress.schedule

    args = (*BASE, "--student-arch", "compress.models:DemoCNN(width=4)", "--epochs", "1", "-o", "again")
    ckpt = work / ".again.distill-checkpoints" / "distill" / "distill-last.pt"

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    # Interrupted after training: nothing is written, the epoch checkpoint waits for --resume.
    monkeypatch.setattr(compress.schedule, "_save_student", interrupted)
    stopped = run(*args)
    assert stopped.exit_code == 130, stopped.output
    assert not (work / "again").exists() and ckpt.is_file()
    monkeypatch.undo()
    monkeypatch.chdir(work)
    saved = torch.load(ckpt, weights_only=True)

    resumed = run(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    report = json.loads((work / "again" / "report.json").read_text())
    assert report["stages"][-1]["history"] == saved["history"]  # the epoch was not trained again
    trained = {k[len("student."):]: v for k, v in saved["trainable"].items() if k.startswith("student.")}
    state = torch.load(work / "again" / "student_state_dict.pt")
    assert state.keys() == trained.keys()
    assert all(torch.equal(state[k], trained[k]) for k in state)
    assert not ckpt.parent.parent.exists()

    # An existing output is kept without --force, replaced with it.
    before = (work / "again" / "report.json").read_bytes()
    refused = run(*args)
    assert refused.exit_code == 2 and "--force" in refused.stderr
    assert (work / "again" / "report.json").read_bytes() == before
    replaced = run(*args, "--force", "--seed", "1")
    assert replaced.exit_code == 0, replaced.output
    assert (work / "again" / "report.json").read_bytes() != before


STUDENT = ("--student-arch", "compress.models:DemoCNN(width=4)")
BAD = [
    ("missing-teacher", ("--teacher", "absent.pt", "--train", "train.npz", *STUDENT), 3, "absent.pt"),
    ("teacher-without-arch", ("--teacher", "teacher.pt", "--train", "train.npz", *STUDENT), 3, "--teacher-arch"),
    ("pickle-without-flag", ("--teacher", "teacher_pickled.pt", "--train", "train.npz", *STUDENT), 3,
     "--trust-pickle"),
    ("no-student", BASE, 2, "--student-arch"),
    ("two-students", (*BASE, *STUDENT, "--derive", "narrow"), 2, "--derive"),
    ("feature-loss-without-pairs", (*BASE, *STUDENT, "--loss", "kd,feature"), 2, "feature"),
    ("unknown-loss", (*BASE, *STUDENT, "--loss", "kd,magic"), 2, "magic"),
    ("feature-pair-syntax", (*BASE, *STUDENT, "--feature", "layer3"), 2, "TEACHER_PATH:STUDENT_PATH"),
    ("prune-spec", (*BASE, *STUDENT, "--prune", "half"), 2, "channels=0.5"),
    ("prune-value", (*BASE, *STUDENT, "--prune", "channels=lots"), 2, "channels"),
    ("calib-without-qat", (*BASE, *STUDENT, "--calib", "train.npz"), 2, "--qat"),
    ("unlabelled-train", ("--teacher", "teacher.pt", "--teacher-arch", TEACHER_ARCH, "--train", "transfer.npz",
                          *STUDENT), 4, "--transfer"),
    ("student-classes", (*BASE, "--student-arch", "compress.models:DemoCNN(width=4, num_classes=5)"), 4,
     "student"),
    ("resume-nothing", (*BASE, *STUDENT, "--resume"), 2, "--resume"),
    ("format", (*BASE, *STUDENT, "--format", "onnx,coreml"), 2, "coreml"),
    ("out-is-teacher", (*BASE, *STUDENT), 2, "teacher.pt"),
]


@pytest.mark.parametrize("argv, code, fragment", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(run, work, argv, code, fragment):
    before = sorted(p.name for p in work.iterdir())
    result = run(*argv, "-o", "teacher.pt" if fragment == "teacher.pt" else "bad-out")
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0] and "Traceback" not in result.output and result.stdout == ""
    assert sorted(p.name for p in work.iterdir()) == before


def test_choices_copied_for_a_fast_help_match_the_library():
    import dataclasses

    from compress.cli.distill import DERIVE_CHOICES, PRUNE_KEYS
    from compress.distill.derive import HOWS
    from compress.passes.prune import PruneConfig

    assert tuple(DERIVE_CHOICES) == tuple(HOWS)
    assert set(PRUNE_KEYS) <= {f.name for f in dataclasses.fields(PruneConfig)}


def test_derived_student_with_a_feature_loss_exports_without_its_adapter(run, work):
    result = run(*BASE, "--derive", "narrow", "--feature", "teacher.conv2:student.conv2", "--epochs", "1",
                 "-o", "feat")
    assert result.exit_code == 0, result.output
    out = work / "feat"
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["distill"]["losses"] == ["kd", "feature"]  # --feature alone implies kd,feature
    assert "feature" in report["stages"][-1]["history"][0]
    state = torch.load(out / "student_state_dict.pt")
    assert state["conv2.weight"].shape[:2] == (8, 8)  # half the teacher's 16 channels
    assert not [k for k in state if "adapter" in k]  # the 8 → 16 channel adapter was for training only
    import onnx

    # By size, not name (the exporter shortens names): an adapter's weights would exceed the student's own.
    stored = sum(int(np.prod(t.dims)) for t in onnx.load(str(out / "student_fp32.onnx")).graph.initializer
                 if len(t.dims) >= 2)
    assert stored <= sum(v.numel() for k, v in state.items() if v.dim() >= 2)
