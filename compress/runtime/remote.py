"""Measure on a remote device over SSH with the system ``ssh`` / ``scp`` binaries.

Why the binaries and not a Python SSH library: they read ``~/.ssh/config`` (host aliases, ports, users,
identity files, jump hosts) and the user's agent exactly as ``ssh HOST`` does, so a device that answers to
``ssh pi`` answers to ``--device ssh://pi``. Both always run with ``BatchMode=yes``: a password prompt would
hang a benchmark, so authentication must work without one (a key).

A :class:`RemoteDevice` session makes a temporary directory on the device, copies the runner script
(:mod:`compress.runtime._device_runner`, stdlib + numpy + the runtime), ``machine.py`` (so the device describes
itself as this machine would), the artifacts and the data there, runs one fresh device process per measurement
(the same alternation as locally), and deletes the directory when it closes. One SSH connection is shared by
all calls (``ControlMaster``), so a round does not pay a handshake per process.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from compress.errors import CompressError, ConfigError
from compress.runtime.runners import MACHINE_PATH, RUNNER_PATH, error_from_runner, parse_answer


class RemoteDeviceError(CompressError):
    """The device cannot be reached, refuses the login, or cannot run the runner."""

    exit_code = 8


@dataclass(frozen=True)
class SshTarget:
    """Where to connect: ``host`` (a name, an address, or a ``~/.ssh/config`` alias), optional user and port.

    Example:
        >>> str(parse_device("ssh://pi@raspberrypi.local:2222"))
        'ssh://pi@raspberrypi.local:2222'
    """

    host: str
    user: str | None = None
    port: int | None = None

    @property
    def destination(self) -> str:
        """``user@host`` (or ``host``) as ssh takes it."""
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{self.user + '@' if self.user else ''}{host}{':' + str(self.port) if self.port else ''}"


def parse_device(url: str) -> SshTarget:
    """Parse ``ssh://[user@]host[:port]`` (``host`` may be an alias from ``~/.ssh/config``).

    Raises:
        ConfigError: not an ssh:// address, or a bad port.

    Example:
        >>> parse_device("ssh://bench-box")
        SshTarget(host='bench-box', user=None, port=None)
    """
    if not url.startswith("ssh://"):
        raise ConfigError(f"--device {url!r} is not an ssh:// address; use ssh://user@host[:port] or ssh://ALIAS "
                          "from ~/.ssh/config")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"--device {url!r} has a bad port; use ssh://user@host:PORT with PORT in 1..65535") from None
    host = parts.hostname
    if not host or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"--device {url!r} must be ssh://[user@]host[:port] with nothing after the host")
    if port == 0:
        raise ConfigError(f"--device {url!r} has port 0; use ssh://user@host:PORT with PORT in 1..65535")
    # urlsplit lowercases the host; aliases in ~/.ssh/config are case-sensitive, so keep the user's spelling.
    netloc_host = parts.netloc.rsplit("@", 1)[-1]
    if netloc_host.startswith("["):
        host = netloc_host[1:netloc_host.index("]")]
    else:
        host = netloc_host.rsplit(":", 1)[0] if port is not None else netloc_host
    return SshTarget(host=host, user=unquote(parts.username) if parts.username else None, port=port)


@dataclass(frozen=True)
class RemoteConfig:
    """How to reach and run on the device.

    Args:
        python: the interpreter on the device (``--remote-python``); it needs numpy and the runtime.
        ssh_config: an ssh config file passed as ``ssh -F`` (default: the user's ``~/.ssh/config``).
        connect_timeout: seconds ssh waits for the TCP connection.
        timeout: seconds one remote measurement may take.
    """

    python: str = "python3"
    ssh_config: str | None = None
    connect_timeout: int = 10
    timeout: float = 600.0


# ssh's own failures (exit 255) → what happened and what to do. Checked in order against ssh's stderr.
_SSH_FAILURES = (
    (re.compile(r"Permission denied|Too many authentication failures|no matching host key type|"
                r"Authentication failed", re.I),
     "authentication to {dest} failed ({line}); compress runs ssh with BatchMode=yes (no password prompts): "
     "install your key there (ssh-copy-id) or set IdentityFile in ~/.ssh/config"),
    (re.compile(r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED", re.I),
     "ssh does not trust {host}'s host key ({line}); connect once with `ssh {dest}` to check and accept it"),
    (re.compile(r"Could not resolve hostname|Name or service not known|nodename nor servname", re.I),
     "cannot reach {url}: the host name does not resolve ({line}); check the name or the alias in ~/.ssh/config"),
    (re.compile(r"Connection refused|timed out|No route to host|Network is unreachable|Connection reset|"
                r"Connection closed|kex_exchange_identification|Could not resolve|not known", re.I),
     "cannot reach {url} ({line}); check the host, the port and that sshd runs there"),
)


class RemoteDevice:
    """One benchmarking session on a device over SSH; use it as a context manager.

    Args:
        target: the :class:`SshTarget` (see :func:`parse_device`).
        config: a :class:`RemoteConfig`.

    Example:
        >>> with RemoteDevice(parse_device("ssh://pi"), RemoteConfig()) as dev:  # doctest: +SKIP
        ...     where = dev.stage(["model.onnx"])
        ...     result = dev.call("measure", {"runtime": "ort", "path": where["model.onnx"]})
    """

    def __init__(self, target: SshTarget, config: RemoteConfig | None = None):
        self.target = target
        self.config = config or RemoteConfig()
        self.host = target.host
        self.remote_dir: str | None = None
        self._control_dir: str | None = None
        if self.config.ssh_config is not None and not Path(self.config.ssh_config).is_file():
            raise ConfigError(f"ssh config file {self.config.ssh_config} does not exist; check --ssh-config")
        for tool in ("ssh", "scp"):
            if shutil.which(tool) is None:
                raise RemoteDeviceError(f"the `{tool}` command is not installed here; install the OpenSSH client "
                                        "(apt-get install openssh-client)")

    # ------------------------------------------------------------------------------------------ plumbing
    def _options(self) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(self.config.connect_timeout)}"]
        if self.config.ssh_config is not None:
            opts = ["-F", str(self.config.ssh_config), *opts]
        if self._control_dir is not None:
            opts += ["-o", "ControlMaster=auto", "-o", "ControlPersist=120",
                     "-o", f"ControlPath={self._control_dir}/%C"]
        return opts

    def _ssh(self, command: str, *, stdin: str | None = None, timeout: float | None = None,
             what: str = "a command") -> subprocess.CompletedProcess:
        port = ["-p", str(self.target.port)] if self.target.port else []
        cmd = ["ssh", *self._options(), *port, self.target.destination, "--", command]
        try:
            proc = subprocess.run(cmd, input=stdin if stdin is not None else "", capture_output=True, text=True,
                                  timeout=timeout or self.config.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise RemoteDeviceError(f"{what} on {self.target} did not finish within "
                                    f"{timeout or self.config.timeout:g} s; check the device, or lower --runs") from None
        if proc.returncode == 255:
            raise self._ssh_failure(proc.stderr)
        return proc

    def _ssh_failure(self, stderr: str) -> RemoteDeviceError:
        lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip() and not ln.startswith("Warning:")]
        line = lines[-1].rstrip(".") if lines else "ssh exited with status 255"
        fields = {"dest": self.target.destination, "host": self.target.host, "url": str(self.target), "line": line}
        for pattern, message in _SSH_FAILURES:
            if pattern.search(stderr or ""):
                return RemoteDeviceError(message.format(**fields))
        return RemoteDeviceError(f"ssh to {self.target} failed ({line}); check that `ssh {self.target.destination}` "
                                 "works without a password prompt")

    def _scp(self, files: list[tuple[Path, str]]) -> None:
        port = ["-P", str(self.target.port)] if self.target.port else []
        host = f"[{self.target.host}]" if ":" in self.target.host else self.target.host
        dest = f"{self.target.user + '@' if self.target.user else ''}{host}"
        for local, remote_name in files:  # one file per call: the remote name differs from the local one
            cmd = ["scp", "-q", *self._options(), *port, str(local), f"{dest}:{self.remote_dir}/{remote_name}"]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.config.timeout, check=False)
            except subprocess.TimeoutExpired:
                raise RemoteDeviceError(f"copying {local.name} to {self.target} took over {self.config.timeout:g} s; "
                                        "check the connection") from None
            if proc.returncode != 0:
                if proc.returncode == 255 and any(p.search(proc.stderr) for p, _ in _SSH_FAILURES):
                    raise self._ssh_failure(proc.stderr)
                last = (proc.stderr.strip().splitlines() or ["scp failed"])[-1]
                raise RemoteDeviceError(f"cannot copy {local.name} to {self.target}:{self.remote_dir} ({last}); "
                                        "check free space there and that scp/sftp works")

    def _check_command(self, proc: subprocess.CompletedProcess, what: str) -> None:
        if proc.returncode in (126, 127):
            raise RemoteDeviceError(f"{self.config.python} was not found on {self.target.host} ({_last(proc.stderr)}); "
                                    "pass --remote-python /path/to/python3 (with numpy and the runtime installed)")
        if proc.returncode != 0:
            raise RemoteDeviceError(f"{what} failed on {self.target} (exit {proc.returncode}: {_last(proc.stderr)}); "
                                    f"check that `ssh {self.target.destination}` gives a POSIX shell")

    # ------------------------------------------------------------------------------------------- session
    def __enter__(self) -> RemoteDevice:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        """Connect (the first connection becomes the shared master) and create the remote temp directory."""
        # A short local path: the control socket's path must fit in a Unix socket address (~104 bytes).
        self._control_dir = tempfile.mkdtemp(prefix="cb-", dir="/tmp" if os.path.isdir("/tmp") else None)
        try:
            proc = self._ssh('mktemp -d "${TMPDIR:-/tmp}/compress-bench.XXXXXX"', timeout=60 + self.config.connect_timeout,
                             what="creating a temporary directory")
            self._check_command(proc, "creating a temporary directory")
            self.remote_dir = proc.stdout.strip().splitlines()[-1]
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Delete the remote directory, stop the shared connection, remove the local control directory."""
        try:
            if self.remote_dir:
                try:
                    self._ssh(f"rm -rf {shlex.quote(self.remote_dir)}", timeout=60, what="cleaning up")
                except CompressError:
                    pass  # the device went away: nothing more can be cleaned there
                self.remote_dir = None
        finally:
            if self._control_dir is not None:
                port = ["-p", str(self.target.port)] if self.target.port else []
                subprocess.run(["ssh", *self._options(), *port, "-O", "exit", self.target.destination],
                               capture_output=True, timeout=30, check=False)
                shutil.rmtree(self._control_dir, ignore_errors=True)
                self._control_dir = None

    def stage(self, paths: Iterable[str | os.PathLike]) -> dict[str, str]:
        """Copy the runner, machine.py and ``paths`` to the device; returns local path → path on the device."""
        if self.remote_dir is None:
            raise ConfigError("open the RemoteDevice first (use it in a `with` block)")
        files = [(RUNNER_PATH, "_device_runner.py"), (MACHINE_PATH, "machine.py")]
        where: dict[str, str] = {}
        for i, p in enumerate(dict.fromkeys(str(p) for p in paths)):
            name = f"a{i}_{Path(p).name}"
            files.append((Path(p), name))
            where[p] = f"{self.remote_dir}/{name}"
        self._scp(files)
        return where

    def describe(self) -> dict:
        """The device's machine description, as :func:`compress.runtime.machine.machine_description` gives it."""
        return self.call("describe", {})

    def call(self, mode: str, request: Mapping, *, artifact: str | None = None) -> dict:
        """Run the runner on the device once (a fresh process) and return its result."""
        command = f"cd {shlex.quote(self.remote_dir or '.')} && exec {shlex.quote(self.config.python)} " \
                  f"_device_runner.py {shlex.quote(mode)}"
        proc = self._ssh(command, stdin=json.dumps(dict(request)), what=f"the {mode} step")
        if proc.returncode in (126, 127):
            self._check_command(proc, "running the runner")
        try:
            answer = parse_answer(proc.stdout, proc.stderr, proc.returncode)
        except RuntimeError:
            raise RemoteDeviceError(f"the runner on {self.target.host} gave no answer (exit {proc.returncode}: "
                                    f"{_last(proc.stderr)}); check that {self.config.python} there is Python >= 3.8 "
                                    "with numpy, or pass --remote-python") from None
        if not answer["ok"]:
            raise error_from_runner(answer["error"], artifact=artifact, host=self.target.host)
        return answer["result"]


def _last(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no message"
