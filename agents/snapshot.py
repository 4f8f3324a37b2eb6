"""Versioned model snapshots: state as JSON with a manifest, never a pickle of live objects.

A snapshot is a directory entry ``<root>/<name>/<seq>.json.gz`` (the state) with its manifest
``<seq>.manifest.json`` written after it: the manifest is the commit, so a crash mid-write
leaves no snapshot that looks complete. The manifest records what is needed to refuse an
incompatible snapshot instead of silently mis-scoring with it:

- ``format``: the layout of this file (bumped when the layout changes);
- ``model`` and ``state_version``: the class and its state layout;
- ``feature_schema_hash``: a hash of the feature names the model was trained on;
- ``libraries``: riskstream, river and Python versions (informational);
- ``offsets``: the last input offset learned, per ``"stream:partition"``.

Snapshots go to a directory (``RISKSTREAM_MODEL_SNAPSHOT_DIR``): per-card and per-series
state is far larger than a Kafka message. Workers on several hosts point it at shared storage.

Roles
-----
A fraud model's snapshot name is a *slot* that always holds the same model's lineage; which
slot is the champion and which the challenger of a stream is written in ``roles.json`` in the
same directory (``agents/champion.py``)::

    {"transactions": {"champion": "transactions-challenger",
                      "challenger": "transactions-model",
                      "history": [{"at_ms": 1790000000000, "champion": "transactions-challenger",
                                   "challenger": "transactions-model"}]}}

A stream without an entry has the default slots ``<stream>-model`` (champion, the name used
before roles existed) and ``<stream>-challenger``. ``promote`` swaps the two, appends to the
history and rewrites the file atomically (temporary file, fsync, rename) under a lock: a
reader sees the old roles or the new ones, never half a file. Workers only read it, at start:
a running worker keeps writing each model to its own slot, so a promote loses nothing and
takes effect when the worker restarts.
"""

from __future__ import annotations

import fcntl
import gc
import gzip
import hashlib
import json
import logging
import os
import platform
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import orjson

from pipelines import placement
from pipelines.errors import RiskstreamError

log = logging.getLogger(__name__)

# The snapshot writers' niceness: background work that must not take the cores the pipeline
# scores on (bench, a snapshot every 15 s at half load on 2 cores: scored p99 1,244 ms at
# niceness 0, see the README's Speed section).
NICE = 10

FORMAT = 1
KEEP = 3  # snapshots kept per name: the latest and two to roll back to
ROLES_FILE = "roles.json"
ROLES = ("champion", "challenger")
HISTORY_KEEP = 50  # promotions remembered per stream in roles.json


class SnapshotIncompatible(RiskstreamError):
    """A model snapshot was written by an incompatible version of the model.

    Operator action: delete the snapshot directory named in the message to retrain from the
    labels (scores are cold until enough labels arrived), or run the riskstream version that
    wrote it.
    """


class NothingToPromote(RiskstreamError):
    """A promote was asked for a stream whose challenger has no snapshot yet.

    Operator action: enable the challenger (``RISKSTREAM_MODEL_CHALLENGER_ENABLED=true``), let
    the worker write its first snapshot (``riskstream models list`` shows it), then promote.
    """


def default_slots(stream: str) -> dict[str, str]:
    """The snapshot names of a stream's roles before any promote."""
    return {"champion": f"{stream}-model", "challenger": f"{stream}-challenger"}


