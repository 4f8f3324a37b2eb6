"""Alert rules as data: a YAML file parsed and validated into :class:`RuleSet`.

The file (``pipelines/rules.yaml`` by default, ``RISKSTREAM_ALERT_RULES_PATH``) has four
sections::

    version: 1
    defaults: {resolve_after: 10m, cooldown: 5m, severity: warning}
    rules:      # what fires: threshold, rate and quantile rules over the scored streams
    inhibit:    # a firing source alert suppresses the target alerts it explains
    routes:     # which channel gets which alerts, by severity and labels

Rule kinds:

``threshold``
    one scored record: ``field op value`` (``score >= 0.9``, ``decision == decline``); the
    alert's entity is the record's key (card, applicant, ``host/metric``).
``rate``
    the share of records that ``match`` among the records of a group over an event-time
    ``window``, evaluated only with at least ``min_count`` records (``payment failure rate >
    5% with at least 10 transactions in 5 minutes``).
``quantile``
    the ``q`` quantile of ``field`` over a group's window, with at least ``min_count`` samples
    (``p95 latency > 500 ms with at least 100 samples``).

Invalid files are rejected whole, with every problem on its own line, e.g.
``rules.yaml:14: rules[2] (payment_failure_rate): window: expected a duration like 5m, got
'5 minutes'``; the engine keeps the rules it had.

Examples
--------
>>> rs = parse_rules('''
... rules:
...   - name: high
...     kind: threshold
...     stream: transactions
...     field: score
...     op: ">="
...     value: 0.9
... ''')
>>> rs.rules[0].name, rs.rules[0].resolve_after_ms
('high', 600000)
>>> parse_rules("rules:\\n  - name: x\\n    kind: nope\\n")
Traceback (most recent call last):
...
agents.rules.RulesInvalid: <rules>:3: rules[0] (x): kind: expected one of quantile, rate, threshold, got 'nope'
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from pipelines.errors import RiskstreamError
from schemas.outputs import METRIC_SAMPLE, SCORED_APPLICATION, SCORED_TRANSACTION

DEFAULT_RULES_PATH = Path(__file__).resolve().parents[1] / "pipelines" / "rules.yaml"

SEVERITIES = ("info", "warning", "critical")
OPS = (">", ">=", "<", "<=", "==", "!=", "in")
KINDS = ("quantile", "rate", "threshold")
# The columns a rule may read, per stream: the scored output record of that stream.
STREAM_SCHEMAS: dict[str, pa.Schema] = {
    "transactions": SCORED_TRANSACTION,
    "applications": SCORED_APPLICATION,
    "system-metrics": METRIC_SAMPLE,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class RulesInvalid(RiskstreamError):
    """The rules file has errors; nothing of it was applied.

    Operator action: fix each listed line (``riskstream alerts check-rules FILE`` checks a file
    without applying it); the worker keeps running with the rules it had.
    """

    def __init__(self, errors: list[tuple[int, str]], source: str = "<rules>") -> None:
        self.errors = errors
        self.source = source
        super().__init__("\n".join(f"{source}:{line}: {msg}" for line, msg in errors))


def parse_duration_ms(text: Any) -> int:
    """``"5m"`` -> 300000. Raises ``ValueError`` for anything but a number and a unit.

    >>> parse_duration_ms("2h"), parse_duration_ms("500ms")
    (7200000, 500)
    """
    found = _DURATION.match(str(text)) if isinstance(text, str) else None
    if not found:
        raise ValueError(f"expected a duration like 5m, got {text!r}")
    return int(float(found.group(1)) * _UNIT_MS[found.group(2)])


# A threshold's operators, each called as ``op(observed, value)`` (a table: a rule is compared
# for every scored record)
COMPARISONS = {"in": lambda observed, value: observed in value, "==": operator.eq,
               "!=": operator.ne, ">": operator.gt, ">=": operator.ge, "<": operator.lt,
               "<=": operator.le}


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str                       # threshold | rate | quantile
    stream: str
    severity: str = "warning"
    field: str | None = None        # threshold, quantile: the column compared
    op: str = ">="
    value: Any = None               # the threshold
    match: dict[str, tuple] = _field(default_factory=dict)   # rate: the numerator's condition
    where: dict[str, tuple] = _field(default_factory=dict)   # records the rule looks at
    group: tuple[str, ...] = ()     # rate, quantile: columns that split the windows
    window_ms: int = 300_000
    min_count: int = 1
    q: float = 0.95
    labels: dict[str, str] = _field(default_factory=dict)
    group_by: tuple[str, ...] = ("rule", "entity")  # labels that make one incident
    resolve_after_ms: int = 600_000
    cooldown_ms: int = 300_000
    description: str = ""
    line: int = 0

    @property
    def bucket_ms(self) -> int:
        """Rate and quantile windows hop by a fifth of their length (5 min -> 1 min)."""
        return max(1000, self.window_ms // 5)

    def selects(self, record: dict) -> bool:
        for k, allowed in self.where.items():  # a loop: called per record and rule
            if record.get(k) not in allowed:
                return False
        return True

    def matches(self, record: dict) -> bool:
        for k, allowed in self.match.items():
            if record.get(k) not in allowed:
                return False
        return True

    def compare(self, observed: Any) -> bool:
        """``observed op value``; False for None and for a value of another type."""
        if observed is None:
            return False
        try:
            return COMPARISONS[self.op](observed, self.value)
        except TypeError:
            return False


@dataclass(frozen=True)
class Matcher:
    """Label equality matchers: ``{"rule": ("a", "b"), "severity": ("critical",)}``."""

    labels: dict[str, tuple]

    def __call__(self, labels: dict) -> bool:
        return all(str(labels.get(k)) in allowed for k, allowed in self.labels.items())


@dataclass(frozen=True)
class Inhibition:
    source: Matcher
    target: Matcher
    equal: tuple[str, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class Route:
    channel: str
    severities: tuple[str, ...] = ()   # empty: any
    labels: Matcher = _field(default_factory=lambda: Matcher({}))
    line: int = 0

    def accepts(self, alert: dict, labels: dict) -> bool:
        if self.severities and alert.get("severity") not in self.severities:
            return False
        return self.labels(labels)


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    inhibit: tuple[Inhibition, ...] = ()
    routes: tuple[Route, ...] = ()
    source: str = "<rules>"

    def for_stream(self, stream: str) -> list[Rule]:
        return [r for r in self.rules if r.stream == stream]

    def channels_for(self, alert: dict, labels: dict, channels: list[str]) -> list[str]:
        """The channels an alert goes to: a channel with routes gets what one of them accepts;
        a channel no route names gets everything."""
        routed = {r.channel for r in self.routes}
        out = []
        for name in channels:
            if name not in routed or any(r.channel == name and r.accepts(alert, labels)
                                         for r in self.routes):
                out.append(name)
        return out


# -- parsing --------------------------------------------------------------------------------

class _Map(dict):
    """A YAML mapping that remembers its line and the line of each key."""

    line = 0
    key_lines: dict


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

_RULE_KEYS = {
    "name", "kind", "stream", "severity", "field", "op", "value", "match", "where", "group",
    "window", "min_count", "q", "labels", "group_by", "resolve_after", "cooldown", "description",
}
_REQUIRED = {"threshold": ("field", "value"), "rate": ("match", "window", "value"),
             "quantile": ("field", "window", "value")}


class _Errors:
    def __init__(self) -> None:
        self.items: list[tuple[int, str]] = []

    def add(self, line: int, msg: str) -> None:
        self.items.append((line, msg))


def _line(node: Any, key: str | None = None, default: int = 0) -> int:
    if isinstance(node, _Map):
        return node.key_lines.get(key, node.line) if key is not None else node.line
    return default


def _conditions(value: Any) -> dict[str, tuple]:
    """``{status: [declined, failed]}`` or ``{metric: cpu}`` -> ``{"status": ("declined",...)}``."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of column: value or [values], got {value!r}")
    return {str(k): tuple(v) if isinstance(v, list) else (v,) for k, v in value.items()}


