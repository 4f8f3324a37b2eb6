"""Helpers for tests that run riskstream's real processes: start, wait on conditions, stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pipelines.up import GATEWAY, children  # noqa: F401  (the tests' helpers too)

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def wait_until(condition: Callable[[], T], *, timeout_s: float, what: str,
               interval_s: float = 0.2) -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie is dead for our purpose)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


# One status line of `riskstream up`, every field the user is promised: events in per stream,
# rejected, duplicates, scored, alerts, lake rows, consumer lag per stage (-1: not known yet).
STATUS_LINE = re.compile(
    r"\[ *\d+s\] in: transactions=\d+ applications=\d+ system-metrics=\d+ labels=\d+ \| "
    r"rejected=\d+ dup=\d+ scored=\d+ alerts=\d+ lake_rows=\d+ "
    r"lag: gateway=-?\d+ worker=-?\d+ sink=-?\d+$", re.MULTILINE)


def start_up(run_dir: Path, *, flush_interval_s: float, rate: int = 300,
             args: tuple[str, ...] = (), env: dict[str, str] | None = None
             ) -> tuple[subprocess.Popen, Path, str]:
    """``riskstream up --rate RATE ARGS`` in ``run_dir`` on the embedded defaults (unless
    ``env`` says otherwise), as a user runs it; returns the process, its output file and the
    dashboard URL once it is printed."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
                "RISKSTREAM_LAKE_PATH": str(run_dir / "lake"),
                "RISKSTREAM_STATE_DIR": str(run_dir / "state"), "RISKSTREAM_STATUS_PORT": "0",
                "RISKSTREAM_LAKE_FLUSH_INTERVAL_S": str(flush_interval_s)}
    full_env.pop("RISKSTREAM_KAFKA_BOOTSTRAP", None)
    full_env.update(env or {})
    out_path = run_dir / "up.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "up", "--rate", str(rate), *args],
            cwd=run_dir, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = wait_until(lambda: re.search(r"dashboard +(http://\S+/)", out_path.read_text()),
                         timeout_s=60, what="the dashboard URL").group(1)
    except BaseException:
        proc.kill()
        raise
    return proc, out_path, url


class Process:
    """``python -m pipelines.cli ARGS`` with its own environment and a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env},
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """A crash: SIGKILL, nothing flushed."""
        self.stop(signal.SIGKILL)
