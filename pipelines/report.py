"""``riskstream report``: a predictive report people read, and the same numbers as JSON.

One HTML file that opens offline (charts are inline SVG drawn here, no script, no CDN, no
font to fetch) and one JSON file with every number a chart shows. Sections: volumes and
amounts per stream with a forecast and its interval (pipelines/forecast.py: River models,
chosen per series by their online error, shown with it); fraud (the model's decline rate,
decisions, score distributions); application risk; anomalies per host and metric; alerts by
rule and severity; model quality; top merchants, cards and hosts; what changed since the
previous period (PSI of score distributions, deltas of volumes and rates).

Everything comes from ClickHouse SQL, the same text on chDB over the lake (default) and on a
ClickHouse server (``--clickhouse URL``, with ``final = 1`` so replayed rows count once).

Periods are aligned on the step of the time series (an hour for a period of 2 days or more):
the report covers ``[end - since, end)`` with ``end`` the start of the current step, so the
last point is a complete hour, and compares with ``[end - 2 since, end - since)``.

Limits: "fraud rate" is the model's decline rate (labels are not an output table); amounts
add up the merchants' currencies as they are (no FX conversion); a scheduled run
(``--every``) holds no state between runs, each report queries its whole period again.
"""

from __future__ import annotations

import html
import json
import math
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.errors import ConfigError
from pipelines.forecast import forecast

HOUR_S = 3600
DAY_S = 86_400
SCORE_BINS = 20
# Population stability index: the usual reading of its size.
PSI_MODERATE, PSI_SIGNIFICANT = 0.1, 0.25
DECISIONS = ("approve", "review", "decline")
DECISION_COLORS = {"approve": "#3b8f5a", "review": "#e0a526", "decline": "#c8413b"}
SEVERITY_COLORS = {"critical": "#8e1b1b", "high": "#c8413b", "warning": "#e0a526",
                   "medium": "#e0a526", "low": "#6c8ebf", "info": "#6c8ebf"}
PALETTE = ("#2f6db5", "#d9731d", "#3b8f5a", "#8b4fa8", "#c8413b", "#1f9aa8", "#7a6a2f",
           "#d45f9a", "#56606b", "#98b83b")


# -- durations and sources --------------------------------------------------------------------

