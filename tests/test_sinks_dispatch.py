"""The dispatcher on the embedded broker: retries, dead-letter, silences, routes, every attempt
recorded, and a dispatcher killed in the middle that does not resend what it delivered."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from agents.rules import RuleSet, parse_rules
from pipelines.broker import EmbeddedBroker, ensure_topics
from pipelines.settings import AlertSettings, Settings
from processes import Process, wait_until
from sinks.channels.webhook import WebhookChannel
from sinks.dispatch import Dispatcher
from sinks.silences import Silence, SilenceStore
from test_sinks_channels import make_alert

pytestmark = pytest.mark.integration


class Receiver:
    """An HTTP receiver scripted per request: ``script(n)`` -> status (n counts from 1), or
    ``"block"`` to hold the request until ``release`` is set (a dispatcher killed mid-send)."""

    def __init__(self, script=lambda n: 204) -> None:
        self.attempts: list[str] = []      # alert ids of every request, in order
        self.accepted: list[str] = []      # alert ids answered 2xx
        self.blocked = threading.Event()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.attempts.append(body["alert_id"])
                status = script(len(receiver.attempts))
                if status == "block":
                    receiver.blocked.set()
                    receiver.release.wait(60)
                    status = 503
                if status < 300:
                    receiver.accepted.append(body["alert_id"])
                try:
                    self.send_response(status)
                    self.end_headers()
                except OSError:
                    pass  # the sender is gone

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def broker():
    with EmbeddedBroker() as b:
        ensure_topics(b.bootstrap, partitions=2)
        yield b


def settings(**alert) -> Settings:
    s = Settings()
    s.alert = AlertSettings(**{"max_attempts": 5, "backoff_s": 0.01, **alert})
    return s


def records(bootstrap: str, topic: str, where, count: int) -> list[dict]:
    """The records of ``topic`` that satisfy ``where``, once at least ``count`` of them are readable
    (a fresh consumer's first fetch can come back empty: wait on the condition, not one poll)."""
    def matching() -> list[dict]:
        found = [r for r in read_topic(bootstrap, topic) if where(r)]
        return found if len(found) >= count else []
    return wait_until(matching, timeout_s=30, what=f"{count} matching records on {topic}")


def read_topic(bootstrap: str, topic: str) -> list[dict]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{time.monotonic()}",
                  "enable.auto.commit": False})
    out = []
    try:
        for p in c.list_topics(topic, timeout=10).topics[topic].partitions:
            c.assign([TopicPartition(topic, p, 0)])
            while batch := c.consume(1000, timeout=0.5):
                out += [orjson.loads(m.value()) for m in batch if not m.error()]
    finally:
        c.close()
    return out


def dispatcher(broker, tmp_path, channels, **kw) -> Dispatcher:
    kw.setdefault("rules", RuleSet())
    return Dispatcher(settings(), broker.bootstrap, channels=channels,
                      silences=SilenceStore(tmp_path / "silences.json"), **kw)


def test_a_channel_failing_three_times_then_succeeding_delivers_exactly_once(broker, tmp_path):
    receiver = Receiver(lambda n: 503 if n <= 3 else 204)  # 3 failures, then up
    try:
        d = dispatcher(broker, tmp_path, [WebhookChannel(receiver.url)])
        alert = make_alert(alert_id="flaky-1")
        assert d.deliver(alert, threading.Event())
        assert receiver.accepted == ["flaky-1"] and len(receiver.attempts) == 4
        # redelivered (a replay of the alerts topic): already settled, not sent again
        assert d.deliver(alert, threading.Event()) and len(receiver.attempts) == 4
        mine = records(broker.bootstrap, "alert-deliveries", lambda r: r["alert_id"] == "flaky-1", 4)
        assert [(r["attempt"], r["outcome"], r["status_code"]) for r in mine] == [
            (1, "failed", 503), (2, "failed", 503), (3, "failed", 503), (4, "delivered", 204)]
        assert mine[0]["delivery_id"] == "flaky-1:webhook:1" and mine[-1]["latency_ms"] > 0
    finally:
        receiver.close()


