"""The whole pipeline on the embedded broker: worker, sink and dispatcher as real processes.

A few thousand events go in, malformed and duplicate ones among them, and we check what a
user checks: every valid event is in the lake exactly once, every invalid one is in
dead-letter with its reason, alerts reach an HTTP receiver, `riskstream sql` counts them, and
no raw PII is anywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from factories import make_application, make_label, make_metric, make_transaction, now_ms
from pipelines.broker import EmbeddedBroker, ensure_topics
from processes import ROOT, Process, wait_until
from sinks.clickhouse import query_rows

pytestmark = pytest.mark.integration

N_TXN, N_APP, N_MET = 2_000, 200, 400
SPIKE = 350
SSN = "219-09-9999"
LEGAL_NAME = "Zebulon Quixote Marchbanks"


class Receiver:
    """A local webhook receiver: records every POSTed JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.bodies.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()


def produce_inputs(bootstrap: str) -> dict:
    """Publish the test's events; return what a correct pipeline must make of them."""
    t0 = now_ms() - 600_000  # ten minutes ago: windows close within the run
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    expected = {"txn": [], "app": [], "met": [], "rejected": {}, "duplicates": 0}

    def send(topic: str, key: str, value: bytes) -> None:
        producer.produce(topic, key=key.encode(), value=value)

    for i in range(N_TXN):
        event = make_transaction(now_ms=t0 + i * 100, event_id=f"txn-{i}", card_id=f"card-{i % 97}",
                                 merchant_id=f"merch-{i % 13}", amount=10.0 + i % 50)
        send("transactions", event["card_id"], orjson.dumps(event))
        expected["txn"].append(event["event_id"])
        if i % 250 == 0:  # the producer retries: the same bytes again
            send("transactions", event["card_id"], orjson.dumps(event))
            expected["duplicates"] += 1
    for i in range(N_APP):
        event = make_application(now_ms=t0 + i * 1000, event_id=f"app-{i}",
                                 applicant_id=f"applicant-{i}", ssn=SSN, legal_name=LEGAL_NAME)
        send("applications", event["applicant_id"], orjson.dumps(event))
        expected["app"].append(event["event_id"])
    for i in range(N_MET):
        # Quiet samples past the detector's warm-up, then one spike on web-1/cpu: the anomaly
        # rule must fire.
        value = 95.0 if i == SPIKE else 40.0 + (i % 5)
        event = make_metric(now_ms=t0 + i * 1000, event_id=f"met-{i}", value=value)
        send("system-metrics", "web-1/cpu", orjson.dumps(event))
        expected["met"].append(event["event_id"])
    send("labels", "card-1", orjson.dumps(make_label(target_event_id="txn-1", key="card-1")))
    bad = {
        "invalid_json": b'{"event_id": "x", ',
        "schema": orjson.dumps(make_transaction(event_id="neg", amount=-12.5)),
        "oversize": orjson.dumps(make_transaction(event_id="big", merchant_id="m" * 70_000)),
        "future": orjson.dumps(make_transaction(event_id="fut", event_time=now_ms() + 86_400_000)),
    }
    for kind, value in bad.items():
        send("transactions", "card-bad", value)
        expected["rejected"][kind] = 1
    bad_app = make_application(event_id="bad-ssn", ssn="000-12-3456", legal_name=LEGAL_NAME)
    send("applications", "applicant-bad", orjson.dumps(bad_app))
    expected["rejected"]["schema"] += 1
    producer.flush(30)
    return expected


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    receiver = Receiver()
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, partitions=4)
        env = {"RISKSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
               "RISKSTREAM_LAKE_PATH": str(tmp / "lake"),
               "RISKSTREAM_STATE_DIR": str(tmp / "state"),
               "RISKSTREAM_LAKE_FLUSH_INTERVAL_S": "1",
               "RISKSTREAM_ALERT_WEBHOOK_URL": receiver.url,
               "RISKSTREAM_PII_HMAC_KEY": "test-key-not-secret-but-long-enough-32b"}
        procs = [Process([name], env, tmp / f"{name}.log") for name in ("worker", "sink", "dispatch")]
        try:
            expected = produce_inputs(broker.bootstrap)
            lake = tmp / "lake"
            n_valid = N_TXN + N_APP + N_MET
            n_rejected = sum(expected["rejected"].values()) + expected["duplicates"]

            def landed():
                rows = query_rows(lake, "SELECT (SELECT count() FROM scored_transactions) + "
                                        "(SELECT count() FROM scored_applications) + "
                                        "(SELECT count() FROM metric_samples) AS n, "
                                        "(SELECT count() FROM dead_letter) AS d")[0]
                return rows if rows["n"] >= n_valid and rows["d"] >= n_rejected else None

            try:
                wait_until(landed, timeout_s=120, what="every event in the lake")
                wait_until(lambda: any(a.get("event_id") == f"met-{SPIKE}" for a in receiver.bodies),
                           timeout_s=60, what="the spike's alert at the receiver")
            except AssertionError:
                for p in procs:
                    print(f"---- {p.args[0]} log ----\n{p.log()[-4000:]}")
                raise
            yield {"lake": lake, "expected": expected, "receiver": receiver, "env": env,
                   "broker": broker, "procs": procs, "tmp": tmp}
        finally:
            for p in procs:
                p.stop()
            receiver.close()


