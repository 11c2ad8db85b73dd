"""`cora serve`: run Triton Inference Server on a model repository until SIGINT / SIGTERM.

    cora export --format triton --preset tiny --random-init --out repo/
    cora serve repo/                                  # loopback; HTTP 8000, gRPC 8001, metrics 8002
    cora serve repo/ --host 0.0.0.0 --http-port 9000  # reachable from other machines

Clients: cora.runtime.triton.TritonDetector, or any KServe v2 client (tritonclient). The server is the one
pinned in requirements.txt (cora.serve.server); stopping `cora serve` stops it and every model process.
"""

from __future__ import annotations

import argparse

from cora.cli import common

PORT = common.number(int, 0, 65535)


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a model repository with Triton Inference Server",
                       description="Starts Triton Inference Server on a repository written by `cora export --format "
                                   "triton`, waits until every model is ready, prints the endpoints and runs until "
                                   "SIGINT / SIGTERM (then stops the server and every process it started).")
    p.add_argument("repository", help="the model repository folder (`cora export --format triton --out REPO`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, loopback only)")
    p.add_argument("--http-port", type=PORT, default=8000, help="HTTP/REST port, 0 = a free one (default: 8000)")
    p.add_argument("--grpc-port", type=PORT, default=8001, help="gRPC port, 0 = a free one (default: 8001)")
    p.add_argument("--metrics-port", type=PORT, default=8002, help="Prometheus metrics port, 0 = a free one "
                   "(default: 8002)")
    p.add_argument("--log", default=None, help="server log file, appended to (default: a temporary file, removed on "
                   "exit)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from cora.errors import UserError
    from cora.serve.server import TritonServer

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    common.check_output_file(args.log, "--log")
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    server = TritonServer(args.repository, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, log_path=args.log, cancelled=stop.is_set)
    try:
        with server:
            print(f"serving {server.repository}: " + ", ".join(f"{k} {v}" for k, v in server.endpoints().items()),
                  flush=True)
            while not stop.is_set():
                if server.process.poll() is not None:
                    raise UserError(f"tritonserver exited with code {server.process.returncode}: {server.log_tail()}")
                stop.wait(0.5)
            print("stopping", flush=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
