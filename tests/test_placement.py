"""CPU placement (pipelines/placement.py): the plan, and a process pinning itself at start.

Where `riskstream up` puts its real processes is checked end to end in test_cli_up.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from processes import ROOT

from pipelines import placement
from pipelines.errors import RiskstreamError

needs_two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="pinning needs at least two CPUs this process may use")


def test_cpu_lists_read_as_taskset_writes_them():
    assert placement.parse_cpus("3") == {3}
    assert placement.parse_cpus("0,2-4") == {0, 2, 3, 4}
    assert placement.format_cpus(frozenset({4, 0, 2})) == "0,2,4"
    for bad in ("", "one", "2-", "1,,2", "3-1"):
        with pytest.raises(RiskstreamError, match="RISKSTREAM_CPUS"):
            placement.parse_cpus(bad)


def test_each_worker_gets_a_core_of_its_own_only_when_one_is_left_for_the_rest(monkeypatch):
    monkeypatch.setattr(placement, "available", lambda: frozenset({0, 1, 2, 3}))
    one = placement.plan(1)
    assert one.shared == {0, 1, 2} and one.workers == ({3},)
    assert one.worker_env(0) == {"RISKSTREAM_CPUS": "3"}
    three = placement.plan(3)
    assert three.shared == {0} and three.workers == ({1}, {2}, {3})
    assert placement.plan(4) is None  # no core left for the broker, gateways and sink
    assert placement.plan(1, enabled=False) is None  # RISKSTREAM_PIN_WORKERS=false
    monkeypatch.setattr(placement, "available", lambda: None)  # not Linux
    assert placement.plan(1) is None


@needs_two_cpus
def test_a_process_pins_itself_and_its_helpers_go_back_where_it_was(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    own = cpus[-1]
    script = tmp_path / "pinned.py"  # a file: a spawned child imports its main module
    script.write_text(
        "import os, threading, multiprocessing as mp\n"
        "from pipelines import placement\n"
        "early = threading.Thread(target=threading.Event().wait, daemon=True)\n"
        "early.start()  # before the pin: an import's thread pool, say\n"
        "def helper(q):\n"
        "    placement.pin_helper()\n"
        "    q.put(sorted(os.sched_getaffinity(0)))\n"
        "if __name__ == '__main__':\n"
        "    placement.pin(os.environ['RISKSTREAM_CPUS'])\n"
        "    print(sorted(os.sched_getaffinity(0)))\n"
        "    print(sorted(os.sched_getaffinity(early.native_id)))\n"
        "    ctx = mp.get_context('spawn'); q = ctx.Queue()\n"
        "    p = ctx.Process(target=helper, args=(q,)); p.start(); print(q.get()); p.join()\n")
    run = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "RISKSTREAM_CPUS": str(own)})
    assert run.returncode == 0, run.stderr
    pinned, early, helper = run.stdout.splitlines()
    assert pinned == early == str([own])
    assert helper == str(cpus[:-1])  # the worker's gateway is not on the worker's core


def test_cpus_it_may_not_use_are_a_clear_error_at_start():
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "schemas", "--help"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "RISKSTREAM_CPUS": "4096"})
    assert run.returncode == 0  # argparse's help exits before anything runs
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "alerts", "check-rules"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "RISKSTREAM_CPUS": "4096"})
    assert run.returncode == 2
    assert "RISKSTREAM_CPUS=4096: cannot run on those CPUs" in run.stderr
    # a list only partly allowed: the kernel would keep the allowed part, silently
    own = max(os.sched_getaffinity(0))
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "alerts", "check-rules"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "RISKSTREAM_CPUS": f"{own},4096"})
    assert run.returncode == 2
    assert f"RISKSTREAM_CPUS={own},4096: this process may not use CPU 4096" in run.stderr


def test_a_plan_needs_a_worker():
    with pytest.raises(RiskstreamError, match="at least 1"):
        placement.plan(0)