def test_every_valid_event_is_in_the_lake_exactly_once(run):
    lake, expected = run["lake"], run["expected"]
    for table, ids in (("scored_transactions", expected["txn"]),
                       ("scored_applications", expected["app"]),
                       ("metric_samples", expected["met"])):
        row = query_rows(lake, f"SELECT count() AS n, uniqExact(event_id) AS u FROM {table}")[0]
        assert row == {"n": len(ids), "u": len(ids)}, table
        assert {r["event_id"] for r in query_rows(lake, f"SELECT event_id FROM {table}")} == set(ids)
    scores = query_rows(lake, "SELECT min(score) AS lo, max(score) AS hi FROM scored_transactions")[0]
    assert 0.0 <= scores["lo"] <= scores["hi"] <= 1.0


def test_every_invalid_event_is_in_dead_letter_with_its_reason(run):
    lake, expected = run["lake"], run["expected"]
    rows = query_rows(lake, "SELECT kind, reason, event_id, source_topic, source_offset "
                            "FROM dead_letter")
    by_kind: dict[str, int] = {}
    for r in rows:
        by_kind[r["kind"]] = by_kind.get(r["kind"], 0) + 1
        assert r["reason"] and r["source_offset"] is not None
    assert by_kind == {**expected["rejected"], "duplicate": expected["duplicates"]}
    reasons = {r["event_id"]: r["reason"] for r in rows}
    assert reasons["neg"].startswith("amount:") and "-12.5" in reasons["neg"]
    assert reasons["bad-ssn"].startswith("ssn:")


def test_alerts_reach_the_webhook_and_the_lake(run):
    receiver = run["receiver"]
    spike = [a for a in receiver.bodies if a.get("event_id") == f"met-{SPIKE}"]
    assert spike and spike[0]["rule"] == "metric_anomaly"
    ids = [a["alert_id"] for a in receiver.bodies]
    assert len(ids) == len(set(ids))
    lake_alerts = wait_until(
        lambda: query_rows(run["lake"], "SELECT alert_id FROM alerts"), timeout_s=30,
        what="alerts in the lake")
    assert {r["alert_id"] for r in lake_alerts} >= set(ids)
    # ... and to the log: the dispatcher writes every alert there.
    dispatch = next(p for p in run["procs"] if p.args == ["dispatch"])
    assert "ALERT firing metric_anomaly" in dispatch.log()

    # every delivery is recorded in the lake: one 'delivered' row per alert the receiver got
    def delivered() -> list[dict]:
        rows = query_rows(run["lake"], "SELECT alert_id, channel, attempt, status_code "
                                       "FROM alert_deliveries WHERE outcome = 'delivered'")
        return rows if {r["alert_id"] for r in rows} >= set(ids) else []

    rows = wait_until(delivered, timeout_s=30, what="the deliveries in the lake")
    mine = sorted((r["alert_id"], r["channel"], r["status_code"]) for r in rows
                  if r["alert_id"] in set(ids))
    assert mine == sorted((i, "webhook", 204) for i in ids)


