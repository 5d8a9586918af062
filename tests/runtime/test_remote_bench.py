"""``compress bench --device ssh://...`` for real: an OpenSSH server started on 127.0.0.1 with a throw-away key.

Skipped only where sshd is not installed; with ``COMPRESS_REQUIRE_SSH=1`` (set by .ci/run) a missing sshd
fails instead, so CI cannot silently skip the SSH path.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compress.errors import ConfigError, MissingDependencyError
from compress.runtime.bench import BenchConfig, run_bench
from compress.runtime.remote import RemoteConfig, RemoteDevice, RemoteDeviceError, SshTarget, parse_device

SSHD = "/usr/sbin/sshd"
pytestmark = pytest.mark.ssh


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _need_ssh() -> None:
    missing = [p for p in (SSHD, shutil.which("ssh"), shutil.which("ssh-keygen"), shutil.which("scp"))
               if not p or not os.path.exists(p)]
    if missing:
        reason = "OpenSSH server/client not installed (apt-get install openssh-server openssh-client)"
        if os.environ.get("COMPRESS_REQUIRE_SSH") == "1":
            pytest.fail(reason + "; COMPRESS_REQUIRE_SSH=1 forbids skipping")
        pytest.skip(reason)


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A private sshd on a free port; yields (port, ssh config file with alias `benchbox`, dir)."""
    _need_ssh()
    d = tmp_path_factory.mktemp("sshd")
    _keygen(d / "host_key")
    _keygen(d / "id")
    (d / "authorized_keys").write_text((d / "id.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_key
AuthorizedKeysFile {d}/authorized_keys
PidFile {d}/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin yes
Subsystem sftp internal-sftp
LogLevel ERROR
""")
    user = getpass.getuser()
    (d / "ssh_config").write_text(f"""Host benchbox
  HostName 127.0.0.1
  Port {port}
  User {user}
Host *
  IdentityFile {d}/id
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory, needed as root
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                msg = f"sshd did not start: {proc.stderr.read()[-500:]}"
                pytest.fail(msg) if os.environ.get("COMPRESS_REQUIRE_SSH") == "1" else pytest.skip(msg)
            time.sleep(0.05)
    yield {"port": port, "config": str(d / "ssh_config"), "dir": d, "user": user}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def gemm_onnx(tmp_path_factory):
    from test_bench_runtimes import write_gemm_onnx

    return write_gemm_onnx(tmp_path_factory.mktemp("m") / "gemm.onnx")


def _remote(sshd, url="ssh://benchbox", python=sys.executable):
    return RemoteDevice(parse_device(url), RemoteConfig(python=python, ssh_config=sshd["config"], connect_timeout=5))


def test_bench_on_the_device_through_an_ssh_config_alias(sshd, gemm_onnx, write_npz):
    import numpy as np

    rng = np.random.default_rng(1)
    data = write_npz("d.npz", x=rng.standard_normal((16, 4)).astype(np.float32), y=rng.integers(0, 3, 16))
    with _remote(sshd) as dev:
        remote_dir = dev.remote_dir
        report = run_bench([gemm_onnx], BenchConfig(rounds=2, runs=5, warmup=1, data=str(data)), executor=dev,
                           device="ssh://benchbox")
        assert Path(remote_dir).is_dir()  # the device is this machine: the temp dir exists while open
    assert not Path(remote_dir).exists()  # ... and is gone after close
    row = report["results"][0]
    assert row["runs"] == 10 and row["latency_ms"]["median"] > 0 and row["peak_rss_bytes"] > 0
    assert row["eval_samples"] == 16 and 0 <= row["accuracy"] <= 1
    assert row["file_bytes"] == Path(gemm_onnx).stat().st_size
    # The device describes itself with the package's machine.py (copied there): same keys as here.
    assert report["machine"]["cpu"]["isa"] == report["host"]["cpu"]["isa"]
    assert report["machine"]["git"] is None and report["settings"]["device"] == "ssh://benchbox"
    json.dumps(report)


def test_url_with_user_and_port(sshd, gemm_onnx):
    with _remote(sshd, f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}") as dev:
        where = dev.stage([gemm_onnx])
        result = dev.call("measure", {"runtime": "ort", "path": where[gemm_onnx], "runs": 3, "warmup": 0})
    assert len(result["samples_s"]) == 3


def test_cli_bench_on_a_device(sshd, gemm_onnx, cli, tmp_path):
    result = cli("bench", gemm_onnx, "--device", "ssh://benchbox", "--ssh-config", sshd["config"],
                 "--remote-python", sys.executable, "--rounds", "1", "--runs", "3", "--json", "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["settings"]["device"] == "ssh://benchbox" and "on ssh://benchbox" in result.stdout


def test_missing_runtime_on_the_device(sshd, gemm_onnx, tmp_path):
    # A device Python where onnxruntime cannot be imported.
    fake = tmp_path / "python-without-ort"
    fake.write_text(f"""#!/bin/sh
exec {sys.executable} -c 'import runpy, sys; sys.modules["onnxruntime"] = None; sys.argv = sys.argv[1:]; \
runpy.run_path(sys.argv[0], run_name="__main__")' "$@"
""")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with _remote(sshd, python=str(fake)) as dev:
        with pytest.raises(MissingDependencyError, match="onnxruntime is not installed on benchbox; pip install "
                                                         "onnxruntime there"):
            run_bench([gemm_onnx], BenchConfig(rounds=1, runs=1), executor=dev)


def test_missing_python_on_the_device(sshd, gemm_onnx):
    with _remote(sshd, python="/nonexistent/python3") as dev:
        with pytest.raises(RemoteDeviceError, match="not found on benchbox.*--remote-python"):
            dev.describe()


def test_authentication_failure(sshd, tmp_path):
    _keygen(tmp_path / "stranger")
    cfg = tmp_path / "cfg"
    cfg.write_text(Path(sshd["config"]).read_text().replace(f"{sshd['dir']}/id", str(tmp_path / "stranger")))
    dev = RemoteDevice(parse_device("ssh://benchbox"), RemoteConfig(ssh_config=str(cfg)))
    with pytest.raises(RemoteDeviceError, match="authentication to .*benchbox failed.*BatchMode=yes") as info:
        dev.open()
    assert "\n" not in str(info.value)


def test_unreachable_port(sshd):
    dev = RemoteDevice(SshTarget("127.0.0.1", port=_free_port()), RemoteConfig(ssh_config=sshd["config"]))
    with pytest.raises(RemoteDeviceError, match=r"cannot reach ssh://127\.0\.0\.1:\d+ \(.*refused"):
        dev.open()


@pytest.mark.parametrize("url, match", [("pi@host", "not an ssh:// address"), ("ssh://host:99999", "bad port"),
                                        ("ssh://host/path", "nothing after the host")])
def test_bad_device_addresses(url, match):
    with pytest.raises(ConfigError, match=match):
        parse_device(url)


def test_device_address_keeps_alias_case_and_ipv6():
    assert parse_device("ssh://Bench-Box") == SshTarget("Bench-Box")
    assert parse_device("ssh://me@[::1]:2200") == SshTarget("::1", "me", 2200)
    assert str(SshTarget("::1", "me", 2200)) == "ssh://me@[::1]:2200"
