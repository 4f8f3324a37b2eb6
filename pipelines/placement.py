"""CPU placement: a core of its own for each worker, the other cores for everything else.

A worker scores on one Python thread (the GIL), and scoring is what limits a worker. Left to
the scheduler, that thread shares its core in slices with the broker, the gateway and the
sink, and moves between cores: each time it comes back to caches the others filled. On the
2-core machine (``riskstream bench --events 200000``, alternating, 2026-12-04): unpinned
9,557-11,289 events/s with the worker at 0.079-0.089 s of CPU per 1,000 events; the worker on
one core and the rest on the other 13,156-18,314 events/s at 0.053-0.075 s, and the broker's
CPU per event down by about a third too; the worker alone pinned (the others still free to
run on its core) 11,726. What is pinned is the exclusivity, not the worker.

``riskstream up`` and ``riskstream bench`` place their processes so when the machine (the
CPUs this process may use) has a core more than there are workers (``RISKSTREAM_PIN_WORKERS``,
on by default): the supervisor, and so every process it starts, moves to the shared cores,
and each worker pins itself to its own at start (``RISKSTREAM_CPUS``, which any riskstream
process obeys: set it by hand, or use the orchestrator's CPU sets, elsewhere). A worker's own
helper processes (its validation gateway, dashboard, reports) go back to the CPUs it had
before it pinned itself (``pin_helper``): they must not take the worker's core.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pipelines.errors import RiskstreamError

# The CPUs a process had before ``pin`` moved it: where its helper processes run. Set in the
# environment, which spawned children inherit, by ``pin``; read by ``pin_helper``.
HELPER_ENV = "RISKSTREAM_HELPER_CPUS"


def parse_cpus(text: str) -> frozenset[int]:
    """``"3"``, ``"0,2"``, ``"0-3"`` or a mix (the ``taskset -c`` / cpuset list format)."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, dash, last = part.strip().partition("-")
            span = range(int(first), int(last if dash else first) + 1)
            if not span:
                raise ValueError(part)
            cpus.update(span)
    except ValueError:
        cpus.clear()
    if not cpus:
        raise RiskstreamError(f"RISKSTREAM_CPUS: not a CPU list like 1 or 0,2-3: {text!r}")
    return frozenset(cpus)


def format_cpus(cpus: frozenset[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def available() -> frozenset[int] | None:
    """The CPUs this process may run on; None where the OS cannot say (not Linux)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    return frozenset(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Placement:
    shared: frozenset[int]             # the supervisor and everything but the workers
    workers: tuple[frozenset[int], ...]

    def worker_env(self, i: int) -> dict[str, str]:
        """The environment that pins worker ``i`` (read by ``pin`` at its start)."""
        return {"RISKSTREAM_CPUS": format_cpus(self.workers[i])}

    def describe(self) -> str:
        own = ", ".join(format_cpus(c) for c in self.workers)
        return (f"worker{'s' if len(self.workers) > 1 else ''} on CPU {own}, everything "
                f"else on CPU {format_cpus(self.shared)}")


def plan(workers: int, *, enabled: bool = True) -> Placement | None:
    """The last ``workers`` CPUs available, one per worker, the others shared; None when off,
    or without a CPU left over for the rest (then nothing is pinned)."""
    if workers < 1:
        raise RiskstreamError(f"workers: at least 1, not {workers}")
    cpus = available()
    if not enabled or cpus is None or len(cpus) < workers + 1:
        return None
    ordered = sorted(cpus)
    return Placement(frozenset(ordered[:-workers]),
                     tuple(frozenset({c}) for c in ordered[-workers:]))


def take_shared(placement: Placement) -> frozenset[int]:
    """Move this process (the supervisor) to the shared CPUs, before it starts anything: its
    children inherit them (and not a ``RISKSTREAM_CPUS`` it was started with: only workers
    get one, ``worker_env``). Returns the CPUs it had, for ``restore``."""
    before = frozenset(os.sched_getaffinity(0))
    _run_on(placement.shared)
    os.environ.pop("RISKSTREAM_CPUS", None)
    os.environ.pop(HELPER_ENV, None)
    return before


def restore(cpus: frozenset[int]) -> None:
    _run_on(cpus)


def pin(cpus_text: str | None) -> None:
    """At a process's start, before it starts threads (they inherit it): run on
    ``RISKSTREAM_CPUS`` when set; its helper processes will run where it ran before, less
    those CPUs (all of it, when that leaves none)."""
    if not cpus_text:
        return
    cpus = parse_cpus(cpus_text)
    if available() is None:
        raise RiskstreamError("RISKSTREAM_CPUS is set, but this OS cannot pin a process")
    before = frozenset(os.sched_getaffinity(0))
    try:
        _run_on(cpus)
    except OSError as exc:
        raise RiskstreamError(f"RISKSTREAM_CPUS={cpus_text}: cannot run on those CPUs "
                              f"(this process may use {format_cpus(before)}): {exc}") from None
    if (got := frozenset(os.sched_getaffinity(0))) != cpus:
        # the kernel keeps the CPUs of a list that the process's CPU set (a container's
        # cpuset) allows, and fails only when none are
        _run_on(before)
        raise RiskstreamError(f"RISKSTREAM_CPUS={cpus_text}: this process may not use CPU "
                              f"{format_cpus(cpus - got)} (it may use {format_cpus(before)})")
    os.environ[HELPER_ENV] = format_cpus((before - cpus) or before)


def pin_helper() -> None:
    """At a worker's helper process's start (a spawned gateway, dashboard or report, the
    forked snapshot writer): off the worker's core (see ``pin``)."""
    cpus = os.environ.get(HELPER_ENV)
    if cpus and available() is not None:
        _run_on(parse_cpus(cpus))


def _run_on(cpus: frozenset[int]) -> None:
    """Move this process to ``cpus``: the calling thread (``OSError`` if it may use none of
    them), whose new threads inherit it, then the threads it already has (an import may have
    started some, a numerical library's pool, say)."""
    os.sched_setaffinity(0, cpus)
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return
    for tid in threads:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:  # ended meanwhile
            pass