def test_windows_per_merchant_and_per_series_count_what_landed(run):
    """The closed one-minute windows (per merchant; per host and metric) count exactly the
    scored events of their group and minute. A window is emitted per input partition: a
    merchant's transactions are on every partition (keyed by card), so the group's minute is
    the sum of its rows."""
    lake = run["lake"]

    def closed() -> dict | None:
        got = {r["stream"]: r["n"] for r in query_rows(
            lake, "SELECT stream, count() AS n FROM aggregates GROUP BY stream")}
        return got if got.get("transactions") and got.get("system-metrics") else None

    wait_until(closed, timeout_s=60, what="closed windows of both streams in aggregates")
    rows = query_rows(lake, """
        SELECT a.stream AS stream, a.group_key AS group_key, a.ws AS ws, a.n AS windowed,
               e.n AS landed
        FROM (SELECT stream, group_key, toDateTime(window_start) AS ws, sum(count) AS n
              FROM aggregates WHERE stream IN ('transactions', 'system-metrics')
              GROUP BY stream, group_key, ws) AS a
        LEFT JOIN (
            SELECT 'transactions' AS stream, merchant_id AS group_key,
                   toDateTime(toStartOfMinute(event_time)) AS ws, count() AS n
            FROM scored_transactions GROUP BY group_key, ws
            UNION ALL
            SELECT 'system-metrics' AS stream, concat(host, '/', metric) AS group_key,
                   toDateTime(toStartOfMinute(event_time)) AS ws, count() AS n
            FROM metric_samples GROUP BY group_key, ws
        ) AS e USING (stream, group_key, ws)""")
    assert {r["stream"] for r in rows} == {"transactions", "system-metrics"}
    assert [r for r in rows if r["windowed"] != r["landed"]] == []
    assert {r["group_key"] for r in rows if r["stream"] == "system-metrics"} == {"web-1/cpu"}


def test_riskstream_sql_counts_the_lake(run):
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "sql", "SELECT count() AS n FROM scored_transactions",
         "--format", "json", "--lake", str(run["lake"])],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert json.loads(out.stdout.splitlines()[0])["n"] in (N_TXN, str(N_TXN))


def _topic_values(bootstrap: str, topics: list[str]) -> list[bytes]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "pii-check",
                  "enable.auto.commit": False})
    try:
        values = []
        for topic in topics:
            for p in c.list_topics(topic, timeout=10).topics[topic].partitions:
                c.assign([TopicPartition(topic, p, 0)])
                while batch := c.consume(5000, timeout=1.0):  # to the end of the partition
                    values += [m.value() or b"" for m in batch if not m.error()]
        return values
    finally:
        c.close()


def test_no_raw_pii_after_validation(run):
    """The raw SSN and legal name are in no topic after validation, no lake file, no log."""
    import pyarrow.parquet as pq

    from pipelines.topics import ALL_TOPICS, INPUT_TOPICS

    needles = [SSN.encode(), SSN.replace("-", "").encode(), LEGAL_NAME.encode()]
    downstream = [t for t in ALL_TOPICS if t not in INPUT_TOPICS]
    values = _topic_values(run["broker"].bootstrap, downstream)
    assert len(values) > N_APP  # the check saw the validated and scored applications
    for value in values:
        assert not any(n in value for n in needles), value[:200]
    for path in Path(run["tmp"]).rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            data = orjson.dumps(pq.read_table(path).to_pylist(), default=str)
        else:
            data = path.read_bytes()
        assert not any(n in data for n in needles), path
    apps = query_rows(run["lake"], "SELECT ssn_masked, name_hash FROM scored_applications LIMIT 1")
    assert apps[0]["ssn_masked"] == "***-**-9999" and len(apps[0]["name_hash"]) == 64
