"""``pipelines/interpreter.py``: ``make`` builds the virtual environment on the fastest Python
3.11 the machine has, and never on one that is not 3.11 or cannot make a venv.

Timings are not asserted (machines are noisy): ``choose`` is given them; the real run only
has to name a usable interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipelines.interpreter import candidates, choose, main, timings, usable

SCRIPT = Path(__file__).resolve().parents[1] / "pipelines" / "interpreter.py"


def _fake_python(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_the_first_interpreter_is_kept_unless_another_is_clearly_faster() -> None:
    # the first is the one on PATH: a user's own choice stands against noise
    assert choose({"/a": 1.00, "/b": 0.97}) == "/a"
    assert choose({"/a": 1.00, "/b": 1.20}) == "/a"
    # a profile-optimised build ~13 % faster wins
    assert choose({"/a": 1.00, "/b": 0.87, "/c": 0.90}) == "/b"
    assert choose({"/a": 1.00}) == "/a"
    # one that could not run the workload (``timings``: infinite) loses to one that could
    assert choose({"/a": float("inf"), "/b": 1.00}) == "/b"


def test_an_interpreter_that_fails_the_workload_is_timed_as_infinitely_slow(tmp_path: Path) -> None:
    # answers the probe like a real 3.11, then fails on the workload
    flaky = _fake_python(tmp_path / "bin", "python3.11",
                         f'case "$2" in *ensurepip*) exec "{sys.executable}" "$@";; esac; exit 1')
    timed = timings([str(flaky), sys.executable], repeats=2)
    assert timed[str(flaky)] == float("inf") and 0 < timed[sys.executable] < float("inf")


def test_candidates_are_every_python3_11_on_path_in_order(tmp_path: Path) -> None:
    first = _fake_python(tmp_path / "a", "python3.11", 'exec "$@"')
    second = _fake_python(tmp_path / "b", "python3.11", 'exec "$@"')
    (tmp_path / "c" / "python3.11").mkdir(parents=True)  # a directory is not an interpreter
    found = candidates(os.pathsep.join(str(tmp_path / d) for d in ("a", "b", "c")))
    assert found[:2] == [str(first), str(second)]
    assert str(tmp_path / "c" / "python3.11") not in found


def test_only_a_real_3_11_that_can_make_a_venv_is_usable(tmp_path: Path) -> None:
    this = os.path.realpath(sys.executable)  # the suite runs on 3.11 (pyproject)
    # a shim, as pyenv's: a script that starts the real interpreter
    shim = _fake_python(tmp_path / "shim", "python3.11", f'exec "{sys.executable}" "$@"')
    # something that answers like another version, and something that is not Python at all
    other = _fake_python(tmp_path / "other", "python3.11", "echo ''")
    broken = _fake_python(tmp_path / "broken", "python3.11", "exit 3")
    missing = tmp_path / "gone" / "python3.11"
    got = usable([str(other), str(broken), str(missing), str(shim), sys.executable])
    assert got == [this]  # the shim and the interpreter itself are one: its real executable


def test_the_script_names_a_usable_python_3_11() -> None:
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                         timeout=300, check=True)
    chosen = run.stdout.strip()
    version = subprocess.run([chosen, "-c", "import sys, venv, ensurepip; "
                              "print(sys.version_info[:2] == (3, 11))"],
                             capture_output=True, text=True, timeout=60, check=True)
    assert version.stdout.strip() == "True"
    if "<- chosen" in run.stderr:  # more than one was timed: it says which, and why
        assert f"{chosen}: " in run.stderr


def _timed_python(directory: Path, seconds: float) -> Path:
    """A stand-in for a Python 3.11 build: it passes the probe as its own real executable and
    "runs" the workload in ``seconds``."""
    return _fake_python(directory, "python3.11",
                        f'case "$2" in *ensurepip*) echo "$0";; *) echo {seconds};; esac')


def test_the_script_builds_on_the_faster_python_and_says_so(tmp_path: Path, capsys) -> None:
    slow = _timed_python(tmp_path / "slow", 0.0146)  # first on PATH, as pyenv's shims are
    fast = _timed_python(tmp_path / "fast", 0.0116)
    assert main(path=f"{slow.parent}{os.pathsep}{fast.parent}", places=()) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(fast)
    assert f"{fast}: 11.6 ms  <- chosen" in out.err and f"{slow}: 14.6 ms" in out.err
    # within the margin, the first on PATH stands
    close = _timed_python(tmp_path / "close", 0.0142)
    assert main(path=f"{slow.parent}{os.pathsep}{close.parent}", places=()) == 0
    assert capsys.readouterr().out.strip() == str(slow)


def test_no_python_3_11_is_an_error_that_says_what_to_do(tmp_path: Path, capsys) -> None:
    lone = _fake_python(tmp_path / "bin", "python3.11", "exit 1")
    assert main(path=str(lone.parent), places=()) == 1
    out = capsys.readouterr()
    assert out.out == "" and "PYTHON=/path/to/python3.11" in out.err


def _make_venv(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "interpreter.py").write_text(SCRIPT.read_text())
    (tmp_path / "Makefile").write_text((SCRIPT.parents[1] / "Makefile").read_text())
    return subprocess.run(["make", ".venv/bin/python", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, check=True)


def _base_of(venv_python: Path) -> str:
    return subprocess.run([str(venv_python), "-c", "import os, sys; "
                           "print(os.path.realpath(sys._base_executable))"],
                          capture_output=True, text=True, timeout=60, check=True).stdout.strip()


def test_make_builds_the_venv_on_the_chosen_python(tmp_path: Path) -> None:
    run = _make_venv(tmp_path)
    assert "choosing the fastest Python 3.11" in run.stdout
    # the venv is built on what the script printed: a real executable (never a shim on PATH)
    used = next(line.split(" -m venv ")[0] for line in run.stdout.splitlines()
                if line.endswith(" -m venv .venv"))
    assert used == os.path.realpath(used) and used in usable(candidates())
    assert _base_of(tmp_path / ".venv" / "bin" / "python") == used


def test_make_takes_the_python_it_is_given(tmp_path: Path) -> None:
    run = _make_venv(tmp_path, f"PYTHON={sys.executable}")
    assert "choosing" not in run.stdout
    assert _base_of(tmp_path / ".venv" / "bin" / "python") == os.path.realpath(
        sys._base_executable)