def _str_conditions(value: Any) -> dict[str, tuple]:
    return {k: tuple(str(x) for x in v) for k, v in _conditions(value).items()}


def _parse_rule(node: Any, index: int, defaults: dict, params: dict, errors: _Errors) -> Rule | None:
    if not isinstance(node, _Map):
        errors.add(0, f"rules[{index}]: expected a mapping, got {node!r}")
        return None
    name = node.get("name")
    where = f"rules[{index}] ({name})" if name else f"rules[{index}]"
    n_before = len(errors.items)

    def bad(key: str, msg: str) -> None:
        errors.add(_line(node, key), f"{where}: {key}: {msg}")

    for key in node:
        if key not in _RULE_KEYS:
            bad(key, f"unknown key (known: {', '.join(sorted(_RULE_KEYS))})")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name or ""):
        bad("name", f"expected an identifier (letters, digits, _ . -), got {name!r}")
    kind = node.get("kind", "threshold")
    if kind not in KINDS:
        bad("kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")
        return None
    stream = node.get("stream")
    schema = STREAM_SCHEMAS.get(stream)
    if schema is None:
        bad("stream", f"expected one of {', '.join(STREAM_SCHEMAS)}, got {stream!r}")
        return None
    for key in _REQUIRED[kind]:
        if key not in node:
            errors.add(node.line, f"{where}: {key}: required for a {kind} rule")
    kw: dict[str, Any] = {"name": name, "kind": kind, "stream": stream, "line": node.line}

    def column(key: str, col: Any, numeric: bool = False) -> None:
        if col not in schema.names:
            bad(key, f"{stream} has no column {col!r} (columns: {', '.join(schema.names)})")
        elif numeric and not (pa.types.is_floating(schema.field(col).type)
                              or pa.types.is_integer(schema.field(col).type)):
            bad(key, f"column {col!r} is not numeric")

    severity = node.get("severity", defaults.get("severity", "warning"))
    if severity not in SEVERITIES:
        bad("severity", f"expected one of {', '.join(SEVERITIES)}, got {severity!r}")
    kw["severity"] = severity
    op = node.get("op", ">" if kind != "threshold" else ">=")
    if op not in OPS:
        bad("op", f"expected one of {' '.join(OPS)}, got {op!r}")
    kw["op"] = op
    value = node.get("value")
    if isinstance(value, str) and value.startswith("$"):
        if value[1:] not in params:
            bad("value", f"unknown parameter {value!r} (known: {', '.join(sorted(params))})")
        value = params.get(value[1:])
    if "field" in node:
        col = node["field"]
        column("field", col, numeric=(kind == "quantile" or op in ("<", "<=", ">", ">=")))
        kw["field"] = col
    if kind != "threshold" or op in ("<", "<=", ">", ">="):
        if isinstance(value, bool) or not isinstance(value, int | float):
            bad("value", f"expected a number, got {value!r}")
        elif kind == "rate" and not 0 <= value <= 1:
            bad("value", f"a rate is a fraction 0..1 (5% is 0.05), got {value!r}")
    if op == "in" and not isinstance(value, list):
        bad("value", f"'in' expects a list, got {value!r}")
    kw["value"] = tuple(value) if isinstance(value, list) else value
    for key in ("match", "where"):
        if key in node:
            try:
                kw[key] = _conditions(node[key])
                for col in kw[key]:
                    column(key, col)
            except ValueError as exc:
                bad(key, str(exc))
    if "group" in node:
        grp = node["group"]
        grp = [grp] if isinstance(grp, str) else grp
        if not isinstance(grp, list):
            bad("group", f"expected a column or a list of columns, got {grp!r}")
        else:
            for col in grp:
                column("group", col)
            kw["group"] = tuple(grp)
    for key, attr in (("window", "window_ms"), ("resolve_after", "resolve_after_ms"),
                      ("cooldown", "cooldown_ms")):
        raw = node.get(key, defaults.get(key))
        if raw is None:
            continue
        try:
            kw[attr] = parse_duration_ms(raw)
        except ValueError as exc:
            bad(key, str(exc))
    if "min_count" in node:
        mc = node["min_count"]
        if isinstance(mc, bool) or not isinstance(mc, int) or mc < 1:
            bad("min_count", f"expected an integer >= 1, got {mc!r}")
        kw["min_count"] = mc
    if "q" in node:
        q = node["q"]
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0 < q < 1:
            bad("q", f"expected a quantile strictly between 0 and 1, got {q!r}")
        kw["q"] = q
    if "labels" in node:
        labels = node["labels"]
        if not isinstance(labels, dict) or not all(isinstance(v, str | int | float)
                                                   for v in labels.values()):
            bad("labels", f"expected a mapping of name: string, got {labels!r}")
        else:
            kw["labels"] = {str(k): str(v) for k, v in labels.items()}
    if "group_by" in node:
        gb = node["group_by"]
        if not isinstance(gb, list) or not all(isinstance(x, str) for x in gb):
            bad("group_by", f"expected a list of label names, got {gb!r}")
        else:
            kw["group_by"] = tuple(gb)
    if "description" in node:
        kw["description"] = str(node["description"])
    if len(errors.items) > n_before:
        return None
    return Rule(**kw)


