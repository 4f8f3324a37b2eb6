"""Generic webhook channel: the alert as a JSON POST."""

from __future__ import annotations

import urllib.error
import urllib.request

import orjson


class DeliveryError(Exception):
    """One delivery attempt failed; ``retryable`` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class WebhookChannel:
    name = "webhook"

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self._url = url  # may hold a token: never logged
        self.timeout_s = timeout_s

    def send(self, alert: dict) -> None:
        request = urllib.request.Request(
            self._url, data=orjson.dumps(alert), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "riskstream",
                     "Idempotency-Key": alert["alert_id"]})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            # 4xx other than 408/429 will not get better by retrying.
            retryable = exc.code >= 500 or exc.code in (408, 429)
            raise DeliveryError(f"webhook answered HTTP {exc.code}", retryable=retryable) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DeliveryError(f"webhook unreachable: {reason}", retryable=True) from None