class RecordingStop(threading.Event):
    """A stop event that records how long the dispatcher waits between attempts."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return super().wait(0)


def test_retries_back_off_exponentially_with_full_jitter_then_dead_letter(broker, tmp_path,
                                                                          monkeypatch):
    import random

    draws: list[tuple[float, float, float]] = []
    uniform = random.uniform

    def recorded(a: float, b: float) -> float:
        draws.append((a, b, value := uniform(a, b)))
        return value

    monkeypatch.setattr(random, "uniform", recorded)
    receiver = Receiver(lambda n: 503)  # down for good
    try:
        d = Dispatcher(settings(backoff_s=0.01, max_backoff_s=0.05, max_attempts=5),
                       broker.bootstrap, channels=[WebhookChannel(receiver.url)], rules=RuleSet(),
                       silences=SilenceStore(tmp_path / "silences.json"))
        stop = RecordingStop()
        assert d.deliver(make_alert(alert_id="down-1"), stop)
        assert len(receiver.attempts) == 5 and receiver.accepted == []
        # a wait between attempts: drawn from [0, cap], the cap doubling up to max_backoff_s
        assert [(a, b) for a, b, _ in draws] == [(0, 0.01), (0, 0.02), (0, 0.04), (0, 0.05)]
        assert stop.waits == [v for _, _, v in draws]
        assert all(0 <= v <= b for _, b, v in draws) and any(v < b for _, b, v in draws)
        dead = records(broker.bootstrap, "dead-letter", lambda r: r["key"] == "down-1", 1)
        assert "HTTP 503 after 5 attempt(s)" in dead[0]["reason"]
    finally:
        receiver.close()


def test_an_error_retries_cannot_fix_goes_to_dead_letter_at_once(broker, tmp_path):
    receiver = Receiver(lambda n: 400)
    try:
        d = dispatcher(broker, tmp_path, [WebhookChannel(receiver.url)])
        assert d.deliver(make_alert(alert_id="bad-1"), threading.Event())
        assert len(receiver.attempts) == 1 and receiver.accepted == []
        dead = records(broker.bootstrap, "dead-letter", lambda r: r["key"] == "bad-1", 1)
        assert dead[0]["kind"] == "undeliverable" and "HTTP 400" in dead[0]["reason"]
        outcomes = [r["outcome"] for r in records(broker.bootstrap, "alert-deliveries",
                                                  lambda r: r["alert_id"] == "bad-1", 2)]
        assert outcomes == ["failed", "undeliverable"]
    finally:
        receiver.close()


def test_silenced_alerts_are_recorded_not_sent(broker, tmp_path):
    receiver = Receiver()
    try:
        store = SilenceStore(tmp_path / "silences.json")
        silence = store.add(Silence.create(["rule=payment_failure_rate", "entity=~merch-.*"],
                                           duration_ms=3_600_000, comment="known outage"))
        d = dispatcher(broker, tmp_path, [WebhookChannel(receiver.url)])
        d.deliver(make_alert(alert_id="quiet-1"), threading.Event())
        assert receiver.attempts == []
        rec = records(broker.bootstrap, "alert-deliveries", lambda r: r["alert_id"] == "quiet-1", 1)
        assert rec[0]["outcome"] == "silenced" and silence.silence_id in rec[0]["error"]
        # past its end the silence expires by itself: a dispatcher at that time sends
        later = dispatcher(broker, tmp_path, [WebhookChannel(receiver.url)],
                           now_ms=lambda: silence.ends_at)
        later.deliver(make_alert(alert_id="after-1"), threading.Event())
        assert receiver.accepted == ["after-1"]
        # expired early by the operator: the next alert goes out now
        assert store.expire(silence.silence_id)
        d.deliver(make_alert(alert_id="loud-1"), threading.Event())
        assert receiver.accepted == ["after-1", "loud-1"]
    finally:
        receiver.close()


def test_routes_by_severity_and_labels(broker, tmp_path):
    general, pager = Receiver(), Receiver()
    try:
        page = WebhookChannel(pager.url)
        page.name = "pager"
        rules = parse_rules("routes:\n  - {channel: pager, severity: [critical], "
                            "labels: {team: [payments]}}\n")
        d = dispatcher(broker, tmp_path, [WebhookChannel(general.url), page], rules=rules)
        d.deliver(make_alert(alert_id="crit-1"), threading.Event())
        d.deliver(make_alert(alert_id="warn-1", severity="warning"), threading.Event())
        assert general.accepted == ["crit-1", "warn-1"] and pager.accepted == ["crit-1"]
    finally:
        general.close()
        pager.close()


def test_a_dispatcher_killed_mid_delivery_does_not_resend_after_restart(broker, tmp_path):
    """Six alerts; the 4th request hangs and the dispatcher is SIGKILLed; a new one delivers
    the rest and none of the first three again."""
    receiver = Receiver(lambda n: "block" if n == 4 else 204)
    ids = [f"restart-{i}" for i in range(6)]
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for alert_id in ids:
        producer.produce("alerts", key=alert_id.encode(),
                         value=orjson.dumps(make_alert(alert_id=alert_id, incident_id=alert_id)))
    producer.flush(10)
    env = {"RISKSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap, "RISKSTREAM_STATE_DIR": str(tmp_path),
           "RISKSTREAM_ALERT_WEBHOOK_URL": receiver.url, "RISKSTREAM_ALERT_BACKOFF_S": "0.05",
           "RISKSTREAM_KAFKA_SESSION_TIMEOUT_S": "6"}
    first = Process(["dispatch"], env, tmp_path / "dispatch-1.log")
    second = None
    try:
        wait_until(receiver.blocked.is_set, timeout_s=60, what="the 4th delivery in flight")
        delivered_before = list(receiver.accepted)
        assert len(delivered_before) == 3
        first.kill()  # a crash: nothing committed, the 4th never acknowledged
        receiver.release.set()
        second = Process(["dispatch"], env, tmp_path / "dispatch-2.log")
        wait_until(lambda: set(receiver.accepted) == set(ids), timeout_s=60,
                   what="every alert delivered after the restart")
        time.sleep(1.0)  # anything resent would arrive now
        assert sorted(receiver.accepted) == sorted(ids)  # each exactly once
        for alert_id in delivered_before:
            assert receiver.attempts.count(alert_id) == 1, alert_id
        assert "settled deliveries read back" in second.log()
    except AssertionError:
        print(first.log()[-3000:], second.log()[-3000:] if second else "")
        raise
    finally:
        first.stop()
        if second is not None:
            second.stop()
        receiver.close()
