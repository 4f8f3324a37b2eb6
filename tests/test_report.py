"""``riskstream report`` over a simulated fortnight: the report renders, every chart has data,
and its numbers are the SQL's over the same lake.

The lake is written by the real parts, without a broker: the simulator's messages, validated
by the real Validator, scored by the real scorers, alerts from the shipped rules, written by
the LakeWriter. To keep it fast and the models realistic, the traffic is simulated at the
simulator's own rate (200 events/s: card-testing bursts, velocity features and metric series
as in production, 24k events in two minutes) and its times are then stretched onto the
fortnight before ``NOW_MS``: ~12k events a week, scored as at full rate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from pipelines.report import (
    CHARTS, LakeSource, collect, parse_duration_s, period_for, psi, render_html,
)
from processes import ROOT
from sinks.clickhouse import query_rows

DAY_MS = 86_400_000
NOW_MS = 1_790_000_000_000 + 37 * 60_000  # mid-hour: the current hour is left out
DAYS = 14
EVENTS = 24_000


def simulate_lake(lake: Path, *, days: int = DAYS, events: int = EVENTS,
                  now_ms: int = NOW_MS, seed: int = 11) -> dict[str, int]:
    """Write ``days`` of simulated, validated and scored traffic ending at ``now_ms``."""
    from agents.alerting import AlertEngine, alert_row
    from agents.anomaly import MetricScorer
    from agents.fraud import ApplicationScorer, TransactionScorer
    from agents.rules import load_rules
    from pipelines.settings import PiiSettings, ValidationSettings
    from pipelines.simulator import SimConfig, Simulator
    from pipelines.topics import (
        ALERTS, APPLICATIONS, LABELS, METRIC_ANOMALIES, METRIC_SAMPLES, MODEL_QUALITY,
        SCORED_APPLICATIONS, SCORED_TRANSACTIONS, SYSTEM_METRICS, TRANSACTIONS,
    )
    from schemas.validation import Rejection, Validator
    from sinks.lake import LakeWriter

    start_ms = now_ms - days * DAY_MS
    sim_start_ms = 1_700_000_000_000
    config = SimConfig(seed=seed, n_cards=2_000, n_merchants=300, malformed_share=0.0,
                       duplicate_share=0.0, metric_hosts=2, metric_anomaly_share=0.03)
    validator = Validator(ValidationSettings(max_age_s=10 * 365 * 86_400),
                          PiiSettings(hmac_key=SecretStr("k" * 32)))
    # The fraud scorer stays on its detector's calibrated rank (its first phase): two
    # simulated minutes bring ~100 labels, too few for its classifier, which would then
    # score every transaction ~0.1 and leave a week without a decline to show.
    scorers = {TRANSACTIONS: TransactionScorer(seed=1, min_labels=10**9),
               APPLICATIONS: ApplicationScorer(seed=1)}
    # 2 hosts' 12 series get ~600 samples each: warm up on 100 of them, not the default 300.
    metric_scorer = MetricScorer(warmup=100)
    rules = load_rules(params={"score_threshold": 0.9, "anomaly_threshold": 0.99})
    engine = AlertEngine(rules, dashboard_url="http://127.0.0.1:3000")
    out: dict[str, list[dict]] = {t: [] for t in (SCORED_TRANSACTIONS, SCORED_APPLICATIONS,
                                                  METRIC_SAMPLES, METRIC_ANOMALIES, ALERTS)}
    keys = {TRANSACTIONS: "card_id", APPLICATIONS: "applicant_id"}
    n = 0
    for message in Simulator(config, sim_start_ms).messages():
        t = message.event_time_ms
        n += 1
        if n > events:
            break
        event = validator.validate(message.topic, message.value, now_ms=t)
        if isinstance(event, Rejection):
            continue
        event.pop("stream")
        if message.topic == LABELS:
            scorer = scorers.get(event["target_stream"])
            if scorer is not None:
                scorer.learn_label(event["target_event_id"], event["label"])
            continue
        if message.topic == SYSTEM_METRICS:
            record = metric_scorer.score_record(event, t + 3)
            entity = f"{event['host']}/{event['metric']}"
            out[METRIC_SAMPLES].append(record)
            if record["score"] >= metric_scorer.anomaly_threshold:
                out[METRIC_ANOMALIES].append(record)
        else:
            record = scorers[message.topic].score_record(event, t + 5)
            entity = event[keys[message.topic]]
            out[SCORED_TRANSACTIONS if message.topic == TRANSACTIONS
                else SCORED_APPLICATIONS].append(record)
        alerts = engine.observe(message.topic, record, entity, t)
        if n % 100 == 0:  # the end of a batch, as in the worker
            alerts += [a for stream in (TRANSACTIONS, APPLICATIONS, SYSTEM_METRICS)
                       for a in engine.tick(stream, t)]
        out[ALERTS] += [alert_row(a) for a in alerts]
    # Stretch the simulated minutes onto the fortnight (every time column of every record).
    factor = days * DAY_MS / (t - sim_start_ms)

    def stretch(ms: int | None) -> int | None:
        return None if ms is None else start_ms + int((ms - sim_start_ms) * factor)

    # (an anomaly is the same dict as its sample: stretch each record once)
    for r in {id(r): r for records in out.values() for r in records}.values():
        for column in ("event_time", "scored_at", "created_at"):
            if column in r:
                r[column] = stretch(r[column])
    # Model quality once a day (the evaluation job is not part of this test): plausible rows.
    out[MODEL_QUALITY] = [
        {"model_version": "fraud-v1", "stream": "transactions", "role": role,
         "window_end": start_ms + d * DAY_MS, "n": 400 + d, "positives": 12,
         "roc_auc": 0.86 + 0.004 * d - 0.03 * (role == "challenger"),
         "average_precision": 0.4 + 0.01 * d, "precision_at_review": 0.3,
         "recall_at_review": 0.7, "computed_at": start_ms + d * DAY_MS + 1000}
        for d in range(1, days + 1) for role in ("champion", "challenger")]
    # A test lake need not survive a power cut: fsync is most of the time of ~1,000 files.
    with pytest.MonkeyPatch.context() as mp, LakeWriter(lake) as writer:
        mp.setattr("sinks.lake.os.fsync", lambda fd: None)
        for topic, records in out.items():
            if records:
                writer.write(topic, records, {0: (0, len(records) - 1)})
    return {topic: len(records) for topic, records in out.items()}


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "lake"
    counts = simulate_lake(path)
    assert counts["scored-transactions"] > 5_000 and counts["metric-anomalies"], counts
    return path


@pytest.fixture(scope="module")
def report(lake) -> dict:
    return collect(LakeSource(lake), since_s=7 * 86_400, horizon_s=86_400, now_ms=NOW_MS,
                   progress=None)


def _sql(lake: Path, sql: str) -> list[dict]:
    return query_rows(lake, sql)


def test_every_chart_of_the_report_has_data(report):
    points = {c["id"]: c["points"] for c in report["charts"]}
    assert set(points) == {c.id for c in CHARTS}
    assert all(n > 0 for n in points.values()), points
    html = render_html(report)
    for chart in CHARTS:
        svg = re.search(rf'<svg [^>]*data-chart="{chart.id}".*?</svg>', html, re.S)
        assert svg, chart.id
        assert re.search(r"<(path|rect|polygon)\b", svg.group(0)), chart.id
        # A vertical axis title fits the plot's height (~190 px at 12 px: 30 characters).
        for label in re.findall(r'transform="rotate\(-90[^"]*">([^<]*)<', svg.group(0)):
            assert len(label) <= 30, (chart.id, label)
    # The darkest cells of the heat map are labelled in white (a style: the CSS class's fill
    # would win over a fill attribute).
    assert 'style="fill:#fff">' in re.search(r'data-chart="anomalies_heatmap".*?</svg>', html,
                                              re.S).group(0)


def test_the_report_is_self_contained(report):
    html = render_html(report)
    assert "<script" not in html
    # Nothing to fetch: no external stylesheet, image, font or script (the SVG namespace is
    # an identifier, not a fetch).
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    assert "@import" not in html and "url(" not in html


def test_volumes_decisions_and_amounts_match_sql(report, lake):
    period = period_for(7 * 86_400, NOW_MS)
    where = (f"event_time >= fromUnixTimestamp64Milli(toInt64({period.start_ms}), 'UTC') "
             f"AND event_time < fromUnixTimestamp64Milli(toInt64({period.end_ms}), 'UTC')")
    expected = _sql(lake, f"""
        SELECT count() AS n, countIf(decision = 'decline') AS decline,
               round(sum(amount), 2) AS amount
        FROM scored_transactions WHERE {where}""")[0]
    series = report["streams"]["transactions"]["series"]
    assert len(series["t"]) == 7 * 24
    assert sum(series["n"]) == expected["n"] == report["totals"]["transactions"]["n"]
    assert sum(series["decline"]) == expected["decline"]
    assert round(sum(series["amount"]), 2) == pytest.approx(expected["amount"], abs=0.05)
    hourly = _sql(lake, f"""
        SELECT toInt64(toUnixTimestamp(toStartOfHour(event_time))) * 1000 AS hour,
               count() AS n
        FROM scored_applications WHERE {where} GROUP BY hour ORDER BY hour""")
    app = report["streams"]["applications"]["series"]
    by_t = dict(zip(app["t"], app["n"], strict=True))
    assert {r["hour"]: r["n"] for r in hourly} == {
        t: n for t, n in by_t.items() if n}
    anomalies = _sql(lake, f"SELECT count() AS n FROM metric_anomalies WHERE {where}")[0]["n"]
    assert sum(report["streams"]["system-metrics"]["series"]["anomalies"]) == anomalies > 0


def test_alerts_scores_and_drift_match_sql(report, lake):
    period = period_for(7 * 86_400, NOW_MS)
    rows = _sql(lake, f"""
        SELECT rule, severity, count() AS alerts FROM alerts
        WHERE created_at >= fromUnixTimestamp64Milli(toInt64({period.start_ms}), 'UTC')
          AND created_at < fromUnixTimestamp64Milli(toInt64({period.end_ms}), 'UTC')
          AND ifNull(status, 'firing') = 'firing'
        GROUP BY rule, severity ORDER BY rule, severity""")
    got = sorted((r["rule"], r["severity"], r["alerts"])
                 for r in report["alerts"]["by_rule_severity"])
    assert got == [(r["rule"], r["severity"], r["alerts"]) for r in rows] and got
    # The score histogram holds every scored transaction; PSI is recomputed from it.
    scores = report["scores"]["transactions"]
    assert sum(scores["current"]) == report["totals"]["transactions"]["n"]
    assert sum(scores["previous"]) == report["previous_totals"]["transactions"]["n"] > 0
    assert scores["psi"] == psi(scores["previous"], scores["current"])
    below_half = _sql(lake, f"""
        SELECT count() AS n FROM scored_transactions WHERE score < 0.5
          AND event_time >= fromUnixTimestamp64Milli(toInt64({period.start_ms}), 'UTC')
          AND event_time < fromUnixTimestamp64Milli(toInt64({period.end_ms}), 'UTC')""")[0]
    assert sum(scores["current"][:10]) == below_half["n"]
    drift = {r["measure"]: r for r in report["drift"]}
    tx = drift["transactions: count"]
    assert tx["previous"] == report["previous_totals"]["transactions"]["n"]
    assert tx["change"] == round((tx["current"] - tx["previous"]) / tx["previous"], 4)


def test_forecasts_cover_the_horizon_with_an_interval_and_an_error(report):
    for stream, columns in (("transactions", ["n", "amount"]), ("applications", ["n", "amount"]),
                            ("system-metrics", ["n"])):
        for column in columns:
            f = report["streams"][stream]["forecast"][column]
            assert len(f["values"]) == len(f["t"]) == 24
            assert f["t"][0] == report["period"]["end_ms"]
            assert all(lo <= v <= hi for lo, v, hi in zip(f["lower"], f["values"], f["upper"],
                                                         strict=True))
            assert f["mae"] is not None and f["mae"] == min(
                e for e in f["errors"].values() if e is not None), (stream, column, f["errors"])
    assert set(report["streams"]["transactions"]["forecast"]["n"]["errors"]) == {
        "seasonal naive", "Holt-Winters", "SNARIMAX"}


def test_an_empty_lake_gives_a_report_that_says_no_data_yet(tmp_path):
    data = collect(LakeSource(tmp_path / "lake"), since_s=86_400, horizon_s=6 * 3600,
                   now_ms=NOW_MS, progress=None)
    html = render_html(data)
    assert "no data yet" in html
    assert data["model_quality"] == [] and data["totals"]["transactions"]["n"] == 0
    assert data["streams"]["transactions"]["forecast"]["n"]["values"] == [0.0] * 24


def test_a_source_reused_by_a_schedule_sees_the_files_written_since(lake, report, tmp_path):
    """`--every` and the worker's schedule keep one source: each report lists the lake again
    (the views name files: without it, new files go unseen and compacted ones fail)."""
    later = tmp_path / "lake"
    source = LakeSource(later)
    try:
        first = collect(source, since_s=7 * 86_400, horizon_s=3600, now_ms=NOW_MS,
                        progress=None)
        shutil.copytree(lake, later, dirs_exist_ok=True)
        second = collect(source, since_s=7 * 86_400, horizon_s=3600, now_ms=NOW_MS,
                         progress=None)
    finally:
        source.close()
    assert first["totals"]["transactions"]["n"] == 0
    assert second["totals"] == report["totals"]


COMPARED = ("streams", "totals", "previous_totals", "scores", "fraud", "applications",
            "anomalies", "alerts", "model_quality", "top", "drift")


def warehouse_report(lake: Path, warehouse: Path, now_ms: int) -> dict:
    """The report through ``ServerSource`` on the warehouse's schema (migrations, MergeTree
    tables, ``final = 1``), in chDB's embedded database loaded from ``lake``: the SQL that
    ``--clickhouse URL`` sends a server. (Its own process: chDB opens one path per process.)"""
    from pipelines.report import ServerSource
    from sinks.clickhouse import STRUCTURE_OF_TABLE, _literal
    from sinks.lake import visible_files
    from sinks.warehouse import ChdbTarget, migrate

    target = ChdbTarget(warehouse)
    migrate(target)
    for table, structure in STRUCTURE_OF_TABLE.items():
        files = visible_files(lake.resolve(), table)
        if not files:
            continue
        present = {r["name"] for r in target.query(f"DESCRIBE TABLE {table}")}
        columns = ", ".join(c for c in re.findall(r"(?:^|, )(\w+) ", structure) if c in present)
        paths = f"{lake.resolve()}/{table}/{{" + ",".join(files) + "}"
        target.command(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM "
                       f"file({_literal(paths)}, Parquet, {_literal(structure)})")
    source = ServerSource(target, "warehouse")  # a server's source, on the chDB target
    data = collect(source, since_s=7 * 86_400, horizon_s=86_400, now_ms=now_ms, progress=None)
    return {k: data[k] for k in COMPARED}


def test_the_same_report_on_the_warehouse_schema(report, lake, tmp_path):
    code = ("import json, sys; from pathlib import Path; "
            "from test_report import warehouse_report; "
            "print(json.dumps(warehouse_report(Path(sys.argv[1]), Path(sys.argv[2]), "
            "int(sys.argv[3]))))")
    out = subprocess.run(
        [sys.executable, "-c", code, str(lake), str(tmp_path / "warehouse"), str(NOW_MS)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    assert out.returncode == 0, out.stderr[-3000:]
    on_server = json.loads(out.stdout)
    assert on_server["totals"]["transactions"]["n"] > 5_000
    for key in COMPARED:
        assert on_server[key] == json.loads(json.dumps(report[key])), key


def test_a_schedule_survives_a_source_that_cannot_be_opened_yet(lake, tmp_path):
    """The server is still starting: that report fails, is reported, and the next one runs."""
    import threading

    from pipelines.report import LakeSource, report_loop

    opened, failures, written = [], [], []
    stop = threading.Event()

    def open_source():
        opened.append(1)
        if len(opened) == 1:
            raise ConnectionRefusedError("ClickHouse is not up yet")
        return LakeSource(lake)

    def on_written(html_path, json_path, seconds):
        written.append(html_path)
        stop.set()

    report_loop(open_source, tmp_path / "out", since_s=86_400, horizon_s=3600, every_s=0.01,
                stop=stop, written=on_written, failed=failures.append, progress=None)
    assert [str(e) for e in failures] == ["ClickHouse is not up yet"]
    assert len(written) == 1 and written[0].exists() and len(opened) == 2
    # A single report (no schedule) raises instead.
    with pytest.raises(ConnectionRefusedError):
        opened.clear()
        report_loop(open_source, tmp_path / "out", since_s=86_400, horizon_s=3600,
                    every_s=None, stop=stop, written=on_written, failed=failures.append)


def test_the_cli_writes_html_and_json_with_progress(lake, tmp_path):
    out = tmp_path / "reports"
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "report", "--since", "2d", "--horizon", "6h",
         "--lake", str(lake), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "report: [1/9]" in result.stderr and "report: [9/9]" in result.stderr
    html_files = sorted(out.glob("report-*.html"))
    assert len(html_files) == 1 and (out / "latest.html").exists()
    data = json.loads((out / "latest.json").read_text())
    assert data["period"]["since_s"] == 2 * 86_400 and data["period"]["horizon_steps"] == 6


def test_durations():
    assert parse_duration_s("1h") == 3600
    with pytest.raises(Exception, match="duration like 7d"):
        parse_duration_s("7 days")


def test_a_screenshot_of_the_report(report, tmp_path_factory):
    """Render the report in headless Chromium (for people to look at; saved to a tmp file)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not found: `apt-get install chromium` (make test tries to)")
    root = tmp_path_factory.mktemp("report-shot")
    page = root / "report.html"
    page.write_text(render_html(report))
    shot = root / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={root / 'profile'}", "--hide-scrollbars",
                    "--window-size=1280,6000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=60, check=False)
    assert shot.exists() and shot.stat().st_size > 50_000
    print(f"report screenshot: {shot}")