def parse_rules(text: str, *, source: str = "<rules>", params: dict | None = None) -> RuleSet:
    """Parse and validate a rules document; raise :class:`RulesInvalid` listing every error.

    ``params`` are values a rule may name as ``value: $name`` (the worker passes
    ``score_threshold`` and ``anomaly_threshold`` from its settings).
    """
    params = params or {}
    errors = _Errors()
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise RulesInvalid([((mark.line + 1) if mark else 0, f"not valid YAML: {problem}")],
                           source) from None
    if doc is None:
        doc = _Map()
    if not isinstance(doc, _Map):
        raise RulesInvalid([(1, "expected a mapping with rules:, inhibit:, routes:")], source)
    for key in doc:
        if key not in ("version", "defaults", "rules", "inhibit", "routes"):
            errors.add(_line(doc, key), f"{key}: unknown section (known: version, defaults, "
                                        "rules, inhibit, routes)")
    if doc.get("version", 1) != 1:
        errors.add(_line(doc, "version"), f"version: only version 1 is known, got {doc['version']!r}")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        errors.add(_line(doc, "defaults"), "defaults: expected a mapping")
        defaults = {}
    for key in defaults:
        if key not in ("resolve_after", "cooldown", "severity"):
            errors.add(_line(defaults, key), f"defaults: {key}: unknown (known: resolve_after, "
                                             "cooldown, severity)")
    rules: list[Rule] = []
    raw_rules = doc.get("rules") or []
    if not isinstance(raw_rules, list):
        errors.add(_line(doc, "rules"), "rules: expected a list")
        raw_rules = []
    names: set[str] = set()
    for i, node in enumerate(raw_rules):
        rule = _parse_rule(node, i, defaults, params, errors)
        if rule is None:
            continue
        if rule.name in names:
            errors.add(rule.line, f"rules[{i}] ({rule.name}): name: used twice")
        names.add(rule.name)
        rules.append(rule)
    inhibit = []
    for i, node in enumerate(doc.get("inhibit") or []):
        try:
            if not isinstance(node, dict) or not {"source", "target"} <= set(node):
                raise ValueError("expected a mapping with source:, target: and optional equal:")
            extra = set(node) - {"source", "target", "equal"}
            if extra:
                raise ValueError(f"unknown key {sorted(extra)[0]!r}")
            equal = node.get("equal") or []
            if not isinstance(equal, list):
                raise ValueError(f"equal: expected a list of label names, got {equal!r}")
            inhibit.append(Inhibition(Matcher(_str_conditions(node["source"])),
                                      Matcher(_str_conditions(node["target"])),
                                      tuple(str(e) for e in equal), _line(node)))
        except ValueError as exc:
            errors.add(_line(node), f"inhibit[{i}]: {exc}")
    routes = []
    for i, node in enumerate(doc.get("routes") or []):
        try:
            if not isinstance(node, dict) or not isinstance(node.get("channel"), str):
                raise ValueError("expected a mapping with channel: NAME")
            extra = set(node) - {"channel", "severity", "labels"}
            if extra:
                raise ValueError(f"unknown key {sorted(extra)[0]!r}")
            sev = node.get("severity") or []
            sev = [sev] if isinstance(sev, str) else sev
            for s in sev:
                if s not in SEVERITIES:
                    raise ValueError(f"severity: expected {', '.join(SEVERITIES)}, got {s!r}")
            routes.append(Route(node["channel"], tuple(sev),
                                Matcher(_str_conditions(node.get("labels") or {})), _line(node)))
        except ValueError as exc:
            errors.add(_line(node), f"routes[{i}]: {exc}")
    if errors.items:
        raise RulesInvalid(sorted(errors.items), source)
    return RuleSet(tuple(rules), tuple(inhibit), tuple(routes), source)