def feature_schema_hash(names: list[str] | tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


class ForkedWriter:
    """Run snapshot jobs in forked children of the worker: the event loop pauses for the fork
    only, not for copying the state.

    Copying a fraud scorer's state into JSON-able lists took ~13 s per million cards on the
    event loop, per role, every ``snapshot_interval_s`` (1.3 s per 100,000 cards, and ~200
    MiB more in the worker while it was written); the fork of that worker takes ~10 ms. The
    child sees the models as they were at the fork (copy-on-write), builds the state, writes
    it (``SnapshotStore.save``) and exits; the worker goes on scoring. One child per ``key``
    at a time: a job whose previous one is still writing is skipped (logged), and the next
    due one writes the newer state. A failed child is logged by ``reap`` with its exit code;
    the snapshot before it stands (the manifest is written last).

    The child runs the job only, at a lower priority (``NICE``): it leaves the parent's signal
    wake-up descriptor (the worker's event loop reads it), ignores Ctrl-C (the worker takes
    its final snapshots itself), logs how long the job took, and exits with ``os._exit``,
    never running the parent's clean-up. Where the platform has no ``fork`` the job runs in
    the caller.
    """

    def __init__(self) -> None:
        self._children: dict[str, int] = {}  # key -> pid

    def submit(self, key: str, job: Callable[[], object], *, wait: bool = False) -> bool:
        """Run ``job`` in a child; False when ``key``'s previous child is still writing (and
        ``wait`` is False: with it, wait for that one first)."""
        self.reap()
        if key in self._children:
            if not wait:
                log.warning("snapshot %s: the previous one is still being written; skipped "
                            "(writes take longer than the snapshot interval)", key)
                return False
            self.reap(key, block=True)
        if not hasattr(os, "fork"):
            job()
            return True
        pid = os.fork()
        if pid == 0:  # the child: the job, then out
            status = 1
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                gc.disable()  # a collection would touch, so copy, every page of the parent's
                os.nice(NICE)
                placement.pin_helper()  # off the worker's core, when it has one
                started = time.monotonic()
                job()
                log.info("snapshot %s written by process %d in %.1f s", key, os.getpid(),
                         time.monotonic() - started)
                status = 0
            except BaseException:
                log.exception("snapshot %s failed in its writer process", key)
            finally:
                os._exit(status)
        self._children[key] = pid
        return True

    def reap(self, key: str | None = None, *, block: bool = False) -> None:
        """Collect finished children (``key``'s only, if given); ``block``: wait for them."""
        if not self._children:  # the worker's case between snapshots: once per batch
            return
        for k, pid in list(self._children.items()):
            if key is not None and k != key:
                continue
            done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
            if not done:
                continue
            del self._children[k]
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                log.error("snapshot %s: its writer process exited with %s; the previous "
                          "snapshot stands", k, code)

    def wait(self) -> None:
        """Wait until every child has written (shutdown, tests)."""
        self.reap(block=True)

    @property
    def writing(self) -> set[str]:
        return set(self._children)


@dataclass(frozen=True)
class Snapshot:
    manifest: dict
    state: dict


class SnapshotStore:
    """Save and load the snapshots of named models under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _dir(self, name: str) -> Path:
        return self.root / name

    def save(self, name: str, state: dict, *, model: str, state_version: int,
             feature_schema: str, offsets: dict[str, int], extra: dict | None = None) -> Path:
        d = self._dir(name)
        d.mkdir(parents=True, exist_ok=True)
        seq = max((int(p.name.split(".")[0]) for p in d.glob("*.manifest.json")), default=0) + 1
        data_path = d / f"{seq:08d}.json.gz"
        tmp = data_path.with_suffix(".gz.tmp")
        with open(tmp, "wb") as f:
            # level 1: a fraud scorer's 45 MB of JSON in 380 ms to 12.2 MB (level 3: 560 ms,
            # 11.4 MB; level 6: 1.2 s, 10.3 MB), 2026-12-04
            f.write(gzip.compress(orjson.dumps(state, option=orjson.OPT_SERIALIZE_NUMPY), 1))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, data_path)
        manifest = {
            "format": FORMAT, "name": name, "seq": seq, "model": model,
            "state_version": state_version, "feature_schema_hash": feature_schema,
            "offsets": offsets, "created_ms": int(time.time() * 1000),
            "libraries": {"riskstream": _version("riskstream"), "river": _version("river"),
                          "python": platform.python_version()},
            "data": data_path.name, **(extra or {}),
        }
        manifest_path = d / f"{seq:08d}.manifest.json"
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, manifest_path)
        self._prune(d)
        return manifest_path

    def _prune(self, d: Path) -> None:
        manifests = sorted(d.glob("*.manifest.json"))
        for old in manifests[:-KEEP]:
            (d / json.loads(old.read_text())["data"]).unlink(missing_ok=True)
            old.unlink(missing_ok=True)

    def manifests(self, name: str) -> list[dict]:
        """Manifests of ``name``, oldest first."""
        return [json.loads(p.read_text()) for p in sorted(self._dir(name).glob("*.manifest.json"))]

    # ----------------------------------------------------------------------------- roles

    def roles(self) -> dict[str, dict]:
        """Everything in ``roles.json``: stream -> champion, challenger slots and history."""
        path = self.root / ROLES_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def slots(self, stream: str) -> dict[str, str]:
        """The snapshot names of the stream's champion and challenger (defaults if unset)."""
        entry = self.roles().get(stream, {})
        return {role: entry.get(role, default) for role, default in default_slots(stream).items()}

    def promote(self, stream: str, *, now_ms: int | None = None) -> dict:
        """Make the stream's challenger the champion and the champion the challenger.

        Returns the stream's new entry (with ``promoted_ms`` and its history). The worker
        loads the new roles at its next start.

        Raises
        ------
        NothingToPromote
            The challenger's slot holds no snapshot (there is nothing to make champion).
        """
        at_ms = int(time.time() * 1000) if now_ms is None else now_ms
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / (ROLES_FILE + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one promote at a time: read-modify-write
            roles = self.roles()
            old = self.slots(stream)
            if not self.manifests(old["challenger"]):
                raise NothingToPromote(
                    f"{stream}: the challenger {old['challenger']!r} has no snapshot in "
                    f"{self.root}; nothing to promote")
            entry = roles.get(stream, {})
            history = [*entry.get("history", []),
                       {"at_ms": at_ms, "champion": old["challenger"],
                        "challenger": old["champion"]}][-HISTORY_KEEP:]
            roles[stream] = {"champion": old["challenger"], "challenger": old["champion"],
                             "promoted_ms": at_ms, "history": history}
            self._write_roles(roles)
        return roles[stream]

    def _write_roles(self, roles: dict) -> None:
        path = self.root / ROLES_FILE
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(roles, indent=2, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.glob("*") if p.is_dir()) if self.root.exists() else []

    def load(self, name: str, *, model: str, state_version: int,
             feature_schema: str) -> Snapshot | None:
        """The latest snapshot of ``name``; None when there is none.

        Raises
        ------
        SnapshotIncompatible
            The snapshot was written by another model, state layout or feature schema.
        """
        manifests = self.manifests(name)
        if not manifests:
            return None
        m = manifests[-1]
        wanted = {"format": FORMAT, "model": model, "state_version": state_version,
                  "feature_schema_hash": feature_schema}
        wrong = {k: (m.get(k), v) for k, v in wanted.items() if m.get(k) != v}
        if wrong:
            what = ", ".join(f"{k} is {got!r}, this version needs {need!r}"
                             for k, (got, need) in wrong.items())
            raise SnapshotIncompatible(
                f"model snapshot {self._dir(name) / (str(m['seq']).zfill(8) + '.manifest.json')}: "
                f"{what}. Delete {self._dir(name)} to retrain from labels, or run riskstream "
                f"{m.get('libraries', {}).get('riskstream', '?')} which wrote it.")
        state = orjson.loads(gzip.decompress((self._dir(name) / m["data"]).read_bytes()))
        return Snapshot(m, state)