def parse_duration_s(text: str) -> int:
    """``"7d"``, ``"24h"``, ``"90m"``, ``"1w"``, ``"30s"`` (or a sum: ``"1d12h"``) in seconds.

    Examples
    --------
    >>> parse_duration_s("7d"), parse_duration_s("1h30m"), parse_duration_s("2w")
    (604800, 5400, 1209600)
    """
    units = {"s": 1, "m": 60, "h": HOUR_S, "d": DAY_S, "w": 7 * DAY_S}
    parts = re.findall(r"(\d+)\s*([smhdw])", text.strip().lower())
    if not parts or re.sub(r"[\d\s]+[smhdw]", "", text.strip().lower()):
        raise ConfigError(f"expected a duration like 7d, 24h or 90m, got {text!r}")
    seconds = sum(int(n) * units[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"a duration must be > 0, got {text!r}")
    return seconds


class LakeSource:
    """ClickHouse SQL with chDB over the lake's Parquet files (sinks/clickhouse.py's views).

    The views are created once, in a private in-memory chDB session held until ``close``:
    each of the report's queries then costs what it reads (~10-100 ms), not the ~0.3 s of a
    fresh chDB context per query. The session holds no directory, so the sink and other
    readers are not disturbed. The views list the lake's files when they are created: a
    report reads one consistent set of files; ``refresh`` sees the files written since.
    """

    def __init__(self, lake: Path) -> None:
        self.lake = Path(lake)
        self.name = f"lake {self.lake.resolve()} (chDB)"
        self._session = None

    def rows(self, sql: str) -> list[dict]:
        from sinks.clickhouse import LakeQueryError, _one_line

        try:
            if self._session is None:
                self.refresh()
            return self._session.query(sql, "ArrowTable").to_pylist()
        except LakeQueryError:
            raise
        except Exception as exc:  # chDB raises RuntimeErrors with ClickHouse's text
            raise LakeQueryError(_one_line(str(exc))) from None

    def refresh(self) -> None:
        """(Re)create the views: queries see the files the lake holds now."""
        from chdb import session

        from sinks.clickhouse import views_sql

        if self._session is None:
            self._session = session.Session()
        for statement in views_sql(self.lake).split(";\n"):
            if statement.strip():
                self._session.query(statement.replace("CREATE VIEW", "CREATE OR REPLACE VIEW"))

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()


class ServerSource:
    """The same SQL on a ClickHouse server (the warehouse), with ``final = 1``: ``target`` is
    a target of sinks/warehouse.py (``open_target``)."""

    def __init__(self, target: Any, name: str) -> None:
        self._target, self.name = target, name

    def refresh(self) -> None:
        """Nothing to do: a server always answers with what it holds now."""

    def rows(self, sql: str) -> list[dict]:
        from sinks.warehouse import QUERY_SETTINGS

        return self._target.query(sql, QUERY_SETTINGS)

    def close(self) -> None:
        self._target.close()


def open_source(settings, *, url: str | None = None, lake: str | Path | None = None):
    """The ClickHouse server at ``url`` (with ``RISKSTREAM_CLICKHOUSE_PASSWORD`` when the URL
    has none), or chDB over the lake (``lake``, default ``RISKSTREAM_LAKE_PATH``)."""
    if url:
        from sinks.warehouse import _redact, open_target

        target = open_target(settings.clickhouse, url)
        return ServerSource(target, f"ClickHouse {_redact(url)} (database {target.database})")
    return LakeSource(Path(lake) if lake else settings.lake.path)


@dataclass(frozen=True)
class Period:
    """``[start_ms, end_ms)`` cut in steps of ``step_s``; ``previous`` is the period before."""

    start_ms: int
    end_ms: int
    step_s: int

    @property
    def step_ms(self) -> int:
        return self.step_s * 1000

    @property
    def previous(self) -> Period:
        span = self.end_ms - self.start_ms
        return Period(self.start_ms - span, self.start_ms, self.step_s)

    def times(self) -> list[int]:
        return list(range(self.start_ms, self.end_ms, self.step_ms))

    def where(self, column: str) -> str:
        return (f"{column} >= fromUnixTimestamp64Milli(toInt64({self.start_ms}), 'UTC') AND "
                f"{column} < fromUnixTimestamp64Milli(toInt64({self.end_ms}), 'UTC')")

    def bucket(self, column: str) -> str:
        """SQL: the start of ``column``'s step, as int ms (the same on chDB and a server)."""
        return (f"toInt64(toUnixTimestamp(toStartOfInterval({column}, "
                f"INTERVAL {self.step_s} SECOND))) * 1000")


def step_for(since_s: int) -> int:
    """The time series' step: hours for 2 days or more, 15 minutes from 6 h, else minutes."""
    if since_s >= 2 * DAY_S:
        return HOUR_S
    if since_s >= 6 * HOUR_S:
        return 900
    return 60


def period_for(since_s: int, now_ms: int) -> Period:
    step_s = step_for(since_s)
    end = now_ms // (step_s * 1000) * step_s * 1000
    return Period(end - since_s * 1000, end, step_s)


# -- the numbers ----------------------------------------------------------------------------

def _dense(rows: list[dict], period: Period, columns: list[str]) -> dict[str, list]:
    """Rows keyed by ``t`` as one list per column over every step (0 where none)."""
    by_t = {int(r["t"]): r for r in rows}
    out: dict[str, list] = {"t": period.times()}
    for c in columns:
        out[c] = [_num(by_t[t][c]) if t in by_t else 0 for t in out["t"]]
    return out


def _num(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    return value


def _clean(rows: list[dict]) -> list[dict]:
    """Rows as JSON-ready values: datetimes as ISO strings, floats rounded."""
    out = []
    for r in rows:
        out.append({k: (v.isoformat() if isinstance(v, datetime) else _num(v))
                    for k, v in r.items()})
    return out


def psi(expected: list[float], actual: list[float], eps: float = 1e-4) -> float | None:
    """Population stability index of two histograms over the same bins (counts).

    ``None`` when either is empty. Below 0.1: stable; 0.1-0.25: moderate shift; above: major.

    Examples
    --------
    >>> psi([50, 50], [50, 50])
    0.0
    >>> round(psi([90, 10], [50, 50]), 3)
    0.879
    """
    n_e, n_a = sum(expected), sum(actual)
    if not n_e or not n_a:
        return None
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe, pa = max(e / n_e, eps), max(a / n_a, eps)
        total += (pa - pe) * math.log(pa / pe)
    return round(total, 4)


def psi_status(value: float | None) -> str:
    if value is None:
        return "no data"
    if value >= PSI_SIGNIFICANT:
        return "significant shift"
    if value >= PSI_MODERATE:
        return "moderate shift"
    return "stable"


STREAM_SQL = {
    "transactions": ("scored_transactions", "sum(ifNull(amount, 0))"),
    "applications": ("scored_applications", "sum(ifNull(requested_amount, 0))"),
}


def _stream_series(source, period: Period, stream: str) -> dict[str, list]:
    table, amount = STREAM_SQL[stream]
    rows = source.rows(f"""
        SELECT {period.bucket('event_time')} AS t, count() AS n, {amount} AS amount,
               countIf(decision = 'approve') AS approve, countIf(decision = 'review') AS review,
               countIf(decision = 'decline') AS decline, avg(score) AS score_mean
        FROM {table} WHERE {period.where('event_time')}
        GROUP BY t ORDER BY t""")
    return _dense(rows, period, ["n", "amount", "approve", "review", "decline", "score_mean"])


def _metric_series(source, period: Period) -> dict[str, list]:
    samples = source.rows(f"""
        SELECT {period.bucket('event_time')} AS t, count() AS n
        FROM metric_samples WHERE {period.where('event_time')} GROUP BY t ORDER BY t""")
    anomalies = source.rows(f"""
        SELECT {period.bucket('event_time')} AS t, count() AS anomalies
        FROM metric_anomalies WHERE {period.where('event_time')} GROUP BY t ORDER BY t""")
    out = _dense(samples, period, ["n"])
    out["anomalies"] = _dense(anomalies, period, ["anomalies"])["anomalies"]
    return out


def _totals(source, period: Period) -> dict[str, dict]:
    """Totals of a period, for the comparison with the previous one."""
    tx = source.rows(f"""
        SELECT count() AS n, sum(ifNull(amount, 0)) AS amount,
               countIf(decision = 'decline') AS decline, countIf(decision = 'review') AS review
        FROM scored_transactions WHERE {period.where('event_time')}""")[0]
    app = source.rows(f"""
        SELECT count() AS n, sum(ifNull(requested_amount, 0)) AS amount,
               countIf(decision = 'decline') AS decline, countIf(decision = 'review') AS review
        FROM scored_applications WHERE {period.where('event_time')}""")[0]
    metrics = source.rows(f"""
        SELECT count() AS n FROM metric_samples WHERE {period.where('event_time')}""")[0]
    anomalies = source.rows(f"""
        SELECT count() AS n FROM metric_anomalies WHERE {period.where('event_time')}""")[0]
    alerts = source.rows(f"""
        SELECT count() AS n FROM alerts
        WHERE {period.where('created_at')} AND ifNull(status, 'firing') = 'firing'""")[0]
    return {"transactions": _clean([tx])[0], "applications": _clean([app])[0],
            "system-metrics": _clean([metrics])[0], "anomalies": _clean([anomalies])[0],
            "alerts": _clean([alerts])[0]}


def _histogram(source, table: str, period: Period) -> list[int]:
    rows = source.rows(f"""
        SELECT toUInt32(least(greatest(floor(score * {SCORE_BINS}), 0), {SCORE_BINS - 1})) AS bin,
               count() AS n
        FROM {table} WHERE {period.where('event_time')} GROUP BY bin ORDER BY bin""")
    counts = [0] * SCORE_BINS
    for r in rows:
        counts[int(r["bin"])] = int(r["n"])
    return counts


def _forecasts(series: dict[str, list], columns: list[str], period: Period,
               horizon_steps: int) -> dict[str, dict]:
    season = DAY_S // period.step_s if DAY_S % period.step_s == 0 else 0
    out = {}
    for column in columns:
        f = forecast(series[column], horizon=horizon_steps, season=season)
        out[column] = {"t": [period.end_ms + k * period.step_ms for k in range(horizon_steps)],
                       **f.to_dict()}
    return out


Progress = Callable[[str], None]


def _stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def collect(source, *, since_s: int, horizon_s: int, now_ms: int | None = None,
            progress: Progress | None = _stderr_progress) -> dict:
    """Query everything the report shows; return it as JSON-ready data."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    source.refresh()  # the lake as it is now (a scheduled report reuses its source)
    period = period_for(since_s, now_ms)
    previous = period.previous
    horizon_steps = max(1, math.ceil(horizon_s / period.step_s))
    steps: list[tuple[str, Callable[[], Any]]] = []
    data: dict[str, Any] = {
        "version": 1,
        "generated_at": datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(),
        "source": source.name,
        "period": {"start": _iso(period.start_ms), "end": _iso(period.end_ms),
                   "start_ms": period.start_ms, "end_ms": period.end_ms, "since_s": since_s,
                   "step_s": period.step_s, "horizon_s": horizon_s,
                   "horizon_steps": horizon_steps},
        "previous_period": {"start": _iso(previous.start_ms), "end": _iso(previous.end_ms)},
    }

    def streams() -> None:
        out = {}
        for stream in ("transactions", "applications"):
            series = _stream_series(source, period, stream)
            out[stream] = {"series": series,
                           "forecast": _forecasts(series, ["n", "amount"], period, horizon_steps)}
        metrics = _metric_series(source, period)
        out["system-metrics"] = {"series": metrics,
                                 "forecast": _forecasts(metrics, ["n"], period, horizon_steps)}
        data["streams"] = out

    def totals() -> None:
        data["totals"] = _totals(source, period)
        data["previous_totals"] = _totals(source, previous)

    def scores() -> None:
        data["scores"] = {
            stream: {"bins": [round(i / SCORE_BINS, 2) for i in range(SCORE_BINS + 1)],
                     "current": (cur := _histogram(source, table, period)),
                     "previous": (prev := _histogram(source, table, previous)),
                     "psi": psi(prev, cur)}
            for stream, (table, _) in STREAM_SQL.items()}

    def fraud() -> None:
        data["fraud"] = {
            "by_channel": _clean(source.rows(f"""
                SELECT ifNull(channel, '') AS channel, count() AS transactions,
                       countIf(decision = 'decline') AS declines,
                       round(countIf(decision = 'decline') / count(), 4) AS decline_rate,
                       round(avg(score), 4) AS avg_score
                FROM scored_transactions WHERE {period.where('event_time')}
                GROUP BY channel ORDER BY transactions DESC, channel""")),
            "by_country": _clean(source.rows(f"""
                SELECT ifNull(country, '') AS country, count() AS transactions,
                       countIf(decision = 'decline') AS declines,
                       round(countIf(decision = 'decline') / count(), 4) AS decline_rate
                FROM scored_transactions WHERE {period.where('event_time')}
                GROUP BY country ORDER BY declines DESC, transactions DESC, country LIMIT 10""")),
            "reasons": _clean(source.rows(f"""
                SELECT reason, count() AS transactions FROM scored_transactions
                ARRAY JOIN reasons AS reason
                WHERE {period.where('event_time')} AND decision != 'approve'
                GROUP BY reason ORDER BY transactions DESC, reason LIMIT 10""")),
        }

    def applications() -> None:
        data["applications"] = {
            "by_product": _clean(source.rows(f"""
                SELECT ifNull(product, '') AS product, count() AS applications,
                       round(avg(score), 4) AS avg_score,
                       countIf(decision = 'decline') AS declines,
                       round(countIf(decision = 'decline') / count(), 4) AS decline_rate,
                       round(sum(ifNull(requested_amount, 0)), 2) AS requested_amount
                FROM scored_applications WHERE {period.where('event_time')}
                GROUP BY product ORDER BY applications DESC, product""")),
            "by_email_domain": _clean(source.rows(f"""
                SELECT ifNull(email_domain, '') AS email_domain, count() AS applications,
                       round(avg(score), 4) AS avg_score,
                       countIf(decision = 'decline') AS declines
                FROM scored_applications WHERE {period.where('event_time')}
                GROUP BY email_domain HAVING applications >= 3
                ORDER BY avg_score DESC, email_domain LIMIT 10""")),
        }

    def anomalies() -> None:
        data["anomalies"] = {
            "by_host_metric": _clean(source.rows(f"""
                SELECT host, metric, count() AS anomalies, round(max(score), 4) AS max_score
                FROM metric_anomalies WHERE {period.where('event_time')}
                GROUP BY host, metric ORDER BY host, metric""")),
            "by_reason": _clean(source.rows(f"""
                SELECT ifNull(reason, 'unknown') AS reason, count() AS anomalies
                FROM metric_anomalies WHERE {period.where('event_time')}
                GROUP BY reason ORDER BY anomalies DESC, reason""")),
        }

    def alerts() -> None:
        firing = f"{period.where('created_at')} AND ifNull(status, 'firing') = 'firing'"
        rows = source.rows(f"""
            SELECT {period.bucket('created_at')} AS t, severity, count() AS n
            FROM alerts WHERE {firing} GROUP BY t, severity ORDER BY t, severity""")
        severities = sorted({r["severity"] for r in rows}, key=_severity_rank)
        series: dict[str, list] = {"t": period.times()}
        for sev in severities:
            series[sev] = _dense([r for r in rows if r["severity"] == sev], period, ["n"])["n"]
        data["alerts"] = {
            "by_rule_severity": _clean(source.rows(f"""
                SELECT rule, severity, count() AS alerts, uniqExact(entity) AS entities,
                       min(created_at) AS first_at, max(created_at) AS last_at
                FROM alerts WHERE {firing}
                GROUP BY rule, severity ORDER BY alerts DESC, rule, severity""")),
            "series": series,
            "resolved": int(source.rows(f"""
                SELECT count() AS n FROM alerts
                WHERE {period.where('created_at')} AND status = 'resolved'""")[0]["n"]),
        }

    def quality() -> None:
        data["model_quality"] = _clean(source.rows(f"""
            SELECT toInt64(toUnixTimestamp(toStartOfInterval(window_end,
                       INTERVAL {max(period.step_s, HOUR_S)} SECOND))) * 1000 AS t,
                   stream, role, model_version, sum(n) AS labelled, sum(positives) AS positives,
                   round(avg(roc_auc), 4) AS roc_auc,
                   round(avg(average_precision), 4) AS average_precision,
                   round(avg(recall_at_review), 4) AS recall_at_review
            FROM model_quality WHERE {period.where('window_end')}
            GROUP BY t, stream, role, model_version ORDER BY t, stream, role, model_version"""))

    def top() -> None:
        where = period.where("event_time")
        data["top"] = {
            "merchants": _clean(source.rows(f"""
                SELECT ifNull(merchant_id, '') AS merchant_id, count() AS transactions,
                       countIf(decision = 'decline') AS declines,
                       round(avg(score), 4) AS avg_score, round(max(score), 4) AS max_score,
                       round(sum(ifNull(amount, 0)), 2) AS amount
                FROM scored_transactions WHERE {where} GROUP BY merchant_id
                ORDER BY declines DESC, avg_score DESC, merchant_id LIMIT 10""")),
            "cards": _clean(source.rows(f"""
                SELECT card_id, count() AS transactions,
                       countIf(decision = 'decline') AS declines,
                       round(max(score), 4) AS max_score,
                       round(sum(ifNull(amount, 0)), 2) AS amount,
                       uniqExact(ifNull(country, '')) AS countries
                FROM scored_transactions WHERE {where} GROUP BY card_id
                ORDER BY declines DESC, max_score DESC, card_id LIMIT 10""")),
            "hosts": _clean(source.rows(f"""
                SELECT host, count() AS anomalies, uniqExact(metric) AS metrics,
                       argMax(metric, (score, metric)) AS worst_metric,
                       round(max(score), 4) AS max_score
                FROM metric_anomalies WHERE {where} GROUP BY host
                ORDER BY anomalies DESC, host LIMIT 10""")),
        }

    steps = [("volumes, amounts and forecasts", streams), ("totals, this and the previous period",
             totals), ("score distributions", scores), ("fraud", fraud),
             ("application risk", applications), ("anomalies per host and metric", anomalies),
             ("alerts by rule and severity", alerts), ("model quality", quality),
             ("top merchants, cards and hosts", top)]
    started = time.monotonic()
    for i, (name, step) in enumerate(steps, 1):
        t0 = time.monotonic()
        step()
        if progress:
            progress(f"report: [{i}/{len(steps)}] {name} ({time.monotonic() - t0:.1f} s)")
    data["drift"] = _drift(data)
    data["charts"] = [{"id": c.id, "title": c.title, "points": c.points(data)} for c in CHARTS]
    data["elapsed_s"] = round(time.monotonic() - started, 2)
    return data


def _severity_rank(severity: str) -> tuple[int, str]:
    order = ["critical", "high", "warning", "medium", "low", "info"]
    return (order.index(severity) if severity in order else len(order), severity)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _change(previous: float, current: float) -> float | None:
    return None if not previous else round((current - previous) / previous, 4)


def _drift(data: dict) -> list[dict]:
    """What changed since the previous period, one row per measure."""
    cur, prev = data["totals"], data["previous_totals"]
    rows = []
    for stream in ("transactions", "applications"):
        s = data["scores"][stream]
        rows.append({"measure": f"{stream}: score distribution (PSI)", "previous": None,
                     "current": s["psi"], "change": s["psi"], "status": psi_status(s["psi"])})
    for key, label in (("transactions", "transactions"), ("applications", "applications"),
                       ("system-metrics", "metric samples"), ("anomalies", "metric anomalies"),
                       ("alerts", "alerts fired")):
        p, c = prev[key]["n"], cur[key]["n"]
        change = _change(p, c)
        rows.append({"measure": f"{label}: count", "previous": p, "current": c,
                     "change": change, "status": _delta_status(change, p)})
    for key in ("transactions", "applications"):
        p, c = prev[key]["amount"], cur[key]["amount"]
        change = _change(p, c)
        rows.append({"measure": f"{key}: amount", "previous": round(p, 2),
                     "current": round(c, 2), "change": change, "status": _delta_status(change, p)})
        rate_p = prev[key]["decline"] / prev[key]["n"] if prev[key]["n"] else None
        rate_c = cur[key]["decline"] / cur[key]["n"] if cur[key]["n"] else None
        diff = (None if rate_p is None or rate_c is None else round(rate_c - rate_p, 4))
        rows.append({"measure": f"{key}: decline rate", "previous": _r(rate_p),
                     "current": _r(rate_c), "change": diff,
                     "status": ("no data" if diff is None else
                                "shift" if abs(diff) >= 0.01 else "stable")})
    return rows


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _delta_status(change: float | None, previous: float) -> str:
    if not previous:
        return "no previous data"
    if abs(change) >= 0.5:
        return "large change"
    if abs(change) >= 0.2:
        return "change"
    return "stable"


# -- charts: hand-made SVG (readable, tiny, and nothing to load) -------------------------------

W, H = 760, 300
M_LEFT, M_RIGHT, M_TOP, M_BOTTOM = 64, 16, 54, 52


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt(v: float) -> str:
    """Short number for axes: 950, 1.2k, 3.4M; ratios keep their decimals.

    Examples
    --------
    >>> _fmt(1234), _fmt(0.25), _fmt(2_500_000), _fmt(12)
    ('1.23k', '0.25', '2.5M', '12')
    """
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:.3g}B"
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e3:
        return f"{v / 1e3:.3g}k"
    if a == 0 or a >= 1:
        return f"{v:.4g}"
    return f"{v:.2g}"


def _nice_ticks(lo: float, hi: float, n: int = 5, min_step: float = 0.0) -> list[float]:
    """About ``n`` round tick values covering ``[lo, hi]``.

    Examples
    --------
    >>> _nice_ticks(0, 97)
    [0, 20, 40, 60, 80, 100]
    """
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = max(min_step, next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw))
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v < hi + step * 0.999:
        ticks.append(round(v, 10))
        v += step
    return ticks


class _Frame:
    """Plot area with a linear x (ms or index) and y scale, and the SVG around it."""

    def __init__(self, title: str, x_lo: float, x_hi: float, y_hi: float, y_label: str,
                 y_lo: float = 0.0, width: int = W, height: int = H,
                 counts: bool = False) -> None:
        self.w, self.h = width, height
        self.title = title
        self.x_lo, self.x_hi = x_lo, x_hi if x_hi > x_lo else x_lo + 1
        # Counts get whole-number ticks (no "0.2 alerts per hour").
        self.yticks = _nice_ticks(y_lo, y_hi if y_hi > y_lo else y_lo + 1,
                                  min_step=1.0 if counts else 0.0)
        self.y_lo, self.y_hi = self.yticks[0], self.yticks[-1]
        self.y_label = y_label
        self.parts: list[str] = []

    def x(self, v: float) -> float:
        return M_LEFT + (v - self.x_lo) / (self.x_hi - self.x_lo) * (self.w - M_LEFT - M_RIGHT)

    def y(self, v: float) -> float:
        span = self.y_hi - self.y_lo or 1
        return self.h - M_BOTTOM - (v - self.y_lo) / span * (self.h - M_TOP - M_BOTTOM)

    def axes(self, xticks: list[tuple[float, str]], x_label: str) -> None:
        p = self.parts
        for t in self.yticks:
            y = self.y(t)
            p.append(f'<line x1="{M_LEFT}" x2="{self.w - M_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#e3e6ea"/>')
            p.append(f'<text x="{M_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" '
                     f'class="tick">{_fmt(t)}</text>')
        base = self.h - M_BOTTOM
        p.append(f'<line x1="{M_LEFT}" x2="{self.w - M_RIGHT}" y1="{base}" y2="{base}" '
                 'stroke="#8a939c"/>')
        p.append(f'<line x1="{M_LEFT}" x2="{M_LEFT}" y1="{M_TOP}" y2="{base}" stroke="#8a939c"/>')
        for v, label in xticks:
            x = self.x(v)
            p.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{base}" y2="{base + 4}" '
                     'stroke="#8a939c"/>')
            p.append(f'<text x="{x:.1f}" y="{base + 16}" text-anchor="middle" '
                     f'class="tick">{_esc(label)}</text>')
        p.append(f'<text x="{(M_LEFT + self.w - M_RIGHT) / 2}" y="{self.h - 8}" '
                 f'text-anchor="middle" class="axis">{_esc(x_label)}</text>')
        mid = (M_TOP + base) / 2
        p.append(f'<text x="14" y="{mid}" text-anchor="middle" class="axis" '
                 f'transform="rotate(-90 14 {mid})">{_esc(self.y_label)}</text>')

    def legend(self, items: list[tuple[str, str, str]]) -> None:
        """``(label, color, kind)``: kind ``line``, ``dash``, ``band`` or ``box``."""
        x = M_LEFT  # one row under the title, left to right
        for label, color, kind in items:
            y = 38
            if kind == "line":
                mark = (f'<line x1="{x}" x2="{x + 16}" y1="{y - 4}" y2="{y - 4}" '
                        f'stroke="{color}" stroke-width="2.5"/>')
            elif kind == "dash":
                mark = (f'<line x1="{x}" x2="{x + 16}" y1="{y - 4}" y2="{y - 4}" '
                        f'stroke="{color}" stroke-width="2.5" stroke-dasharray="4 3"/>')
            else:
                opacity = "0.25" if kind == "band" else "1"
                mark = (f'<rect x="{x}" y="{y - 10}" width="16" height="10" fill="{color}" '
                        f'fill-opacity="{opacity}"/>')
            self.parts.append(mark + f'<text x="{x + 20}" y="{y}" class="legend">'
                                     f'{_esc(label)}</text>')
            x += 7 * len(label) + 34

    def svg(self, chart_id: str) -> str:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.w} {self.h}" '
                f'width="{self.w}" height="{self.h}" role="img" aria-label="{_esc(self.title)}" '
                f'data-chart="{_esc(chart_id)}">'
                f'<text x="{M_LEFT}" y="18" class="title">{_esc(self.title)}</text>'
                + "".join(self.parts) + "</svg>")


def _time_ticks(lo_ms: int, hi_ms: int) -> tuple[list[tuple[float, str]], str]:
    span_s = (hi_ms - lo_ms) / 1000
    if span_s >= 2 * DAY_S:
        step = DAY_S * 1000 * max(1, round(span_s / DAY_S / 8))
        fmt = "%a %d %b"
    elif span_s >= 6 * HOUR_S:
        step = HOUR_S * 1000 * max(1, round(span_s / HOUR_S / 8))
        fmt = "%H:%M"
    else:
        step = 60_000 * max(1, round(span_s / 60 / 8))
        fmt = "%H:%M"
    first = -(-lo_ms // step) * step
    ticks = [(t, datetime.fromtimestamp(t / 1000, UTC).strftime(fmt))
             for t in range(first, hi_ms + 1, step)]
    return ticks, "time (UTC)"


def _path(frame: _Frame, xs: list[float], ys: list[float]) -> str:
    pts = [f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in zip(xs, ys, strict=True)
           if y is not None]
    return "M" + " L".join(pts) if pts else ""


def line_chart(chart_id: str, title: str, t: list[int], lines: list[tuple[str, list, str]],
               y_label: str, forecast_: dict | None = None, step_ms: int = 0) -> str:
    """Time series as lines; ``forecast_`` adds a dashed forecast and its shaded interval."""
    ends = [t[-1] + step_ms] if t else [0]
    values = [v for _, ys, _ in lines for v in ys if v is not None]
    if forecast_:
        ends.append(forecast_["t"][-1])
        values += forecast_["upper"]
    lo_ms = t[0] if t else 0
    frame = _Frame(title, lo_ms, max(ends), max(values, default=1) * 1.05, y_label)
    ticks, x_label = _time_ticks(lo_ms, max(ends))
    frame.axes(ticks, x_label)
    legend = []
    if forecast_:
        ft = [t[-1]] + forecast_["t"] if t else forecast_["t"]
        last = [lines[0][1][-1]] if t else []
        upper = last + forecast_["upper"]
        lower = last + forecast_["lower"]
        band = (" ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in zip(ft, upper,
                                                                               strict=True))
                + " " + " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}"
                                 for x, y in reversed(list(zip(ft, lower, strict=True)))))
        frame.parts.append(f'<polygon points="{band}" fill="#d9731d" fill-opacity="0.2"/>')
        frame.parts.append(f'<path d="{_path(frame, ft, last + forecast_["values"])}" '
                           'fill="none" stroke="#d9731d" stroke-width="2" '
                           'stroke-dasharray="5 3"/>')
        x0 = frame.x(forecast_["t"][0])
        frame.parts.append(f'<line x1="{x0:.1f}" x2="{x0:.1f}" y1="{M_TOP}" '
                           f'y2="{frame.h - M_BOTTOM}" stroke="#56606b" stroke-dasharray="2 3"/>'
                           f'<text x="{x0 + 4:.1f}" y="{M_TOP + 10}" class="tick">now</text>')
    for name, ys, color in lines:
        frame.parts.append(f'<path d="{_path(frame, t, ys)}" fill="none" stroke="{color}" '
                           'stroke-width="1.8"/>')
        legend.append((name, color, "line"))
    if forecast_:
        legend += [(f"forecast ({forecast_['model']})", "#d9731d", "dash"),
                   ("80% interval", "#d9731d", "band")]
    frame.legend(legend)
    return frame.svg(chart_id)


def stacked_bars(chart_id: str, title: str, t: list[int], stacks: list[tuple[str, list, str]],
                 y_label: str, step_ms: int) -> str:
    totals = [sum(s[1][i] for s in stacks) for i in range(len(t))]
    end = (t[-1] + step_ms) if t else 1
    frame = _Frame(title, t[0] if t else 0, end, max(totals, default=1) or 1, y_label,
                   counts=True)
    ticks, x_label = _time_ticks(t[0] if t else 0, end)
    frame.axes(ticks, x_label)
    width = max(1.0, frame.x(step_ms) - frame.x(0) - 0.6) if t else 1
    for i, x in enumerate(t):
        base = 0.0
        for _, ys, color in stacks:
            v = ys[i]
            if v:
                y_top = frame.y(base + v)
                frame.parts.append(f'<rect x="{frame.x(x):.1f}" y="{y_top:.1f}" '
                                   f'width="{width:.1f}" height="{frame.y(base) - y_top:.1f}" '
                                   f'fill="{color}"/>')
                base += v
    frame.legend([(name, color, "box") for name, _, color in stacks])
    return frame.svg(chart_id)


def histogram_chart(chart_id: str, title: str, edges: list[float],
                    series: list[tuple[str, list, str]], y_label: str, x_label: str,
                    marks: list[tuple[float, str]] = ()) -> str:
    """Histograms as shares (%) of their totals, side by side per bin."""
    shares = []
    for name, counts, color in series:
        n = sum(counts)
        shares.append((name, [100 * c / n if n else 0 for c in counts], color))
    top = max((v for _, ys, _ in shares for v in ys), default=1)
    frame = _Frame(title, edges[0], edges[-1], top * 1.05 or 1, y_label)
    frame.axes([(e, f"{e:g}") for e in edges[::2]], x_label)
    bin_w = frame.x(edges[1]) - frame.x(edges[0])
    bar_w = (bin_w - 2) / max(1, len(shares))
    for k, (_, ys, color) in enumerate(shares):
        for i, v in enumerate(ys):
            if v:
                x = frame.x(edges[i]) + 1 + k * bar_w
                frame.parts.append(f'<rect x="{x:.1f}" y="{frame.y(v):.1f}" width="{bar_w:.1f}" '
                                   f'height="{frame.y(0) - frame.y(v):.1f}" fill="{color}"/>')
    for value, label in marks:
        x = frame.x(value)
        frame.parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{M_TOP}" '
                           f'y2="{frame.h - M_BOTTOM}" stroke="#56606b" stroke-dasharray="3 3"/>'
                           f'<text x="{x - 4:.1f}" y="{M_TOP + 10}" text-anchor="end" '
                           f'class="tick">{_esc(label)}</text>')
    frame.legend([(name, color, "box") for name, _, color in shares])
    return frame.svg(chart_id)


def hbar_chart(chart_id: str, title: str, labels: list[str], values: list[float],
               colors: list[str], x_label: str) -> str:
    """Horizontal bars, one per label (longest first as given)."""
    row_h = 22
    height = M_TOP + 30 + row_h * max(1, len(labels))
    label_w = min(300, 7 * max((len(s) for s in labels), default=4) + 16)
    ticks = _nice_ticks(0, max(values, default=1) or 1)
    x0, x1 = label_w, W - M_RIGHT - 10
    parts = []
    for t in ticks:
        x = x0 + t / ticks[-1] * (x1 - x0)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{M_TOP}" y2="{height - 30}" '
                     f'stroke="#e3e6ea"/><text x="{x:.1f}" y="{height - 16}" '
                     f'text-anchor="middle" class="tick">{_fmt(t)}</text>')
    for i, (label, v, color) in enumerate(zip(labels, values, colors, strict=True)):
        y = M_TOP + i * row_h
        w = v / ticks[-1] * (x1 - x0)
        parts.append(f'<text x="{x0 - 6}" y="{y + 15}" text-anchor="end" class="tick">'
                     f'{_esc(label)}</text><rect x="{x0}" y="{y + 3}" width="{w:.1f}" '
                     f'height="{row_h - 6}" fill="{color}"/><text x="{x0 + w + 4:.1f}" '
                     f'y="{y + 15}" class="tick">{_fmt(v)}</text>')
    parts.append(f'<text x="{(x0 + x1) / 2}" y="{height - 2}" text-anchor="middle" '
                 f'class="axis">{_esc(x_label)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" width="{W}" '
            f'height="{height}" role="img" aria-label="{_esc(title)}" '
            f'data-chart="{_esc(chart_id)}"><text x="{M_LEFT}" y="18" class="title">'
            f'{_esc(title)}</text>' + "".join(parts) + "</svg>")


def heatmap(chart_id: str, title: str, rows: list[str], cols: list[str],
            cells: dict[tuple[str, str], float], unit: str) -> str:
    """A matrix of counts, darker is more; every cell labelled with its value."""
    cell_w = max(60, min(110, (W - 150) // max(1, len(cols))))
    cell_h = 24
    left, top = 150, M_TOP + 28
    width = max(560, left + cell_w * len(cols) + 20)
    height = top + cell_h * len(rows) + 36
    hi = max(cells.values(), default=0) or 1
    parts = [f'<text x="{left + cell_w * c + cell_w / 2}" y="{top - 8}" text-anchor="middle" '
             f'class="tick">{_esc(name)}</text>' for c, name in enumerate(cols)]
    for r, host in enumerate(rows):
        y = top + r * cell_h
        parts.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end" class="tick">'
                     f'{_esc(host)}</text>')
        for c, metric in enumerate(cols):
            v = cells.get((host, metric), 0)
            alpha = 0.08 + 0.92 * (v / hi) if v else 0.0
            ink = "#fff" if v / hi > 0.55 else "#1d2329"
            parts.append(f'<rect x="{left + c * cell_w}" y="{y}" width="{cell_w - 2}" '
                         f'height="{cell_h - 2}" fill="#c8413b" fill-opacity="{alpha:.2f}" '
                         f'stroke="#e3e6ea"/><text x="{left + c * cell_w + cell_w / 2 - 1}" '
                         f'y="{y + 16}" text-anchor="middle" class="tick" style="fill:{ink}">'
                         f'{_fmt(v) if v else "·"}</text>')
    parts.append(f'<text x="{left}" y="{height - 10}" class="axis">cells: {_esc(unit)}; '
                 f'rows: host, columns: metric</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-label="{_esc(title)}" '
            f'data-chart="{_esc(chart_id)}"><text x="{M_LEFT}" y="18" class="title">'
            f'{_esc(title)}</text>' + "".join(parts) + "</svg>")


# -- the charts of the report: what each shows and how many points it has --------------------

@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    points: Callable[[dict], int]


def _series_points(stream: str, column: str) -> Callable[[dict], int]:
    return lambda d: sum(1 for v in d["streams"][stream]["series"][column] if v)


CHARTS = [
    Chart("transactions_volume", "Transactions per step, with forecast",
          _series_points("transactions", "n")),
    Chart("transactions_amount", "Transaction amount per step, with forecast",
          _series_points("transactions", "amount")),
    Chart("applications_volume", "Applications per step, with forecast",
          _series_points("applications", "n")),
    Chart("applications_amount", "Requested amount per step, with forecast",
          _series_points("applications", "amount")),
    Chart("metrics_volume", "Metric samples per step, with forecast",
          _series_points("system-metrics", "n")),
    Chart("decline_rate", "Decline rate (the model's fraud rate) per step",
          lambda d: sum(1 for a, b in zip(d["streams"]["transactions"]["series"]["decline"],
                                          d["streams"]["transactions"]["series"]["review"],
                                          strict=True) if a or b)),
    Chart("transaction_decisions", "Transaction decisions per step",
          _series_points("transactions", "n")),
    Chart("transaction_scores", "Transaction score distribution",
          lambda d: sum(d["scores"]["transactions"]["current"])),
    Chart("application_decisions", "Application decisions per step",
          _series_points("applications", "n")),
    Chart("application_scores", "Application score distribution",
          lambda d: sum(d["scores"]["applications"]["current"])),
    Chart("application_products", "Application decline rate by product",
          lambda d: len(d["applications"]["by_product"])),
    Chart("anomalies_heatmap", "Anomalies per host and metric",
          lambda d: len(d["anomalies"]["by_host_metric"])),
    Chart("anomalies_over_time", "Metric anomalies per step",
          _series_points("system-metrics", "anomalies")),
    Chart("alerts_by_rule", "Alerts by rule and severity",
          lambda d: len(d["alerts"]["by_rule_severity"])),
    Chart("alerts_over_time", "Alerts per step, by severity",
          lambda d: sum(1 for k, vs in d["alerts"]["series"].items() if k != "t"
                        for v in vs if v)),
    Chart("model_quality", "Model quality on delayed labels (ROC AUC)",
          lambda d: len(d["model_quality"])),
]


def _step_name(step_s: int) -> str:
    return {HOUR_S: "hour", 900: "15 min", 60: "minute"}.get(step_s, f"{step_s} s")


def render_charts(data: dict) -> dict[str, str]:
    """Every chart of the report as an SVG string, by chart id."""
    p = data["period"]
    step = _step_name(p["step_s"])
    step_ms = p["step_s"] * 1000
    s = data["streams"]
    out: dict[str, str] = {}

    def volume(chart_id: str, stream: str, column: str, title: str, unit: str, color: str):
        series = s[stream]["series"]
        out[chart_id] = line_chart(chart_id, title, series["t"],
                                   [(f"actual ({stream})", series[column], color)],
                                   unit, s[stream]["forecast"][column], step_ms)

    volume("transactions_volume", "transactions", "n", "Transactions, with forecast",
           f"transactions per {step}", PALETTE[0])
    volume("transactions_amount", "transactions", "amount",
           "Transaction amount (merchant currencies, not converted), with forecast",
           f"amount per {step}", PALETTE[2])
    volume("applications_volume", "applications", "n", "Applications, with forecast",
           f"applications per {step}", PALETTE[3])
    volume("applications_amount", "applications", "amount",
           "Requested amount (applications), with forecast", f"requested per {step}",
           PALETTE[5])
    volume("metrics_volume", "system-metrics", "n", "Metric samples, with forecast",
           f"samples per {step}", PALETTE[8])
    tx = s["transactions"]["series"]
    rate = [100 * d / n if n else None for d, n in zip(tx["decline"], tx["n"], strict=True)]
    review = [100 * r / n if n else None for r, n in zip(tx["review"], tx["n"], strict=True)]
    out["decline_rate"] = line_chart(
        "decline_rate", "Decline rate and review rate of transactions", tx["t"],
        [("declined %", rate, DECISION_COLORS["decline"]),
         ("sent to review %", review, DECISION_COLORS["review"])], "% of transactions", None,
        step_ms)
    for stream, chart_id in (("transactions", "transaction_decisions"),
                             ("applications", "application_decisions")):
        series = s[stream]["series"]
        out[chart_id] = stacked_bars(
            chart_id, f"{stream.capitalize()}: decisions per {step}", series["t"],
            [(d, series[d], DECISION_COLORS[d]) for d in DECISIONS], f"{stream} per {step}",
            step_ms)
    for stream, chart_id in (("transactions", "transaction_scores"),
                             ("applications", "application_scores")):
        sc = data["scores"][stream]
        out[chart_id] = histogram_chart(
            chart_id, f"{stream.capitalize()}: score distribution (PSI {_fmt_psi(sc['psi'])})",
            sc["bins"], [("previous period", sc["previous"], "#aab4be"),
                         ("this period", sc["current"], PALETTE[0])],
            "% of scored events", "score (0 = genuine, 1 = fraud)")
    products = data["applications"]["by_product"]
    out["application_products"] = hbar_chart(
        "application_products", "Applications: decline rate by product (%)",
        [f"{r['product']} ({r['applications']})" for r in products],
        [100 * (r["decline_rate"] or 0) for r in products],
        [PALETTE[i % len(PALETTE)] for i in range(len(products))],
        "% of applications declined (applications in brackets)")
    by = data["anomalies"]["by_host_metric"]
    hosts = sorted({r["host"] for r in by})
    metrics = sorted({r["metric"] for r in by})
    out["anomalies_heatmap"] = heatmap(
        "anomalies_heatmap", "Metric anomalies per host and metric", hosts, metrics,
        {(r["host"], r["metric"]): r["anomalies"] for r in by}, "anomalies in the period")
    ms = s["system-metrics"]["series"]
    out["anomalies_over_time"] = stacked_bars(
        "anomalies_over_time", f"Metric anomalies per {step}", ms["t"],
        [("anomalies", ms["anomalies"], "#c8413b")], f"anomalies per {step}", step_ms)
    rules = data["alerts"]["by_rule_severity"]
    out["alerts_by_rule"] = hbar_chart(
        "alerts_by_rule", "Alerts fired, by rule and severity",
        [f"{r['rule']} ({r['severity']})" for r in rules], [r["alerts"] for r in rules],
        [SEVERITY_COLORS.get(r["severity"], PALETTE[0]) for r in rules], "alerts fired")
    al = data["alerts"]["series"]
    out["alerts_over_time"] = stacked_bars(
        "alerts_over_time", f"Alerts fired per {step}, by severity", al["t"],
        [(sev, al[sev], SEVERITY_COLORS.get(sev, PALETTE[i % len(PALETTE)]))
         for i, sev in enumerate(k for k in al if k != "t")], f"alerts per {step}", step_ms)
    mq = data["model_quality"]
    if mq:
        keys = sorted({(r["stream"], r["role"], r["model_version"]) for r in mq})
        times = sorted({r["t"] for r in mq})
        lines = []
        for i, key in enumerate(keys):
            by_t = {r["t"]: r["roc_auc"] for r in mq
                    if (r["stream"], r["role"], r["model_version"]) == key}
            lines.append((f"{key[0]} {key[1]} {key[2]}", [by_t.get(t) for t in times],
                          PALETTE[i % len(PALETTE)]))
        out["model_quality"] = line_chart("model_quality", "Model quality: ROC AUC on delayed "
                                          "labels", times, lines, "ROC AUC (0.5 = chance)")
    return out


def _fmt_psi(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# -- HTML -----------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2329;
margin:0;background:#f5f6f8}
header{background:#1d2c3f;color:#fff;padding:18px 32px}
header h1{margin:0 0 4px;font-size:22px} header p{margin:0;color:#c6d0db}
main{max-width:1180px;margin:0 auto;padding:8px 24px 48px}
section{background:#fff;border:1px solid #e3e6ea;border-radius:8px;margin:18px 0;padding:14px 20px}
h2{font-size:18px;margin:4px 0 10px} h3{font-size:15px;margin:14px 0 6px}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:10px}
.tile{background:#fff;border:1px solid #e3e6ea;border-radius:8px;padding:10px 14px}
.tile .v{font-size:24px;font-weight:600} .tile .l{color:#56606b;font-size:12px}
.up{color:#b0361f}.down{color:#2c7a4b}.flat{color:#56606b}
figure{margin:8px 0 14px} figcaption{color:#56606b;font-size:12px;max-width:760px}
svg{max-width:100%;height:auto;background:#fff}
svg .title{font:600 14px system-ui,sans-serif;fill:#1d2329}
svg .tick{font:11px system-ui,sans-serif;fill:#3d4650}
svg .axis{font:12px system-ui,sans-serif;fill:#56606b}
svg .legend{font:12px system-ui,sans-serif;fill:#1d2329}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{padding:3px 10px;border-bottom:1px solid #e9ecef;text-align:right}
th:first-child,td:first-child{text-align:left} th{background:#f0f2f5}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:0 24px}
.empty{color:#56606b;font-style:italic;padding:12px;background:#f5f6f8;border-radius:6px}
.status-stable{color:#2c7a4b}.status-shift,.status-change,.status-moderate{color:#a86b00}
.status-large,.status-significant{color:#b0361f;font-weight:600}
nav a{color:#c6d0db;margin-right:12px;font-size:13px}
"""


def _table(rows: list[dict], columns: list[str] | None = None, empty: str = "no data yet") -> str:
    if not rows:
        return f'<p class="empty">{_esc(empty)}</p>'
    columns = columns or list(rows[0])
    head = "".join(f"<th>{_esc(c.replace('_', ' '))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_esc(_cell(r.get(c)))}</td>" for c in columns)
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT.*", v):
        return v[:16].replace("T", " ")
    return str(v)


def _figure(svg: str | None, caption: str, empty: str = "no data yet") -> str:
    if svg is None:
        return f'<p class="empty">{_esc(empty)}</p>'
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


def _delta(previous: float, current: float) -> str:
    if not previous:
        return '<span class="flat">no previous period</span>'
    change = (current - previous) / previous
    cls = "up" if change > 0.005 else "down" if change < -0.005 else "flat"
    return f'<span class="{cls}">{change:+.1%} vs previous</span>'


def _forecast_caption(f: dict, unit: str, step: str) -> str:
    level = f["mae"] / f["mape"] if f["mae"] and f["mape"] else None

    def shown(e: float | None) -> str:
        if e is None:
            return "n/a"
        return "diverged" if level and e > 100 * level else _fmt(e)

    errors = ", ".join(f"{name}: {shown(e)}" for name, e in f["errors"].items())
    total = sum(f["values"])
    mape = "" if f["mape"] is None else f" ({f['mape']:.0%} of the mean level)"
    mae = "not measurable yet" if f["mae"] is None else f"{_fmt(f['mae'])} {unit}{mape}"
    return (f"Next {len(f['values'])} {step}s: {_esc(_fmt(total))} {unit} expected in total. "
            f"Model: <b>{_esc(f['model'])}</b>, chosen by its online error (mean absolute "
            f"error per {step} over all lead times): {_esc(mae)}. All candidates: "
            f"{_esc(errors)}. The band is the 10-90 % range of its own past errors.")


def render_html(data: dict) -> str:
    """The report as one self-contained HTML page."""
    charts = render_charts(data)
    p, cur, prev = data["period"], data["totals"], data["previous_totals"]
    step = _step_name(p["step_s"])
    tx, app = cur["transactions"], cur["applications"]

    def tile(label: str, value: str, delta: str) -> str:
        return (f'<div class="tile"><div class="l">{label}</div><div class="v">{value}</div>'
                f'{delta}</div>')

    def rate(d: dict) -> float:
        return d["decline"] / d["n"] if d["n"] else 0.0

    tiles = "".join([
        tile("transactions", f"{tx['n']:,}", _delta(prev["transactions"]["n"], tx["n"])),
        tile("transaction amount", _fmt(tx["amount"]),
             _delta(prev["transactions"]["amount"], tx["amount"])),
        tile("decline rate", f"{rate(tx):.2%}",
             _delta(rate(prev["transactions"]), rate(tx))),
        tile("applications", f"{app['n']:,}", _delta(prev["applications"]["n"], app["n"])),
        tile("metric anomalies", f"{cur['anomalies']['n']:,}",
             _delta(prev["anomalies"]["n"], cur["anomalies"]["n"])),
        tile("alerts fired", f"{cur['alerts']['n']:,}",
             _delta(prev["alerts"]["n"], cur["alerts"]["n"])),
    ])
    s = data["streams"]
    fc = {(stream, col): s[stream]["forecast"][col]
          for stream in s for col in s[stream]["forecast"]}
    drift_rows = [{**r, "status": r["status"]} for r in data["drift"]]
    drift = "<table><thead><tr><th>measure</th><th>previous period</th><th>this period</th>" \
            "<th>change</th><th>reading</th></tr></thead><tbody>"
    for r in drift_rows:
        change = r["change"]
        if change is None:
            shown = "—"
        elif "PSI" in r["measure"]:
            shown = f"PSI {change:.3f}"
        elif "rate" in r["measure"]:
            shown = f"{change * 100:+.2f} pp"
        else:
            shown = f"{change:+.1%}"
        cls = "status-" + r["status"].split()[0]
        prev_v = r["previous"]
        cur_v = r["current"]
        if "rate" in r["measure"]:
            prev_v = None if prev_v is None else f"{prev_v:.2%}"
            cur_v = None if cur_v is None else f"{cur_v:.2%}"
        drift += (f"<tr><td>{_esc(r['measure'])}</td><td>{_esc(_cell(prev_v))}</td>"
                  f"<td>{_esc(_cell(cur_v))}</td><td>{_esc(shown)}</td>"
                  f'<td class="{cls}">{_esc(r["status"])}</td></tr>')
    drift += "</tbody></table>"
    mq = data["model_quality"]
    sections = [
        ("overview", "At a glance", f'<div class="tiles">{tiles}</div>'),
        ("changes", "What changed since the previous period",
         drift + "<p class='empty'>PSI (population stability index) compares this period's "
         "score distribution with the previous one: below 0.1 stable, 0.1-0.25 a moderate "
         "shift, above 0.25 a significant one: check the model and the traffic mix.</p>"),
        ("volumes", "Volumes and amounts, with forecasts",
         _figure(charts["transactions_volume"],
                 _forecast_caption(fc[("transactions", "n")], "transactions", step))
         + _figure(charts["transactions_amount"],
                   _forecast_caption(fc[("transactions", "amount")], "(amount)", step))
         + _figure(charts["applications_volume"],
                   _forecast_caption(fc[("applications", "n")], "applications", step))
         + _figure(charts["applications_amount"],
                   _forecast_caption(fc[("applications", "amount")], "(requested)", step))
         + _figure(charts["metrics_volume"],
                   _forecast_caption(fc[("system-metrics", "n")], "samples", step))),
        ("fraud", "Fraud",
         _figure(charts["decline_rate"], "Share of transactions the model declined or sent to "
                 "review. Labels are delayed and not in the lake: this is the model's view.")
         + _figure(charts["transaction_decisions"], "Decisions of the fraud model.")
         + _figure(charts["transaction_scores"], "This period against the previous one; "
                   "a shift to the right is more risk, or a drifting model.")
         + '<div class="grid"><div><h3>By channel</h3>'
         + _table(data["fraud"]["by_channel"]) + "</div><div><h3>Countries with the most "
         "declines</h3>" + _table(data["fraud"]["by_country"]) + "</div></div>"
         + "<h3>Reasons of declines and reviews</h3>" + _table(data["fraud"]["reasons"])),
        ("applications", "Application risk",
         _figure(charts["application_decisions"], "Decisions of the application model.")
         + _figure(charts["application_scores"], "This period against the previous one.")
         + _figure(charts["application_products"] if data["applications"]["by_product"]
                   else None, "Decline rate per product.")
         + "<h3>By product</h3>" + _table(data["applications"]["by_product"])
         + "<h3>Riskiest e-mail domains (3+ applications)</h3>"
         + _table(data["applications"]["by_email_domain"])),
        ("anomalies", "Anomalies per host and metric",
         _figure(charts["anomalies_heatmap"] if data["anomalies"]["by_host_metric"] else None,
                 "Count of anomalous samples (score at or above the anomaly threshold).",
                 "no anomalies in this period")
         + _figure(charts["anomalies_over_time"], "Anomalous samples over time.")
         + "<h3>By reason</h3>" + _table(data["anomalies"]["by_reason"],
                                         empty="no anomalies in this period")),
        ("alerts", "Alerts by rule and severity",
         _figure(charts["alerts_by_rule"] if data["alerts"]["by_rule_severity"] else None,
                 f"Firing notifications; {data['alerts']['resolved']:,} resolved in the "
                 "period.", "no alerts in this period")
         + _figure(charts["alerts_over_time"], "Alerts fired over time.")
         + _table(data["alerts"]["by_rule_severity"], empty="no alerts in this period")),
        ("quality", "Model quality over time",
         _figure(charts.get("model_quality"), "Computed on delayed labels (champion and "
                 "challenger).", "no data yet: model quality appears once delayed labels "
                 "have been evaluated (table model_quality)")
         + (_table([{"time": _iso(r["t"])[:16].replace("T", " "),
                     **{k: v for k, v in r.items() if k != "t"}} for r in mq[-20:]])
            if mq else "")),
        ("top", "Top merchants, cards and hosts",
         "<h3>Merchants by declines</h3>" + _table(data["top"]["merchants"])
         + "<h3>Cards by declines</h3>" + _table(data["top"]["cards"])
         + "<h3>Hosts by anomalies</h3>" + _table(data["top"]["hosts"],
                                                  empty="no anomalies in this period")),
    ]
    nav = "".join(f'<a href="#{sid}">{_esc(title)}</a>' for sid, title, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{_esc(title)}</h2>{content}</section>'
                   for sid, title, content in sections)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>riskstream report {p['start'][:16]} – {p['end'][:16]}</title>"
        f"<style>{CSS}</style></head><body><header><h1>riskstream report</h1>"
        f"<p>{_esc(p['start'][:16].replace('T', ' '))} – {_esc(p['end'][:16].replace('T', ' '))}"
        f" UTC ({_esc(_duration(p['since_s']))}, by {step}) · forecast "
        f"{_esc(_duration(p['horizon_s']))} ahead · compared with "
        f"{_esc(data['previous_period']['start'][:16].replace('T', ' '))} – "
        f"{_esc(data['previous_period']['end'][:16].replace('T', ' '))} · source: "
        f"{_esc(data['source'])} · generated {_esc(data['generated_at'][:19].replace('T', ' '))}"
        f" UTC</p><nav>{nav}</nav></header><main>{body}</main></body></html>")


def _duration(seconds: int) -> str:
    for unit, n in (("w", 7 * DAY_S), ("d", DAY_S), ("h", HOUR_S), ("m", 60)):
        if seconds % n == 0:
            return f"{seconds // n}{unit}"
    return f"{seconds}s"


# -- writing and scheduling -----------------------------------------------------------------

def write_report(source, out_dir: Path, *, since_s: int, horizon_s: int,
                 now_ms: int | None = None, progress: Progress | None = _stderr_progress
                 ) -> tuple[Path, Path]:
    """Build the report; write ``report-<UTC stamp>.{html,json}`` and ``latest.{html,json}``
    atomically into ``out_dir``; return the paths of the stamped files."""
    data = collect(source, since_s=since_s, horizon_s=horizon_s, now_ms=now_ms,
                   progress=progress)
    page = render_html(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(data["generated_at"]).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(data, indent=1, sort_keys=True)
    paths = []
    for name, content in ((f"report-{stamp}.html", page), (f"report-{stamp}.json", text),
                          ("latest.html", page), ("latest.json", text)):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(content)
        tmp.replace(out_dir / name)
        paths.append(out_dir / name)
    return paths[0], paths[1]


def report_loop(open_source: Callable[[], Any], out_dir: Path, *, since_s: int, horizon_s: int,
                every_s: float | None, stop: threading.Event,
                written: Callable[[Path, Path, float], None],
                failed: Callable[[Exception], None],
                progress: Progress | None = _stderr_progress) -> None:
    """Write a report now and, with ``every_s``, again every ``every_s`` until ``stop``.

    The next report starts ``every_s`` after the last one started (a slow report does not
    drift the schedule; one longer than ``every_s`` runs back to back). On a schedule a failed
    report (or a source that cannot be opened yet: a server still starting) is passed to
    ``failed`` and the next one runs on time; a single report's failure raises.
    """
    source = None
    try:
        while True:
            t0 = time.monotonic()
            try:
                if source is None:
                    source = open_source()
                html_path, json_path = write_report(source, out_dir, since_s=since_s,
                                                    horizon_s=horizon_s, progress=progress)
                written(html_path, json_path, time.monotonic() - t0)
            except Exception as exc:  # on a schedule: reported, and the next one runs on time
                if not every_s:
                    raise
                failed(exc)
            if not every_s or stop.wait(max(0.0, every_s - (time.monotonic() - t0))):
                return
    finally:
        if source is not None:
            source.close()


def run_report(args, settings) -> int:
    since_s = parse_duration_s(args.since)
    horizon_s = parse_duration_s(args.horizon)
    every_s = parse_duration_s(args.every) if args.every else None
    out_dir = Path(args.out)
    stop = threading.Event()
    if every_s:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())

    def written(html_path: Path, json_path: Path, seconds: float) -> None:
        print(f"report: {html_path}\nreport: {json_path}\n"
              f"report: latest at {out_dir / 'latest.html'} ({seconds:.1f} s)", flush=True)
        if every_s:
            print(f"report: next in {max(0.0, every_s - seconds):.0f} s (Ctrl-C stops)",
                  flush=True)

    def failed(exc: Exception) -> None:
        print(f"report: failed: {exc}; the next one runs on time", file=sys.stderr, flush=True)

    report_loop(lambda: open_source(settings, url=args.clickhouse, lake=args.lake), out_dir,
                since_s=since_s, horizon_s=horizon_s, every_s=every_s, stop=stop,
                written=written, failed=failed)
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="a predictive HTML report (and JSON) over the lake or "
                                      "the warehouse")
    p.add_argument("--since", default="7d", help="period covered, e.g. 7d, 24h (default 7d)")
    p.add_argument("--horizon", default="24h", help="forecast horizon (default 24h)")
    p.add_argument("--out", default="var/reports", help="output directory (default "
                                                         "var/reports)")
    p.add_argument("--clickhouse", default=None, metavar="URL",
                   help="a ClickHouse server, e.g. http://user:password@host:8123 "
                        "(default: chDB over the lake)")
    p.add_argument("--lake", default=None, help="the lake (default RISKSTREAM_LAKE_PATH)")
    p.add_argument("--every", default=None, metavar="DURATION",
                   help="run again every DURATION (e.g. 1h) until stopped")
    p.set_defaults(func=run_report)
