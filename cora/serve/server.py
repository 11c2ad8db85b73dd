"""Triton Inference Server as a child process: find the pinned install, start it on a model repository, wait
until it is ready, stop it with every process it started.

    with TritonServer("repo/", http_port=8000, grpc_port=8001, metrics_port=8002) as server:
        print(server.endpoints())     # {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001", "metrics": ...}

The install (`make build`; pinned in requirements.txt, line "# triton-server:") is `<home>/server`, the
`nvidia-pytriton` wheel without its dependencies (tritonserver 2.51, the Python backend and its stub per
Python version), and `<home>/env`, the Python environment the backend's model processes (stubs) run in: a
venv whose site-packages hold numpy 1.x and then, through a site dir, the project's environment. The stub
was built against numpy 1's array layout: under numpy 2 it returns empty output tensors without an error.
The stub also links libpython: it needs this interpreter's lib folder and the wheel's bundled libraries on
LD_LIBRARY_PATH, and finds its environment from the first `python3` on PATH (<home>/env/bin).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cora.errors import UserError

# Where `make build` installs the server: <this environment>/triton, unless CORA_TRITON_HOME says otherwise.
HOME_VARIABLE = "CORA_TRITON_HOME"


# Error lines of GPU probes that fail harmlessly on a machine without a GPU.
HARMLESS = ("CudaDriverHelper", "NVML", "DCGM")


def triton_home() -> Path:
    return Path(os.environ.get(HOME_VARIABLE) or Path(sys.prefix) / "triton")


@dataclass(frozen=True)
class TritonInstall:
    """The files of one server install (see the module docstring)."""

    binary: Path          # tritonserver
    backend_files: tuple  # the Python backend: libtriton_python.so, triton_python_backend_utils.py, the stub
    libraries: tuple      # folders for LD_LIBRARY_PATH
    env_bin: Path         # bin/ of the stubs' Python environment

    @classmethod
    def find(cls, home: str | os.PathLike | None = None) -> "TritonInstall":
        """The install under `home` (default: `triton_home()`); UserError naming what is missing."""
        home = Path(home) if home is not None else triton_home()
        root = home / "server" / "pytriton" / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        python = root / "backends" / "python"
        install = cls(
            binary=root / "bin" / "tritonserver",
            backend_files=(python / "libtriton_python.so", python / "triton_python_backend_utils.py",
                           root / "python_backend_stubs" / version / "triton_python_backend_stub"),
            libraries=(Path(sysconfig.get_config_var("LIBDIR")), home / "server" / "nvidia_pytriton.libs"),
            env_bin=home / "env" / "bin",
        )
        missing = [p for p in (install.binary, *install.backend_files, *install.libraries, install.env_bin / "python3")
                   if not p.exists()]
        if missing:
            raise UserError(f"Triton Inference Server is not installed under {home} (missing {missing[0]}): run "
                            f"`make build` (it installs the version pinned in requirements.txt), or set "
                            f"{HOME_VARIABLE} to an install")
        return install


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TritonServer:
    """tritonserver on `repository`, HTTP / gRPC / metrics on `host` (loopback by default; port 0 = a free one).

    `start()` returns once the server and every model are ready (or raises UserError with the log's tail);
    `stop()` sends SIGTERM to the server's process group (the server and its model processes), waits, then
    SIGKILL: no process is left behind. Also a context manager. The log is `log_path` (appended to; default: a
    temporary file). `cancelled()` is polled while starting: True stops the server and raises UserError
    (`cora serve` passes its SIGINT / SIGTERM flag)."""

    def __init__(self, repository: str | os.PathLike, host: str = "127.0.0.1", http_port: int = 0,
                 grpc_port: int = 0, metrics_port: int = 0, log_path: str | os.PathLike | None = None,
                 home: str | os.PathLike | None = None, startup_timeout: float = 120.0,
                 cancelled: Callable[[], bool] = lambda: False):
        self.repository = Path(repository).resolve()
        if not (self.repository.is_dir() and any(self.repository.glob("*/config.pbtxt"))):
            raise UserError(f"{repository} is not a Triton model repository (no <model>/config.pbtxt in it): write "
                            "one with `cora export --format triton --out REPO`")
        self.install = TritonInstall.find(home)
        self.host = host
        self.ports = {name: port or free_port(host) for name, port in
                      (("http", http_port), ("grpc", grpc_port), ("metrics", metrics_port))}
        self.startup_timeout = startup_timeout
        self.cancelled = cancelled
        self._workdir = tempfile.TemporaryDirectory(prefix="cora-triton-")
        self.log_path = Path(log_path) if log_path else Path(self._workdir.name) / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    def endpoints(self) -> dict[str, str]:
        return {name: f"{self.host}:{port}" for name, port in self.ports.items()}

    def _command_and_env(self) -> tuple[list[str], dict]:
        # The backend folder Triton expects (<dir>/python/{library, utils, stub}), linked from the install.
        backends = Path(self._workdir.name) / "backends"
        (backends / "python").mkdir(parents=True, exist_ok=True)
        for f in self.install.backend_files:
            link = backends / "python" / f.name
            if not link.exists():
                link.symlink_to(f)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*map(str, self.install.libraries),
                                                  *filter(None, [env.get("LD_LIBRARY_PATH")])])
        env["PATH"] = os.pathsep.join([str(self.install.env_bin), env.get("PATH", "")])
        command = [str(self.install.binary), f"--model-repository={self.repository}",
                   f"--backend-directory={backends}", "--strict-readiness=true", "--exit-on-error=true",
                   f"--http-address={self.host}", f"--grpc-address={self.host}", f"--metrics-address={self.host}",
                   f"--http-port={self.ports['http']}", f"--grpc-port={self.ports['grpc']}",
                   f"--metrics-port={self.ports['metrics']}", "--allow-gpu-metrics=false"]
        return command, env

    def start(self) -> "TritonServer":
        command, env = self._command_and_env()
        try:
            with open(self.log_path, "ab") as log:
                # Its own session: stop() signals the whole group (the server and the model processes it forks).
                self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True)
        except OSError as e:
            raise UserError(f"cannot start tritonserver ({command[0]}, log {self.log_path}): {e.strerror or e}") from None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.cancelled():
                self.stop()
                raise UserError("interrupted while tritonserver was starting; stopped it")
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()  # model processes it may have left
                raise UserError(f"tritonserver exited with code {code} while starting on "
                                f"{self.repository}: {self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise UserError(f"tritonserver was not ready after {self.startup_timeout:.0f} s on {self.repository}: "
                        f"{self.log_tail()}")

    def ready(self) -> bool:
        """GET /v2/health/ready: the server and every model are ready."""
        try:
            with urllib.request.urlopen(f"http://{self.endpoints()['http']}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 5) -> str:
        """The server log's error lines (glog "E..."), else its last lines; at most `lines`, joined by " | "."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        errors = [line for line in text if line.startswith("E") and not any(p in line for p in HARMLESS)]
        return " | ".join((errors or text)[-lines:]).strip()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the process group, SIGKILL after `timeout` s; idempotent."""
        if self.process is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            # The server is gone; its model processes may still be exiting: wait for the whole group.
            if _wait_group_gone(self.process.pid, wait):
                break
        self.process = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._workdir.cleanup()


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    """True once no process is left in group `pgid` (signal 0 probes it), False after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False
