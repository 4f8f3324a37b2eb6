"""Alert rules over the scored streams: the rule engine of the worker.

``AlertEngine`` evaluates the rules of a :class:`~agents.rules.RuleSet` (``agents/rules.py``)
on every scored record and at every batch end, and hands what holds to the lifecycle
(``agents/lifecycle.py``: firing, resolved, grouping, cooldown, inhibition). What comes out are
alert records of the ``alerts`` topic (``schemas/outputs.py`` ALERT) that explain themselves:
the rule and its condition, the observed value against the threshold, the window and the count
it was computed on, the top reasons (the model's reason codes, or the rule's inputs), a link to
the dashboard and a ready ClickHouse query for the affected rows.

- threshold rules are checked on each record; the alert key is ``rule|entity``;
- rate and quantile rules keep incremental counts in event-time buckets (a fifth of the
  window) per group and are evaluated when the stream's watermark (largest event time minus the
  grace period) closes a bucket: hopping windows, never the wall clock;
- alert ids are deterministic: a hash of the rule and the triggering event id (threshold) or
  the group and window end (rate, quantile), so a replayed event gives the same id.

State is JSON, kept per input partition (``to_state(slice)``), as the window aggregates are.
Limit: a rate over a group whose events arrive on several partitions is computed from the
partitions this worker holds (exact with one worker; with N workers, each sees its share).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import urllib.parse
from collections.abc import Iterable
from functools import partial
from itertools import islice
from typing import NamedTuple

import orjson

from agents.lifecycle import Lifecycle
from agents.rules import Rule, RuleSet


def alert_id(rule: str, event_id: str) -> str:
    return hashlib.sha1(f"{rule}:{event_id}".encode()).hexdigest()[:20]


# Where the rows behind an alert are: table and the columns that identify the entity.
_TABLES = {"transactions": ("scored_transactions", ("card_id",)),
           "applications": ("scored_applications", ("applicant_id",)),
           "system-metrics": ("metric_samples", ("host", "metric"))}
# Record columns copied into an alert's labels (for routing, grouping, inhibition).
_LABEL_COLUMNS = {"transactions": ("merchant_id", "country", "channel"),
                  "applications": ("product",),
                  "system-metrics": ("host", "service", "metric")}
# Quantile rules: values binned on a log scale, 2% wide: p95 within ~1% of the exact value,
# and a window's histogram is a small mergeable dict, not a list of samples.
_GAMMA = 1.02
_LOG_GAMMA = math.log(_GAMMA)


def sql_literal(value: object) -> str:
    """A ClickHouse string literal: quotes and backslashes escaped.

    >>> sql_literal("o'brien\\\\")
    "'o\\\\'brien\\\\\\\\'"
    """
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ts(ms: int) -> str:
    text = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return f"toDateTime64('{text}', 3, 'UTC')"


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat(timespec="seconds")


def _duration(ms: int) -> str:
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _bin(value: float) -> str:
    return "z" if value <= 0 else str(math.ceil(math.log(value) / _LOG_GAMMA))


def _unbin(key: str) -> float:
    return 0.0 if key == "z" else _GAMMA ** (int(key) - 0.5)


def quantile_of(hist: dict[str, int], q: float) -> float | None:
    total = sum(hist.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for key in sorted(hist, key=lambda k: -math.inf if k == "z" else int(k)):
        seen += hist[key]
        if seen >= rank:
            return _unbin(key)
    return None


class _Plan(NamedTuple):
    """What ``AlertEngine.observe`` reads of a rule for every record."""

    rule: Rule
    where: bool                             # it looks at some records only (``selects``)
    group: tuple[str, ...]                  # rate, quantile: the columns of a group
    size: int                               # rate, quantile: the bucket (0: threshold)

    @classmethod
    def of(cls, rule: Rule) -> _Plan:
        window = rule.kind != "threshold"
        return cls(rule, bool(rule.where), rule.group,
                   rule.bucket_ms if window else 0)


class AlertEngine:
    """Evaluate a rule set on scored records; return alert records to publish.

    Examples
    --------
    >>> from agents.rules import parse_rules
    >>> rules = parse_rules('''
    ... rules:
    ...   - {name: hot, kind: threshold, stream: transactions, field: score, op: ">=", value: 0.9}
    ... ''')
    >>> engine = AlertEngine(rules)
    >>> rec = {"event_id": "e1", "event_time": 0, "card_id": "c1", "score": 0.95, "reasons": ["new_country"]}
    >>> [a["status"] for a in engine.observe("transactions", rec, "c1", 0)]
    ['firing']
    >>> engine.observe("transactions", {**rec, "event_id": "e2"}, "c1", 0)  # still firing
    []
    """

    # Groups of a rule evaluated per tick at most (~3 us each) once the watermark enters a new
    # window: the rest on the next ticks, a batch or two later in event time. After the
    # backlog of `riskstream bench`, one tick evaluated ~2,000 merchants' windows (~10 ms).
    groups_per_tick = 1000

    def __init__(self, rules: RuleSet, *, dashboard_url: str = "", grace_ms: int = 10_000,
                 max_groups: int = 100_000) -> None:
        self.dashboard_url = dashboard_url.rstrip("/")
        self.grace_ms = grace_ms
        self.max_groups = max_groups
        self.rules = rules
        self.lifecycle = Lifecycle(rules.inhibit)
        # (rule, group) -> slice -> bucket start -> [matched, total] | {"n": count, "h": hist}
        self._buckets: dict[tuple[str, str], dict[str, dict[int, object]]] = {}
        # (rule, group) -> end of the last evaluated window
        self._evaluated: dict[tuple[str, str], int] = {}
        # slice -> largest event time seen; slice -> stream
        self._max_event: dict[str, int] = {}
        self._stream_of: dict[str, str] = {}
        # rule -> late groups counted since its last tick, and the watermark's window index
        # then: a tick evaluates every group of a rule only when the watermark entered a new
        # window (only then can a window close), otherwise just the groups of late records.
        self._touched: dict[str, set[tuple[str, str]]] = {}
        self._ticked: dict[str, int] = {}
        # rule -> its groups still to evaluate since the watermark entered a new window:
        # ``groups_per_tick`` of them per tick, so that a rule over every merchant does not
        # evaluate them all in one batch (each batch's events wait for its tick)
        self._queued: dict[str, dict[tuple[str, str], None]] = {}
        self.set_rules(rules)

    def set_rules(self, rules: RuleSet) -> None:
        """Apply a new rule set; alerts and windows of rules that still exist keep their state."""
        self.rules = rules
        self._by_stream: dict[str, list[Rule]] = {}
        for rule in rules.rules:
            self._by_stream.setdefault(rule.stream, []).append(rule)
        # per stream, what ``observe`` needs of each rule, read once here and not per record
        self._plans = {stream: tuple(_Plan.of(rule) for rule in stream_rules)
                       for stream, stream_rules in self._by_stream.items()}
        self._by_name = {r.name: r for r in rules.rules}
        self.lifecycle.inhibit = rules.inhibit
        self.lifecycle.forget_rules(set(self._by_name))
        for key in [k for k in self._buckets if k[0] not in self._by_name]:
            del self._buckets[key]
            self._evaluated.pop(key, None)
        self._touched.clear()
        self._ticked.clear()  # the next tick evaluates every group of every rule
        self._queued.clear()

    # -- per record ------------------------------------------------------------------------

    def observe(self, stream: str, record: dict, entity: str, created_at_ms: int,
                slice_: str = "") -> list[dict]:
        """One scored record: threshold rules fire now; rate and quantile rules count it."""
        t = record["event_time"]
        self._stream_of[slice_] = stream
        clock = self._max_event.get(slice_, -1)
        if t > clock:
            self._max_event[slice_] = clock = t
        out: list[dict] = []
        get = record.get
        for plan in self._plans.get(stream, ()):  # per record and rule: the hot path
            rule, where, _, size = plan
            if where and not rule.selects(record):
                continue
            if size:
                self._count(plan, record, t, slice_, clock)
                continue
            observed = get(rule.field)
            if rule.compare(observed):
                out += self.lifecycle.activate(
                    f"{rule.name}|{entity}", t,
                    partial(self._threshold_alert, rule, record, entity, observed,
                            created_at_ms), stream=stream,
                    resolve_after_ms=rule.resolve_after_ms, cooldown_ms=rule.cooldown_ms,
                    slice_=slice_)
        return out

    def _count(self, plan: _Plan, record: dict, t: int, slice_: str, clock: int) -> None:
        # Per record and rule: lookups before inserts, no throwaway dicts. ``clock``: the
        # largest event time of the slice.
        rule, _, columns, size = plan
        if not columns:
            group = "all"
        elif len(columns) == 1:
            group = str(record.get(columns[0])) or "all"
        else:
            group = "/".join([str(record.get(c)) for c in columns]) or "all"
        key = (rule.name, group)
        slices = self._buckets.get(key)
        if slices is None and len(self._buckets) >= self.max_groups:
            return
        start = t - t % size
        done = self._evaluated.get(key)
        if done is not None and start + size <= done:
            return  # late for windows already evaluated (its raw row is in the lake)
        if slices is None:
            slices = self._buckets[key] = {}
        buckets = slices.get(slice_)
        if buckets is None:
            buckets = slices[slice_] = {}
        if start + size <= clock - self.grace_ms:
            # A late record whose window may already be due: the next tick looks at this
            # group. On-time records need no look until the watermark enters a new window.
            touched = self._touched.get(rule.name)
            if touched is None:
                touched = self._touched[rule.name] = set()
            touched.add(key)
        b = buckets.get(start)
        if rule.kind == "rate":
            if b is None:
                b = buckets[start] = [0, 0]
            if rule.matches(record):
                b[0] += 1
            b[1] += 1
        else:
            value = record.get(rule.field)
            if value is None:
                return
            if b is None:
                b = buckets[start] = {"n": 0, "h": {}}
            b["n"] += 1
            k = _bin(float(value))
            b["h"][k] = b["h"].get(k, 0) + 1

    # -- per batch -------------------------------------------------------------------------

    def watermark(self, stream: str) -> int | None:
        times = [t for s, t in self._max_event.items() if self._stream_of.get(s) == stream]
        return max(times) - self.grace_ms if times else None

    def tick(self, stream: str, created_at_ms: int) -> list[dict]:
        """The batch is done: evaluate the windows the watermark closed, resolve what went
        quiet. Call once per batch (the worker calls it where aggregates are emitted)."""
        wm = self.watermark(stream)
        if wm is None:
            return []
        out: list[dict] = []
        for rule in self._by_stream.get(stream, ()):
            if rule.kind == "threshold":
                continue
            touched = self._touched.pop(rule.name, set())
            index = wm // rule.bucket_ms
            queued = self._queued.get(rule.name, {})  # an ordered set
            left: dict[tuple[str, str], None] = {}
            if self._ticked.get(rule.name) != index:
                self._ticked[rule.name] = index
                # any left from the window before go now, all: never a window late (too few
                # ticks per window to share them out, a quiet stream's, is the old way); a
                # group forgotten meanwhile (``forget_slice``) is skipped when evaluated
                left = queued
                queued = self._queued[rule.name] = dict.fromkeys(
                    k for k in self._buckets if k[0] == rule.name and k not in left)
            now = list(islice(queued, self.groups_per_tick))
            for k in now:
                del queued[k]
            if left or now:
                # (a late group may be queued too: its second evaluation finds nothing due)
                touched = [*left, *now, *touched]
            out += self._evaluate_windows(rule, wm, created_at_ms, touched)
        return out + self.lifecycle.advance({stream: wm}, created_at_ms, self._describe_resolved)

    def _evaluate_windows(self, rule: Rule, wm: int, created_at_ms: int,
                          keys: Iterable[tuple[str, str]]) -> list[dict]:
        """Close the windows of ``keys`` (groups of ``rule``) that end at or before ``wm``."""
        out: list[dict] = []
        size = rule.bucket_ms
        for key in keys:
            slices = self._buckets.get(key)
            if slices is None:
                continue
            starts = [s for buckets in slices.values() for s in buckets]
            last = self._evaluated.get(key)
            first_end = (min(starts) + size) if starts else None
            if last is None and first_end is None:
                continue
            end = last + size if last is not None else first_end
            # After a long gap only the latest windows can hold anything.
            end = max(end, (wm - rule.window_ms) // size * size)
            while end <= wm:
                out += self._evaluate_window(rule, key, end, created_at_ms)
                self._evaluated[key] = end
                end += size
            if key in self._evaluated:  # buckets no later window will cover
                next_start = self._evaluated[key] + size - rule.window_ms
                for buckets in slices.values():
                    for s in [s for s in buckets if s < next_start]:
                        del buckets[s]
            if not any(slices.values()) and self.lifecycle.status(
                    f"{rule.name}|{key[1]}") != "firing":
                del self._buckets[key]
                self._evaluated.pop(key, None)
        return out

    def _evaluate_window(self, rule: Rule, key: tuple[str, str], end: int,
                         created_at_ms: int) -> list[dict]:
        start = end - rule.window_ms
        inside = [b for buckets in self._buckets[key].values()
                  for s, b in buckets.items() if start <= s < end]
        if rule.kind == "rate":
            matched = sum(b[0] for b in inside)
            count = sum(b[1] for b in inside)
            observed = matched / count if count else None
        else:
            count = sum(b["n"] for b in inside)
            hist: dict[str, int] = {}
            for b in inside:
                for k, n in b["h"].items():
                    hist[k] = hist.get(k, 0) + n
            observed = quantile_of(hist, rule.q)
            matched = None
        if count < rule.min_count or not rule.compare(observed):
            return []
        alert = partial(self._window_alert, rule, key[1], start, end, observed, count, matched,
                        created_at_ms)
        stream = rule.stream
        slice_ = next(iter(self._buckets[key]))
        return self.lifecycle.activate(f"{rule.name}|{key[1]}", end, alert, stream=stream,
                                       resolve_after_ms=rule.resolve_after_ms,
                                       cooldown_ms=rule.cooldown_ms, slice_=slice_)

    # -- explanations ----------------------------------------------------------------------

    def _base(self, rule: Rule, entity: str, labels: dict, trigger: str, t: int,
              window: tuple[int, int], observed: object, count: int | None,
              created_at_ms: int, reasons: list[str], where: dict[str, object]) -> dict:
        labels = {**{k: str(v) for k, v in labels.items() if v is not None}, **rule.labels,
                  "rule": rule.name, "severity": rule.severity, "stream": rule.stream,
                  "entity": entity}
        group_key = rule.name + "|" + "|".join(f"{g}={labels.get(g, '')}" for g in rule.group_by)
        numeric = isinstance(observed, int | float) and not isinstance(observed, bool)
        threshold = rule.value if isinstance(rule.value, int | float) else None
        shown = f"{observed:.4g}" if numeric else repr(observed)
        condition = f"{rule.field or rule.kind} {rule.op} {rule.value!r}"
        if rule.kind == "rate":
            condition = f"rate({', '.join(f'{k} in {list(v)}' for k, v in rule.match.items())})" \
                        f" {rule.op} {rule.value}"
        elif rule.kind == "quantile":
            condition = f"p{round(rule.q * 100)}({rule.field}) {rule.op} {rule.value}"
        summary = f"{rule.name} [{rule.severity}] {rule.stream} {entity}: {shown} " \
                  f"{rule.op} {rule.value!r}"
        if count is not None:
            summary += f" over {count} in {_duration(window[1] - window[0])}"
        if reasons:
            summary += f" ({', '.join(reasons[:3])})"
        table, _ = _TABLES[rule.stream]
        conds = " AND ".join(f"{c} = {sql_literal(v)}" for c, v in where.items())
        conds = (conds + " AND " if conds else "") + \
            f"event_time >= {_ts(window[0])} AND event_time <= {_ts(window[1])}"
        query = f"SELECT * FROM {table} WHERE {conds} ORDER BY event_time LIMIT 1000"
        dashboard = ""
        if self.dashboard_url:
            params = urllib.parse.urlencode({"var-rule": rule.name, "var-entity": entity,
                                             "from": window[0], "to": window[1]})
            dashboard = f"{self.dashboard_url}/d/riskstream-alerts?{params}"
        return {
            "alert_id": alert_id(rule.name, trigger), "rule": rule.name,
            "severity": rule.severity, "stream": rule.stream, "entity": entity,
            "event_id": trigger, "event_time": t,
            "value": float(observed) if numeric else None, "threshold": threshold,
            "summary": summary, "created_at": created_at_ms, "status": "firing",
            "incident_id": None, "group_key": group_key, "labels": labels,
            "condition": condition, "window_ms": window[1] - window[0], "count": count,
            "reasons": reasons, "dashboard_url": dashboard or None, "query": query,
            "description": rule.description or None,
        }

    def _threshold_alert(self, rule: Rule, record: dict, entity: str, observed: object,
                         created_at_ms: int) -> dict:
        t = record["event_time"]
        reasons = list(record.get("reasons") or ([record["reason"]] if record.get("reason")
                                                 else []))
        if not reasons:
            reasons = [f"{rule.field} = {observed!r}"]
        _, columns = _TABLES[rule.stream]
        where = {c: record.get(c) for c in columns if record.get(c) is not None}
        labels = {c: record.get(c) for c in _LABEL_COLUMNS[rule.stream]}
        return self._base(rule, entity, labels, record["event_id"], t,
                          (t - rule.window_ms, t), observed, None, created_at_ms, reasons, where)

    def _window_alert(self, rule: Rule, group: str, start: int, end: int, observed: float,
                      count: int, matched: int | None, created_at_ms: int) -> dict:
        # The group's column values (a group of several columns is joined with "/").
        labels = dict(zip(rule.group, group.split("/", max(len(rule.group) - 1, 0))))
        where = dict(labels)
        if rule.kind == "rate":
            what = ", ".join(f"{k} in {list(v)}" for k, v in rule.match.items())
            reasons = [f"{matched} of {count} {rule.stream} with {what}",
                       f"rate {observed:.2%} {rule.op} {rule.value:.2%}",
                       f"min_count {rule.min_count} reached"]
        else:
            reasons = [f"p{round(rule.q * 100)} of {rule.field} ~ {observed:.4g} over {count} "
                       f"samples", f"min_count {rule.min_count} reached"]
        if rule.where:
            where.update({k: v[0] for k, v in rule.where.items() if len(v) == 1})
        return self._base(rule, group, labels, f"{group}@{end}", end, (start, end), observed,
                          count, created_at_ms, reasons, where)

    def _describe_resolved(self, record: dict, state: dict, wm: int) -> dict:
        quiet = _duration(state["resolve_after_ms"])
        return {**record, "summary": f"RESOLVED {record['summary']} (quiet for {quiet} since "
                                     f"{_iso(state['last_active'])})"}

    # -- state -----------------------------------------------------------------------------

    def to_state(self, slice_: str = "") -> dict:
        """JSON state of one input partition (decoded): resumes *after* the last batch it saw."""
        return orjson.loads(self.json_states([slice_])[slice_])

    def json_states(self, slices: Iterable[str]) -> dict[str, bytes]:
        """The JSON state of several input partitions, in one pass over the groups (version 2:
        ``{rule: {group: {bucket start: bucket}}}``). Each group's buckets are serialised as
        they are, not copied into a list per bucket first (version 1): with ~3 MB of state that
        copy held the worker's event loop ~30 ms of every checkpoint, once a second."""
        wanted: dict[str, tuple[dict, dict]] = {sl: ({}, {}) for sl in slices}
        for (rule, group), by_slice in self._buckets.items():
            end = self._evaluated.get((rule, group))
            for sl, buckets in by_slice.items():
                found = wanted.get(sl)
                if found is None:
                    continue
                windows, evaluated = found
                groups = windows.get(rule)
                if groups is None:
                    groups = windows[rule] = {}
                groups[group] = buckets
                if end is not None:
                    ends = evaluated.get(rule)
                    if ends is None:
                        ends = evaluated[rule] = {}
                    ends[group] = end
        return {sl: orjson.dumps({"version": 2, "stream": self._stream_of.get(sl),
                                  "max_event_ms": self._max_event.get(sl), "windows": windows,
                                  "evaluated": evaluated, "lifecycle": self.lifecycle.to_state(sl)},
                                 option=orjson.OPT_NON_STR_KEYS)  # bucket starts are ints
                for sl, (windows, evaluated) in wanted.items()}

    def forget_slice(self, slice_: str) -> None:
        """Drop a partition's state (what ``json_states([slice_])`` holds): it moved to another
        worker. If it comes back, ``load_state`` restores it from its latest checkpoint."""
        for key, slices in list(self._buckets.items()):
            if slices.pop(slice_, None) is not None and not slices:
                del self._buckets[key]
                self._evaluated.pop(key, None)
        self._max_event.pop(slice_, None)
        self._stream_of.pop(slice_, None)
        self.lifecycle.forget_slice(slice_)

    def load_state(self, state: dict, slice_: str = "") -> None:
        """Restore a partition's state (version 2, or version 1 of checkpoints written before:
        lists of ``[rule, group, start, bucket]`` and ``[rule, group, end]``)."""
        if state.get("stream"):
            self._stream_of[slice_] = state["stream"]
        if state.get("max_event_ms") is not None:
            self._max_event[slice_] = state["max_event_ms"]
        windows, evaluated = state["windows"], state["evaluated"]
        if state.get("version", 1) == 1:
            windows = _nested(windows)
            evaluated = _nested(evaluated)
        for rule, groups in windows.items():
            if rule in self._by_name:
                for group, buckets in groups.items():
                    self._buckets.setdefault((rule, group), {}).setdefault(slice_, {}).update(
                        (int(start), bucket) for start, bucket in buckets.items())
        for rule, ends in evaluated.items():
            if rule in self._by_name:
                for group, end in ends.items():
                    key = (rule, group)
                    self._evaluated[key] = max(end, self._evaluated.get(key, end))
        self.lifecycle.load_state(state["lifecycle"], slice_)


def _nested(rows: list[list]) -> dict:
    """Version-1 rows ``[rule, group, start, bucket]`` (or ``[rule, group, end]``) as version
    2's ``{rule: {group: {start: bucket}}}`` (or ``{rule: {group: end}}``)."""
    out: dict = {}
    for rule, group, *rest in rows:
        groups = out.setdefault(rule, {})
        if len(rest) == 2:
            groups.setdefault(group, {})[rest[0]] = rest[1]
        else:
            groups[group] = rest[0]
    return out


def alert_row(alert: dict) -> dict:
    """The record as it travels on the ``alerts`` topic: labels as a JSON object string."""
    row = dict(alert)
    if isinstance(row.get("labels"), dict):
        row["labels"] = orjson.dumps(row["labels"], option=orjson.OPT_SORT_KEYS).decode()
    return row


def rows(alerts: Iterable[dict]) -> list[dict]:
    return [alert_row(a) for a in alerts]
