"""A real Ray head started the way a user starts one (`ray start --head`), with token authentication on and
its own token file, temp dir and ports, so it neither needs nor disturbs other Ray clusters here."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HeadExited(RuntimeError):
    """`ray start` ended before the head answered (for example a chosen port was taken meanwhile)."""


class RayHead:
    """`ray start --head --block` in its own session; stopped by signalling only its own processes."""

    def __init__(self, root: Path):
        self.token_file = root / "token"
        self.token_file.write_text(secrets.token_hex(32))
        self.temp_dir = Path(tempfile.mkdtemp(prefix="submit-test-", dir="/tmp"))  # short: socket paths have a limit
        self.dashboard_port = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        env = {k: v for k, v in os.environ.items() if k not in {"RAY_ADDRESS", "RAY_AUTH_TOKEN"}}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
        command = [
            str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", f"--port={free_port()}", "--num-cpus=2",
            "--num-gpus=2",  # declared, not real: lets the shipped GPU flags schedule (TensorFlow runs on CPU)
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--ray-client-server-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
        ]
        self.log = open(root / "ray-head.log", "wb")
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        try:
            self._wait_ready()
        except RuntimeError:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.token_file.read_text()}"}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise HeadExited(f"ray start exited {self.process.returncode}; see {self.log.name}")
            try:
                if requests.get(f"{self.address}/api/jobs/", headers=headers, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the Ray head did not answer within {timeout} s; see {self.log.name}")

    def stop(self) -> None:
        """What `ray stop` does (SIGTERM, grace period, SIGKILL), but only to this head's own processes."""
        try:
            launcher = psutil.Process(self.process.pid)
            ours = [launcher, *launcher.children(recursive=True)]
        except psutil.NoSuchProcess:
            ours = []
        for process in ours:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(ours, timeout=5)  # some workers ignore SIGTERM
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        self.process.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


HEAD_ATTEMPTS = 3  # free_port() picks ports that another process may bind before the head does


def start_head(root: Path) -> RayHead:
    for attempt in range(1, HEAD_ATTEMPTS + 1):
        folder = root / f"attempt-{attempt}"
        folder.mkdir()
        try:
            return RayHead(folder)
        except HeadExited as err:
            if attempt == HEAD_ATTEMPTS:
                raise
            print(f"{err}: starting the head again on other ports")
    raise AssertionError("unreachable")
