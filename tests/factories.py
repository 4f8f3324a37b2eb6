"""Factories of valid input events, in their wire form (what producers send).

Each returns a new dict that passes validation at ``now_ms`` (default: the current time);
keyword overrides replace or add fields, and ``None`` is a value like any other. Remove a
field with ``del``. ``event_id`` is unique per call.

>>> event = make_transaction(amount=-1.0)
>>> event["amount"], event["currency"]
(-1.0, 'USD')
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson


def now_ms() -> int:
    """Return the current time as epoch milliseconds."""
    return time.time_ns() // 1_000_000


def _event_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def make_transaction(*, now_ms: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Return a valid ``transactions`` event: an approved 42.50 USD e-commerce payment."""
    event: dict[str, Any] = {
        "event_id": _event_id("txn"),
        "event_time": _now(now_ms),
        "card_id": "card-0001",
        "account_id": "acct-0001",
        "merchant_id": "merch-0001",
        "mcc": "5411",
        "amount": 42.5,
        "currency": "USD",
        "channel": "ecom",
        "country": "US",
        "status": "approved",
        "device_id": "dev-0001",
        "ip": "203.0.113.7",
    }
    event.update(overrides)
    return event


def make_application(*, now_ms: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Return a valid ``applications`` event, raw PII included; the applicant is 40."""
    time_ms = _now(now_ms)
    # Born 40 years before the event (mid-year): valid whatever now_ms a test picks.
    birth_year = time.gmtime(time_ms // 1000).tm_year - 40
    event: dict[str, Any] = {
        "event_id": _event_id("app"),
        "event_time": time_ms,
        "applicant_id": "applicant-0001",
        "legal_name": "Jane Q Doe",
        "ssn": "123-45-6789",
        "birth_date": f"{birth_year}-06-15",
        "address": "1 Main St, Springfield",
        "postal_code": "12345",
        "income": 85_000.0,
        "employment": "employed",
        "employer": "Acme Corp",
        "requested_amount": 5_000.0,
        "product": "credit_card",
        "device_id": "dev-0001",
        "ip": "198.51.100.23",
        "email_domain": "example.com",
    }
    event.update(overrides)
    return event


def make_metric(*, now_ms: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Return a valid ``system-metrics`` event: 41.5 % CPU on web-1."""
    event: dict[str, Any] = {
        "event_id": _event_id("met"),
        "event_time": _now(now_ms),
        "host": "web-1",
        "service": "api",
        "metric": "cpu",
        "value": 41.5,
    }
    event.update(overrides)
    return event


def make_label(*, now_ms: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Return a valid ``labels`` event: a confirmed fraud on a transaction of card-0001."""
    event: dict[str, Any] = {
        "event_id": _event_id("lbl"),
        "event_time": _now(now_ms),
        "target_stream": "transactions",
        "target_event_id": "txn-0001",
        "key": "card-0001",
        "label": 1,
        "kind": "confirmed_fraud",
    }
    event.update(overrides)
    return event


def encode(event: Any) -> bytes:
    """Return an event as a Kafka message value (JSON, UTF-8)."""
    return orjson.dumps(event)


def _now(time_ms: int | None) -> int:
    return now_ms() if time_ms is None else time_ms
