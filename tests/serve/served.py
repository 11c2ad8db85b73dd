"""The tiny CORA (random weights) served by a real Triton server, once per test session.

`served(tmp_path_factory)` writes a model repository (cora.export.triton) from the session's cached tiny
export (tests/export/exported.py) with small request limits, and starts it with `cora serve` (the command
line, in its own process) on free loopback ports. `stop_served()` sends it SIGTERM and checks that it exits 0
and leaves no process behind (tests/serve/conftest.py calls it at the end of the session). A missing or
broken server install fails these tests: nothing here is skipped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.export.exported import runtime_vocabulary

# Small limits, so the tests reach them with small inputs.
LIMITS = {"max_image_bytes": 200_000, "max_image_side": 512, "max_classes": 64}
CACHE_NAMES = 32

_CACHE: dict[str, "Served"] = {}


@dataclass
class Served:
    repository: Path
    process: subprocess.Popen      # `cora serve`
    endpoints: dict[str, str]      # {"http": "127.0.0.1:port", "grpc": ..., "metrics": ...}
    exported: object               # tests.export.exported.Exported: the .onnx files the repository holds


def processes_using(path: Path) -> list[int]:
    """Pids of the processes whose command line names `path` (the server and its model processes)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(path) in cmdline and entry.name != str(os.getpid()):
                pids.append(int(entry.name))
    return pids


def served(tmp_path_factory) -> Served:
    if "served" not in _CACHE:
        from cora.export.triton import Limits, write_repository

        exported = runtime_vocabulary(tmp_path_factory)
        repository = tmp_path_factory.mktemp("triton") / "repo"
        write_repository(repository, exported.path, exported.text_encoder, limits=Limits(**LIMITS),
                         cache_names=CACHE_NAMES)
        process = subprocess.Popen(
            [sys.executable, "-m", "cora", "serve", str(repository), "--http-port", "0", "--grpc-port", "0",
             "--metrics-port", "0", "--log", str(repository.parent / "server.log")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        line = process.stdout.readline()  # "serving REPO: http H:P, grpc H:P, metrics H:P" once ready
        found = dict(re.findall(r"(http|grpc|metrics) (\S+?:\d+)", line))
        if set(found) != {"http", "grpc", "metrics"}:
            process.kill()
            raise RuntimeError(f"`cora serve` did not start: {line!r}\n{process.stderr.read()}")
        _CACHE["served"] = Served(repository, process, found, exported)
    return _CACHE["served"]


def stop_served() -> None:
    """SIGTERM to `cora serve`: it must exit 0 within 30 s and leave no process that uses the repository."""
    s = _CACHE.pop("served", None)
    if s is None:
        return
    s.process.send_signal(signal.SIGTERM)
    try:
        code = s.process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(s.process.pid, signal.SIGKILL)
        raise AssertionError("`cora serve` did not stop within 30 s of SIGTERM")
    deadline = time.monotonic() + 10
    while processes_using(s.repository) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = processes_using(s.repository)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert code == 0, f"`cora serve` exited with {code}: {s.process.stderr.read()}"
    assert not left, f"processes left behind after `cora serve` stopped: {left}"
