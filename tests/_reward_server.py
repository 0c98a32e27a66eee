"""``safe-rl serve-reward`` as a subprocess on a loopback port, for tests: ``from _reward_server import serve_reward``."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from _serve import free_port

REPO = Path(__file__).resolve().parents[1]
TOY_ENV = {
    "SAFE_RL_GUARD_MODEL": "toy:guard",
    "SAFE_RL_HELPFULNESS_MODEL": "toy:helpfulness",
    "SAFE_RL_GUARD_DEVICE": "cpu",
    "SAFE_RL_HELPFULNESS_DEVICE": "cpu",
}


@dataclass
class RewardServer:
    process: subprocess.Popen
    port: int
    log_path: Path
    started: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Poll ``/health`` until ready; return the seconds since the start (raise with the log if it exits)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve-reward exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return time.monotonic() - self.started
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve-reward not ready after {timeout} s:\n{self.log()[-4000:]}")
            time.sleep(0.1)


def command(*args: str, port: int) -> list[str]:
    return [sys.executable, "-m", "safe_rl.cli", "serve-reward", "--port", str(port), *args]


def run_env(**env: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        **TOY_ENV,
        **env,
    }


@contextlib.contextmanager
def serve_reward(tmp_path: Path, *args: str, wait: bool = True, **env: str) -> Iterator[RewardServer]:
    """Start ``safe-rl serve-reward ARGS`` (toy models unless ``env`` says otherwise); stop it on exit."""
    port = free_port()
    log_path = tmp_path / f"serve-reward-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command(*args, port=port), stdout=log, stderr=subprocess.STDOUT, env=run_env(**env))
    server = RewardServer(process=process, port=port, log_path=log_path, started=time.monotonic())
    try:
        if wait:
            server.wait_ready()
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
