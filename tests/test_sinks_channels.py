"""Alert channels against real local receivers: HTTP (signature checked), SMTP (aiosmtpd,
STARTTLS and AUTH) and Prometheus Alertmanager (Debian's binary, where installed)."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from processes import wait_until
from sinks.channels.alertmanager import AlertmanagerChannel
from sinks.channels.email import EmailChannel
from sinks.channels.slack import SlackChannel
from sinks.channels.webhook import (
    SIGNATURE_HEADER, TIMESTAMP_HEADER, DeliveryError, WebhookChannel, verify_signature,
)

SECRET = "webhook-secret-for-tests"


def make_alert(**overrides) -> dict:
    alert = {
        "alert_id": "a1b2c3", "rule": "payment_failure_rate", "severity": "critical",
        "stream": "transactions", "entity": "merch-7", "event_id": "merch-7@1714570200000",
        "event_time": 1_714_570_200_000, "value": 0.12, "threshold": 0.05,
        "summary": "payment_failure_rate [critical] transactions merch-7: 0.12 > 0.05 over 25 in 5m",
        "created_at": 1_714_570_201_000, "status": "firing", "incident_id": "a1b2c3",
        "group_key": "payment_failure_rate|rule=payment_failure_rate",
        "labels": json.dumps({"rule": "payment_failure_rate", "team": "payments",
                              "merchant_id": "merch-7", "severity": "critical"}),
        "condition": "rate(status in ['declined', 'failed']) > 0.05", "window_ms": 300_000,
        "count": 25, "reasons": ["3 of 25 transactions with status in ['declined', 'failed']",
                                 "rate 12.00% > 5.00%"],
        "dashboard_url": "https://grafana.example/d/riskstream-alerts?var-rule=x",
        "query": "SELECT * FROM scored_transactions WHERE merchant_id = 'merch-7'",
    }
    alert.update(overrides)
    return alert


class Receiver:
    """A local HTTP receiver; ``secret`` set: requests with a bad signature get 401."""

    def __init__(self, secret: str | None = None) -> None:
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = secret is None or verify_signature(
                    secret.encode(), body, self.headers.get(TIMESTAMP_HEADER, ""),
                    self.headers.get(SIGNATURE_HEADER, ""))
                receiver.requests.append({"headers": dict(self.headers), "body": json.loads(body),
                                          "verified": ok, "path": self.path})
                self.send_response(200 if ok else 401)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_is_signed_and_the_receiver_verifies_it():
    receiver = Receiver(secret=SECRET)
    try:
        WebhookChannel(receiver.url, secret=SECRET).send(make_alert())
        req = receiver.requests[0]
        assert req["verified"] and req["body"]["alert_id"] == "a1b2c3"
        assert req["headers"]["Idempotency-Key"] == "a1b2c3"
        # a sender with the wrong secret is refused, and 401 is not worth retrying
        with pytest.raises(DeliveryError) as err:
            WebhookChannel(receiver.url, secret="wrong").send(make_alert())
        assert err.value.status_code == 401 and not err.value.retryable
    finally:
        receiver.close()
    open_receiver = Receiver()  # without a secret: not signed, still timestamped
    try:
        WebhookChannel(open_receiver.url).send(make_alert())
        headers = open_receiver.requests[0]["headers"]
        assert SIGNATURE_HEADER not in headers and int(headers[TIMESTAMP_HEADER]) > 1_700_000_000
    finally:
        open_receiver.close()


def test_slack_message_has_the_reasons_and_the_links():
    receiver = Receiver()
    try:
        SlackChannel(receiver.url).send(make_alert())
        payload = receiver.requests[0]["body"]
        text = json.dumps(payload["blocks"])
        assert payload["text"].startswith("CRITICAL: payment_failure_rate")
        assert "3 of 25 transactions" in text and "grafana.example" in text
        assert "SELECT * FROM scored_transactions" in text
    finally:
        receiver.close()


def test_unreachable_receiver_is_retryable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(DeliveryError) as err:
        WebhookChannel(f"http://127.0.0.1:{port}/", timeout_s=1).send(make_alert())
    assert err.value.retryable


@pytest.fixture
def tls_files(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: cannot make a certificate for the STARTTLS test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_email_over_smtp_with_starttls_and_auth(tls_files):
    aiosmtpd = pytest.importorskip("aiosmtpd", reason="aiosmtpd not installed (test extra)")
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    assert aiosmtpd
    cert, key = tls_files
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    received: list = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            received.append((session.authenticated, session.ssl is not None, envelope))
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == b"alerts" and auth_data.password == b"s3cret"
        return AuthResult(success=ok)

    port = _free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=server_tls,
                            require_starttls=True, authenticator=authenticator,
                            auth_require_tls=True)
    controller.start()
    try:
        client_tls = ssl.create_default_context(cafile=str(cert))
        channel = EmailChannel("127.0.0.1", port, sender="riskstream@example.org",
                               recipients=["oncall@example.org"], starttls=True, user="alerts",
                               password="s3cret", ssl_context=client_tls)
        assert channel.send(make_alert()) == 250
        authenticated, tls, envelope = received[0]
        assert authenticated and tls and envelope.rcpt_tos == ["oncall@example.org"]
        body = envelope.content.decode()
        assert "Subject: [riskstream CRITICAL] payment_failure_rate: merch-7" in body
        assert "Message-ID: <a1b2c3@riskstream>" in body and "3 of 25 transactions" in body
    finally:
        controller.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_alertmanager_receives_firing_and_resolved(tmp_path):
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.skip("Alertmanager binary missing: `apt-get install prometheus-alertmanager` "
                    "(Debian) or put `alertmanager` on PATH to run this test")
    config = tmp_path / "alertmanager.yml"
    config.write_text("route:\n  receiver: none\nreceivers:\n  - name: none\n")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_until(ready, timeout_s=20, what="alertmanager ready")
        channel = AlertmanagerChannel(base)
        assert channel.send(make_alert()) == 200

        def alerts(active: bool) -> list:
            url = f"{base}/api/v2/alerts?active={str(active).lower()}&silenced=true&inhibited=true"
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.loads(r.read())

        got = wait_until(lambda: alerts(True), timeout_s=10, what="the alert in alertmanager")
        labels = got[0]["labels"]
        assert labels["alertname"] == "payment_failure_rate" and labels["incident"] == "a1b2c3"
        assert labels["team"] == "payments" and "3 of 25" in got[0]["annotations"]["reasons"]
        # the resolved notification ends the same alert (same labels, endsAt in the past)
        channel.send(make_alert(alert_id="r1", status="resolved", event_time=1_714_570_800_000))
        wait_until(lambda: not alerts(True), timeout_s=10, what="the alert resolved")
    finally:
        proc.terminate()
        proc.wait(10)


def _postable_alerts_errors(body: object) -> list[str]:
    """What Alertmanager's documented API v2 (``POST /api/v2/alerts``, ``postableAlerts`` in its
    openapi.yaml) refuses: a list of objects with ``labels`` (required, non-empty, string to
    string), ``annotations`` (string to string), ``startsAt``/``endsAt`` (RFC 3339 date-time),
    ``generatorURL`` (URI), and no other keys."""
    import datetime as dt

    if not isinstance(body, list) or not body:
        return ["expected a non-empty list of alerts"]
    errors = []
    for i, alert in enumerate(body):
        extra = set(alert) - {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
        if extra:
            errors.append(f"[{i}] unknown keys {sorted(extra)}")
        for key in ("labels", "annotations"):
            value = alert.get(key, {})
            if not isinstance(value, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                errors.append(f"[{i}] {key}: expected string to string")
        if not alert.get("labels"):
            errors.append(f"[{i}] labels: required")
        for key in ("startsAt", "endsAt"):
            if key in alert:
                try:
                    parsed = dt.datetime.fromisoformat(alert[key])
                except (TypeError, ValueError):
                    errors.append(f"[{i}] {key}: not a date-time")
                else:
                    if parsed.tzinfo is None:
                        errors.append(f"[{i}] {key}: no time zone")
        if "generatorURL" in alert and not alert["generatorURL"].startswith(("http://", "https://")):
            errors.append(f"[{i}] generatorURL: not a URI")
    return errors


def test_alertmanager_payload_follows_its_documented_api_v2():
    """Without the binary (the test above skips), the posted body is checked against the API
    Alertmanager documents: firing, then resolved with the same labels and endsAt."""
    receiver = Receiver()
    try:
        channel = AlertmanagerChannel(receiver.url.removesuffix("/hook") + "/am/")
        assert channel.send(make_alert()) == 200
        channel.send(make_alert(alert_id="r1", status="resolved", event_time=1_714_570_800_000))
        firing, resolved = (r["body"] for r in receiver.requests)
        assert [r["path"] for r in receiver.requests] == ["/am/api/v2/alerts"] * 2
        assert receiver.requests[0]["headers"]["Content-Type"] == "application/json"
        assert _postable_alerts_errors(firing) == [] and _postable_alerts_errors(resolved) == []
        assert firing[0]["labels"] == {"alertname": "payment_failure_rate", "severity": "critical",
                                       "incident": "a1b2c3", "team": "payments",
                                       "merchant_id": "merch-7"}
        assert firing[0]["startsAt"] == "2024-05-01T13:30:00.000+00:00"
        assert "3 of 25" in firing[0]["annotations"]["reasons"]
        assert firing[0]["generatorURL"].startswith("https://grafana.example/")
        # resolved: the same label set (Alertmanager's identity), ended at the resolution
        assert resolved[0]["labels"] == firing[0]["labels"]
        assert resolved[0]["endsAt"] == "2024-05-01T13:40:00.000+00:00"
    finally:
        receiver.close()
