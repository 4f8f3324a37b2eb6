"""Silences: operator decisions to mute matching alerts until an expiry.

Stored as one JSON file (``RISKSTREAM_ALERT_SILENCES_PATH``, default
``<state_dir>/silences.json``), written atomically under an exclusive lock by
``riskstream alerts silence`` and read by the dispatcher whenever the file changes. A file, not
a topic: silences are a handful of operator records, they must be readable and editable where
the dispatcher runs without a broker, and `alerts list` shows them without Kafka. A silenced
alert is recorded on ``alert-deliveries`` with outcome ``silenced`` (nothing is lost: it is in
the ``alerts`` table too), not sent.

Matchers are ``label=value`` (exact) or ``label=~regex`` (full match) against the alert's
labels and its columns (rule, entity, severity, stream). Times are wall clock: silences are
operator time.

Examples
--------
>>> s = Silence.create(["rule=metric_anomaly", "entity=~web-.*"], duration_ms=3_600_000,
...                    comment="deploy", created_by="ops", now_ms=0)
>>> s.matches({"rule": "metric_anomaly", "entity": "web-1/cpu"}, now_ms=10)
True
>>> s.matches({"rule": "metric_anomaly", "entity": "db-1/cpu"}, now_ms=10)
False
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from pipelines.errors import RiskstreamError


class SilenceError(RiskstreamError):
    """A silence could not be created or read.

    Operator action: matchers are ``label=value`` or ``label=~regex``; durations like 2h.
    """


def parse_matcher(text: str) -> tuple[str, str, str]:
    """``"rule=x"`` -> ``("rule", "=", "x")``; ``"entity=~web-.*"`` -> ``("entity", "=~", ...)``."""
    found = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!=|=)\s*(.*?)\s*", text)
    if not found:
        raise SilenceError(f"matcher {text!r}: expected label=value or label=~regex")
    name, op, value = found.groups()
    if op == "=~":
        try:
            re.compile(value)
        except re.error as exc:
            raise SilenceError(f"matcher {text!r}: bad regex: {exc}") from None
    return name, op, value


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Silence:
    silence_id: str
    matchers: tuple[tuple[str, str, str], ...]
    starts_at: int
    ends_at: int
    comment: str = ""
    created_by: str = ""

    @classmethod
    def create(cls, matchers: list[str], *, duration_ms: int, comment: str = "",
               created_by: str = "", now_ms: int | None = None) -> Silence:
        if not matchers:
            raise SilenceError("a silence needs at least one matcher (e.g. --matcher rule=NAME)")
        if duration_ms <= 0:
            raise SilenceError("duration must be > 0")
        now = _now_ms() if now_ms is None else now_ms
        parsed = tuple(parse_matcher(m) for m in matchers)
        sid = hashlib.sha1(orjson.dumps([parsed, now, comment])).hexdigest()[:12]
        return cls(sid, parsed, now, now + duration_ms, comment, created_by)

    def active(self, now_ms: int) -> bool:
        return self.starts_at <= now_ms < self.ends_at

    def matches(self, labels: dict, now_ms: int | None = None) -> bool:
        if not self.active(_now_ms() if now_ms is None else now_ms):
            return False
        for name, op, value in self.matchers:
            have = labels.get(name)
            have = "" if have is None else str(have)
            if op == "=" and have != value:
                return False
            if op == "!=" and have == value:
                return False
            if op == "=~" and not re.fullmatch(value, have):
                return False
        return True

    def to_json(self) -> dict:
        return {**asdict(self), "matchers": [list(m) for m in self.matchers]}

    @classmethod
    def from_json(cls, d: dict) -> Silence:
        return cls(d["silence_id"], tuple(tuple(m) for m in d["matchers"]), d["starts_at"],
                   d["ends_at"], d.get("comment", ""), d.get("created_by", ""))


def alert_labels(alert: dict) -> dict:
    """What matchers see: the alert's labels plus its rule, entity, severity, stream, status."""
    labels = alert.get("labels") or {}
    if isinstance(labels, str):
        try:
            labels = orjson.loads(labels)
        except orjson.JSONDecodeError:
            labels = {}
    return {**labels, **{k: alert.get(k) for k in ("rule", "entity", "severity", "stream",
                                                     "status", "alert_id", "incident_id")}}


class SilenceStore:
    """The silences file; ``match(alert)`` re-reads it when it changed."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._mtime: float | None = None
        self._silences: list[Silence] = []

    def _read(self) -> list[Silence]:
        try:
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, orjson.JSONDecodeError) as exc:
            raise SilenceError(f"silences file {self.path} unreadable: {exc}") from None
        return [Silence.from_json(d) for d in data.get("silences", [])]

    def all(self) -> list[Silence]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime != self._mtime:
            self._silences = self._read()
            self._mtime = mtime
        return list(self._silences)

    def match(self, alert: dict, now_ms: int | None = None) -> Silence | None:
        labels = alert_labels(alert)
        now = _now_ms() if now_ms is None else now_ms
        return next((s for s in self.all() if s.matches(labels, now)), None)

    def _update(self, change) -> list[Silence]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            silences = change(self._read())
            # Expired more than a week ago: forgotten, so the file stays small.
            keep = [s for s in silences if s.ends_at > _now_ms() - 7 * 86_400_000]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps({"silences": [s.to_json() for s in keep]},
                                         option=orjson.OPT_INDENT_2))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        return keep

    def add(self, silence: Silence) -> Silence:
        self._update(lambda ss: [s for s in ss if s.silence_id != silence.silence_id] + [silence])
        return silence

    def expire(self, silence_id: str, now_ms: int | None = None) -> bool:
        now = _now_ms() if now_ms is None else now_ms
        found = []

        def change(ss: list[Silence]) -> list[Silence]:
            out = []
            for s in ss:
                if s.silence_id == silence_id and s.ends_at > now:
                    found.append(s)
                    s = Silence(s.silence_id, s.matchers, s.starts_at, now, s.comment, s.created_by)
                out.append(s)
            return out

        self._update(change)
        return bool(found)
