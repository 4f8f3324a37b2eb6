"""Which Python 3.11 to build the virtual environment on: the fastest one the machine has.

The same code scores ~13 % more events per CPU second on a profile-guided, link-time-
optimised build of CPython (Debian's ``/usr/bin/python3.11``, 3.11.2, statically linked; the
official ``python:3.11`` images are built so too) than on one built without them (pyenv's
default: 3.11.7, shared ``libpython``, no PGO or LTO): the scoring path alone,
``RISKSTREAM_CPUS=1 python -m pipelines.bench_scoring 60000``, five runs alternating, median
38,247 against 33,596 events per CPU second (2026-12-04, pairwise 1.12x-1.24x but one 0.98x);
the whole worker in ``riskstream bench --events 200000``, ~8 % more events a second; Faust's
count-only agent, 1.27x and 1.23x. Nothing in a build's ``sysconfig`` says reliably whether it
was profile-optimised (Debian's does not), so the interpreters are timed instead.

``python3 pipelines/interpreter.py`` (``make``, before the virtual environment exists) prints
the chosen interpreter's path; what it timed goes to stderr. Standard library only, and no
import of the package: it runs before anything is installed.

The rule: the candidates are every ``python3.11`` on ``PATH`` (in ``PATH`` order, so the
first is the one a user would get), ``python3`` if it is 3.11, and the usual system places;
one counts only if it is 3.11 and can create a virtual environment with pip (``venv`` and
``ensurepip``: Debian splits them into ``python3.11-venv``). The first candidate is kept unless
another is faster by more than ``MARGIN`` on a fixed pure-Python workload (the best of
``REPEATS`` runs of each, interleaved: noise moves single runs by more than 10 % here).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

MARGIN = 0.05
REPEATS = 7
SYSTEM_PLACES = ("/usr/bin/python3.11", "/usr/local/bin/python3.11")

# What an interpreter reports of itself: its real executable (a pyenv or asdf shim is a
# script that starts another; /bin is /usr/bin on most systems now), if it is 3.11 and can
# make a venv with pip.
_PROBE = """
import os, sys
try:
    import ensurepip, venv
    ok = sys.version_info[:2] == (3, 11)
except ImportError:
    ok = False
print(os.path.realpath(sys.executable) if ok else "")
"""

# A small copy of what the worker does per event: calls, attribute and dict access, float
# arithmetic with math functions, small lists and tuples, string formatting. Prints seconds.
_WORKLOAD = """
import math, time
class State:
    __slots__ = ("n", "s", "t")
    def __init__(self, t):
        self.n, self.s, self.t = 0.0, 0.0, t
def update(states, key, t, x):
    st = states.get(key)
    if st is None:
        st = states[key] = State(t)
    d = math.exp(-(t - st.t) / 60_000.0) if t > st.t else 1.0
    st.n = st.n * d + 1.0
    st.s = st.s * d + x
    st.t = t
    mean = st.s / st.n
    return [math.log1p(x), st.n, mean, (x - mean) / math.sqrt(mean * mean + 1.0)]
def run(n):
    states, out = {}, 0.0
    for i in range(n):
        v = update(states, f"card-{i % 997}", i * 37, (i * 7919 % 1000) / 10.0)
        out += sum(v) if v[1] > 0.5 else 0.0
    return out
t0 = time.perf_counter()
run(20_000)
print(time.perf_counter() - t0)
"""


def candidates(path: str | None = None, places: tuple[str, ...] = SYSTEM_PLACES) -> list[str]:
    """The interpreters to consider, in the order a user would meet them, not yet checked
    (``path``: a ``PATH``, by default this process's)."""
    found: list[str] = []
    dirs = (os.environ.get("PATH", "") if path is None else path).split(os.pathsep)
    for d in dirs:
        exe = os.path.join(d, "python3.11")
        if d and os.access(exe, os.X_OK) and not os.path.isdir(exe):
            found.append(exe)
    python3 = shutil.which("python3", path=path)
    if python3:
        found.append(python3)
    found += [p for p in places if os.access(p, os.X_OK)]
    return found


def usable(candidates_: list[str]) -> list[str]:
    """The distinct real interpreters among the candidates that are 3.11 and can make a venv
    with pip, in the candidates' order."""
    out: list[str] = []
    for exe in candidates_:
        try:
            probe = subprocess.run([exe, "-c", _PROBE], capture_output=True, text=True,
                                   timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        real = probe.stdout.strip() if probe.returncode == 0 else ""
        if real and real not in out:
            out.append(real)
    return out


def timings(pythons: list[str], repeats: int = REPEATS) -> dict[str, float]:
    """The best of ``repeats`` runs of the workload, seconds, per interpreter (interleaved:
    a burst of noise hits all of them alike); infinite for one that fails to run it."""
    best = dict.fromkeys(pythons, float("inf"))
    failed: set[str] = set()
    for _ in range(repeats):
        for exe in pythons:
            if exe in failed:
                continue
            try:
                out = subprocess.run([exe, "-c", _WORKLOAD], capture_output=True, text=True,
                                     timeout=120, check=True)
                best[exe] = min(best[exe], float(out.stdout))
            except (OSError, ValueError, subprocess.SubprocessError):
                failed.add(exe)
                best[exe] = float("inf")
    return best


def choose(timed: dict[str, float], margin: float = MARGIN) -> str:
    """The first interpreter (a user's own choice, by ``PATH``) unless another is faster by
    more than ``margin`` (or the first could not run the workload); then the fastest."""
    first = next(iter(timed))
    fastest = min(timed, key=timed.__getitem__)
    return fastest if timed[fastest] < timed[first] * (1.0 - margin) else first


def describe() -> dict:
    """The running interpreter, for benchmark reports: figures from two builds differ."""
    import platform
    import sysconfig

    # the interpreter itself, not a venv's link to it
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    return {"version": platform.python_version(), "executable": base,
            "implementation": platform.python_implementation(),
            "compiler": platform.python_compiler(),
            "configure": sysconfig.get_config_var("CONFIG_ARGS") or ""}


def main(path: str | None = None, places: tuple[str, ...] = SYSTEM_PLACES) -> int:
    pythons = usable(candidates(path, places))
    if not pythons:
        print("no Python 3.11 that can create a virtual environment: install python3.11 "
              "(and on Debian or Ubuntu python3.11-venv), or set PYTHON=/path/to/python3.11",
              file=sys.stderr)
        return 1
    if len(pythons) == 1:
        print(pythons[0])
        return 0
    timed = timings(pythons)
    chosen = choose(timed)
    for exe, seconds in timed.items():
        mark = "  <- chosen" if exe == chosen else ""
        print(f"  {exe}: {seconds * 1000:.1f} ms{mark}", file=sys.stderr)
    print(chosen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
