"""Generic webhook channel: the alert as a JSON POST, signed with HMAC-SHA256.

Headers: ``Idempotency-Key`` (the alert id: a receiver drops a repeat), ``X-Riskstream-Timestamp``
(Unix seconds) and, when a secret is set (``RISKSTREAM_ALERT_WEBHOOK_SECRET``),
``X-Riskstream-Signature: sha256=<hex>`` over ``f"{timestamp}.{body}"`` — the scheme of Stripe
and Slack: the timestamp in the signed text stops replays of old requests. Receivers check with
:func:`verify_signature`.

Examples
--------
>>> ts, sig = sign(b"secret", b'{"a":1}', timestamp=1700000000)
>>> verify_signature(b"secret", b'{"a":1}', ts, sig, now=1700000060)
True
>>> verify_signature(b"secret", b'{"a":2}', ts, sig, now=1700000060)
False
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.error
import urllib.request

import orjson

SIGNATURE_HEADER = "X-Riskstream-Signature"
TIMESTAMP_HEADER = "X-Riskstream-Timestamp"


class DeliveryError(Exception):
    """One delivery attempt failed; ``retryable`` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool, status_code: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code


def sign(secret: bytes, body: bytes, *, timestamp: int | None = None) -> tuple[str, str]:
    """Return ``(timestamp, "sha256=<hex>")`` for a body."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return ts, f"sha256={digest}"


def verify_signature(secret: bytes, body: bytes, timestamp: str, signature: str, *,
                     tolerance_s: int = 300, now: float | None = None) -> bool:
    """True when ``signature`` signs ``body`` at ``timestamp``, no older than ``tolerance_s``."""
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs(age) > tolerance_s:
        return False
    _, expected = sign(secret, body, timestamp=int(timestamp))
    return hmac.compare_digest(expected, signature or "")


def post_json(url: str, payload: object, *, timeout_s: float, what: str,
              headers: dict[str, str] | None = None, secret: bytes | None = None) -> int:
    """POST JSON; return the status code, raise :class:`DeliveryError` on failure."""
    body = orjson.dumps(payload)
    all_headers = {"Content-Type": "application/json", "User-Agent": "riskstream",
                   **(headers or {})}
    if secret:
        ts, signature = sign(secret, body)
        all_headers[TIMESTAMP_HEADER] = ts
        all_headers[SIGNATURE_HEADER] = signature
    request = urllib.request.Request(url, data=body, method="POST", headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        # 4xx other than 408/429 will not get better by retrying.
        retryable = exc.code >= 500 or exc.code in (408, 429)
        raise DeliveryError(f"{what} answered HTTP {exc.code}", retryable=retryable,
                            status_code=exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"{what} unreachable: {reason}", retryable=True) from None


class WebhookChannel:
    name = "webhook"

    def __init__(self, url: str, *, secret: str | None = None, timeout_s: float = 5.0) -> None:
        self._url = url  # may hold a token: never logged
        self._secret = secret.encode() if secret else None
        self.timeout_s = timeout_s

    def send(self, alert: dict) -> int:
        # The timestamp goes out signed or not (with a secret, post_json sets the signed one).
        headers = {"Idempotency-Key": alert["alert_id"], TIMESTAMP_HEADER: str(int(time.time()))}
        return post_json(self._url, alert, timeout_s=self.timeout_s, what="webhook",
                         headers=headers, secret=self._secret)