def load_rules(path: Path | None = None, *, params: dict | None = None) -> RuleSet:
    """Read and validate a rules file (default: the one shipped in the package)."""
    path = Path(path) if path else DEFAULT_RULES_PATH
    try:
        text = path.read_text()
    except OSError as exc:
        raise RulesInvalid([(0, f"cannot read: {exc.strerror}")], str(path)) from None
    return parse_rules(text, source=str(path), params=params)


class RulesSource:
    """Where the worker's rules come from: the rules file, reloaded when it changes, and the
    ``rules`` topic, whose latest valid message wins until the file changes again.

    ``poll()`` returns a new :class:`RuleSet` or ``None``; it checks at most every
    ``reload_s`` of wall-clock time (configuration is operator time, not event time). Every
    worker reads the whole topic itself (no consumer group), so each one gets every update, and
    a restarted worker applies the latest published rules. Invalid rules are logged with their
    lines and reasons and ignored: the rules in force stay.
    """

    def __init__(self, path: Path | None, *, params: dict | None = None, bootstrap: str | None = None,
                 topic: str = "rules", reload_s: float = 5.0) -> None:
        import logging
        import time

        self._log = logging.getLogger("riskstream.rules")
        self._clock = time.monotonic
        self.path = Path(path) if path else DEFAULT_RULES_PATH
        self.params = params or {}
        self.reload_s = reload_s
        self._mtime = self._stat()
        self._next = self._clock() + reload_s
        self._consumer = None
        self.rejected = 0
        if bootstrap:
            from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

            self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "riskstream-rules",
                                       "enable.auto.commit": False, "auto.offset.reset": "earliest"})
            meta = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
            parts = sorted(meta.partitions) if meta is not None and not meta.error else []
            self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def initial(self) -> RuleSet:
        """The rules at start: the file, then the latest valid rules published on the topic."""
        rules = load_rules(self.path, params=self.params)
        return self._from_topic(timeout_s=1.0) or rules

    def _apply(self, text: str, source: str) -> RuleSet | None:
        try:
            rules = parse_rules(text, source=source, params=self.params)
        except RulesInvalid as exc:
            self.rejected += 1
            self._log.error("rules rejected, the rules in force stay:\n%s", exc)
            return None
        self._log.info("rules from %s: %s", source, ", ".join(r.name for r in rules.rules))
        return rules

    def _from_topic(self, timeout_s: float = 0.0) -> RuleSet | None:
        if self._consumer is None:
            return None
        latest = None
        while True:
            msgs = self._consumer.consume(100, timeout=timeout_s)
            good = [m for m in msgs if not m.error() and m.value()]
            if good:
                latest = max(good, key=lambda m: m.timestamp()[1])
            if not msgs:
                break
        if latest is None:
            return None
        source = f"topic rules[{latest.partition()}]@{latest.offset()}"
        return self._apply(latest.value().decode(errors="replace"), source)

    def poll(self) -> RuleSet | None:
        now = self._clock()
        if now < self._next:
            return None
        self._next = now + self.reload_s
        mtime = self._stat()
        if mtime is not None and mtime != self._mtime:
            self._mtime = mtime
            try:
                text = self.path.read_text()
            except OSError as exc:
                self._log.error("rules file %s unreadable: %s", self.path, exc)
                text = None
            if text is not None:
                return self._apply(text, str(self.path)) or self._from_topic()
        return self._from_topic()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
