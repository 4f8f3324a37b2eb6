"""Unit tests of schemas/validation.py: raw messages in, validated dicts or rejections out."""

from __future__ import annotations

import doctest
import ipaddress

import orjson
import pytest
from factories import encode, make_application, make_label, make_metric, make_transaction
from pydantic import SecretStr
from pydantic_core import PydanticCustomError

import schemas.common
import schemas.validation
from pipelines.settings import PiiSettings, ValidationSettings
from schemas.validation import Rejection, Validator

NOW_MS = 1_795_514_400_000  # 2026-11-24T10:00:00Z
DAY_MS = 24 * 3600 * 1000



# The factories at a fixed clock, so that the tests do not depend on the date they run.
def txn(**overrides):
    return make_transaction(now_ms=NOW_MS, **overrides)


def app(**overrides):
    return make_application(now_ms=NOW_MS, **overrides)


def met(**overrides):
    return make_metric(now_ms=NOW_MS, **overrides)


def lbl(**overrides):
    return make_label(now_ms=NOW_MS, **overrides)


MAKERS = {"transactions": txn, "applications": app, "system-metrics": met, "labels": lbl}


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator(ValidationSettings(), PiiSettings(hmac_key=SecretStr("test-key-" + "k" * 32)))


def check(validator: Validator, stream: str, event: object, now_ms: int = NOW_MS):
    return validator.validate(stream, encode(event), now_ms=now_ms)


def rejected(validator: Validator, stream: str, event: object, kind: str = "schema") -> Rejection:
    result = check(validator, stream, event)
    assert isinstance(result, Rejection), f"accepted: {result}"
    assert result.kind == kind, result
    assert "\n" not in result.reason
    return result


# --- good events -------------------------------------------------------------------------

@pytest.mark.parametrize("stream", list(MAKERS))
def test_factory_events_pass_with_stream_added(validator, stream):
    event = MAKERS[stream]()
    result = check(validator, stream, event)
    assert isinstance(result, dict), result
    assert result["stream"] == stream
    assert result["event_id"] == event["event_id"]
    assert result["event_time"] == NOW_MS


def test_validated_transaction_is_the_wire_fields_plus_stream(validator):
    event = txn()
    assert check(validator, "transactions", event) == {**event, "stream": "transactions"}


def test_optional_transaction_fields_get_their_defaults(validator):
    event = txn()
    for field in ("status", "device_id", "ip"):
        del event[field]
    result = check(validator, "transactions", event)
    assert (result["status"], result["device_id"], result["ip"]) == ("approved", None, None)


@pytest.mark.parametrize(("wire", "expected_ms"), [
    ("2026-11-24T10:00:00Z", NOW_MS),
    ("2026-11-24T11:00:00+01:00", NOW_MS),
    ("2026-11-24T09:59:59.500Z", NOW_MS - 500),
])
def test_iso_event_time_becomes_int_ms(validator, wire, expected_ms):
    result = check(validator, "transactions", txn(event_time=wire))
    assert result["event_time"] == expected_ms
    assert type(result["event_time"]) is int


def test_integer_amount_is_a_number(validator):
    # JSON has one number type: 12 is as good as 12.0.
    assert check(validator, "transactions", txn(amount=12))["amount"] == 12


def test_ipv6_is_accepted_and_normalised(validator):
    result = check(validator, "transactions", txn(ip="2001:DB8:0::1"))
    assert result["ip"] == "2001:db8::1"


@pytest.mark.parametrize("text", [
    "1.2.3.4", "0.0.0.0", "255.255.255.255", "01.2.3.4", "1.2.3.04", "00.0.0.0", "1.2.3",
    "1.2.3.4.5", "256.1.1.1", " 1.2.3.4", "1.2.3.4 ", "1.2.3.4\n", "1..3.4", "0x1.2.3.4",
    "+1.2.3.4", "1.2.3.-1", "\u0661.2.3.4", "1.2.3.4\x00", "::ffff:1.2.3.4", "::1", "fe80::1%eth0",
    "1.2.3.4/32", ""])
def test_ip_addresses_are_checked_and_written_as_ipaddress_does(text):
    # IPv4 is checked by the C library first (schemas.common._check_ip): the same verdicts
    # and the same text as the standard library's ipaddress, on the edge cases.
    try:
        expected = str(ipaddress.ip_address(text))
    except ValueError:
        expected = None
    try:
        got = schemas.common._check_ip(text)
    except PydanticCustomError:
        got = None
    assert got == expected


def test_email_domain_is_lower_cased(validator):
    result = check(validator, "applications",
                   app(email_domain="Example.CO.uk"))
    assert result["email_domain"] == "example.co.uk"


def test_event_time_at_the_edges_of_the_window_passes(validator):
    settings = ValidationSettings()
    oldest = NOW_MS - settings.max_age_s * 1000
    latest = NOW_MS + settings.max_future_s * 1000
    for event_time in (oldest, latest):
        assert isinstance(check(validator, "transactions", txn(event_time=event_time)),
                          dict)


def test_genuine_label_is_zero(validator):
    result = check(validator, "labels", lbl(label=0, kind="genuine"))
    assert result["label"] == 0


# --- schema rejections: each names the field --------------------------------------------

def test_missing_field(validator):
    event = txn()
    del event["card_id"]
    result = rejected(validator, "transactions", event)
    assert result.reason == "card_id: missing"
    assert result.event_id == event["event_id"]


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"amount": "abc"}, "amount: expected a number, got 'abc'"),
    ({"amount": True}, "amount: expected a number, got True"),
    ({"amount": -12.5}, "amount: must be > 0, got -12.5"),
    ({"amount": 0}, "amount: must be > 0, got 0"),
    ({"amount": 2_000_000.0}, "amount: must be <= 1000000, got 2000000.0"),
    ({"currency": "XYZ"}, "currency: unknown ISO 4217 code, got 'XYZ'"),
    ({"currency": "usd"}, "currency: ISO 4217 codes are upper case, got 'usd'"),
    ({"mcc": 5411}, "mcc: expected a string, got 5411"),
    ({"mcc": "54a1"}, "mcc: must be exactly 4 digits, got '54a1'"),
    ({"channel": "web"}, "channel: must be 'pos', 'ecom', 'atm' or 'moto', got 'web'"),
    ({"country": "USA"}, "country: unknown ISO 3166-1 alpha-2 country code, got 'USA'"),
    ({"ip": "10.0.0.256"}, "ip: not a valid IPv4 or IPv6 address, got '10.0.0.256'"),
    ({"ip": "not-an-ip"}, "ip: not a valid IPv4 or IPv6 address, got 'not-an-ip'"),
    ({"card_id": ""}, "card_id: must not be empty, got ''"),
    ({"event_id": "x" * 65}, "event_id: must be at most 64 characters, got 65"),
    ({"status": None}, "status: must be 'approved', 'declined' or 'failed', got None"),
])
def test_bad_transaction_fields(validator, overrides, reason):
    assert rejected(validator, "transactions", txn(**overrides)).reason == reason


def test_long_values_are_truncated_in_reasons(validator):
    result = rejected(validator, "transactions", txn(currency="Q" * 500))
    assert result.reason.startswith("currency: unknown ISO 4217 code, got 'QQQ")
    assert len(result.reason) < 100


def test_unexpected_field(validator):
    result = rejected(validator, "transactions", txn(amuont=12.5))
    assert result.reason.startswith("amuont: unexpected field 'amuont'")


@pytest.mark.parametrize(("wire", "reason"), [
    ("2026-11-24T10:00:00", "event_time: ISO-8601 date-time without a timezone"),
    ("yesterday", "event_time: not an ISO-8601 date-time"),
    (1.7e12, "event_time: expected epoch milliseconds (integer) or an ISO-8601"),
    (True, "event_time: expected epoch milliseconds (integer) or an ISO-8601"),
    (None, "event_time: expected epoch milliseconds (integer) or an ISO-8601"),
])
def test_bad_event_time(validator, wire, reason):
    assert rejected(validator, "transactions", txn(event_time=wire)).reason.startswith(
        reason)


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"value": "NaN"}, "value: expected a number, got 'NaN'"),
    ({"value": "Infinity"}, "value: expected a number, got 'Infinity'"),
    ({"value": 130.0}, "value: must be a percentage 0..100 for metric 'cpu', got 130.0"),
    ({"metric": "error_rate", "value": -0.5},
     "value: must be a percentage 0..100 for metric 'error_rate', got -0.5"),
    ({"metric": "queue_depth", "value": -1.5},
     "value: must be >= 0 for metric 'queue_depth', got -1.5"),
    ({"metric": "disk"}, "metric: must be 'cpu', 'memory', 'latency_p95_ms', 'error_rate', "
                         "'request_rate' or 'queue_depth', got 'disk'"),
])
def test_bad_metrics(validator, overrides, reason):
    assert rejected(validator, "system-metrics", met(**overrides)).reason == reason


def test_metrics_other_than_percentages_may_exceed_100(validator):
    event = met(metric="latency_p95_ms", value=1250.0)
    assert check(validator, "system-metrics", event)["value"] == 1250.0


def test_nan_literal_is_invalid_json(validator):
    # Python's json.dumps writes NaN, which is not JSON: orjson (and every consumer) refuses it.
    raw = b'{"event_id": "m-1", "value": NaN}'
    result = validator.validate("system-metrics", raw, now_ms=NOW_MS)
    assert result.kind == "invalid_json"
    assert "NaN and Infinity are not JSON numbers" in result.reason
    assert result.event_id == "m-1"


def test_number_overflowing_a_double_is_invalid_json(validator):
    raw = encode(met()).replace(b"41.5", b"1e400")
    assert validator.validate("system-metrics", raw, now_ms=NOW_MS).kind == "invalid_json"


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"label": True}, "label: expected 0 or 1 (an integer), got True"),
    ({"label": 2}, "label: must be 0 or 1, got 2"),
    ({"label": 0}, "label: must be 1 for kind 'confirmed_fraud', got 0"),
    ({"label": 1, "kind": "genuine"}, "label: must be 0 for kind 'genuine', got 1"),
    ({"target_stream": "aggregates"},
     "target_stream: must be 'transactions', 'applications' or 'system-metrics', got 'aggregates'"),
])
def test_bad_labels(validator, overrides, reason):
    assert rejected(validator, "labels", lbl(**overrides)).reason == reason


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"ssn": "123-45-678"}, "ssn: malformed, expected NNN-NN-NNNN"),
    ({"ssn": "123-456789"}, "ssn: malformed, expected NNN-NN-NNNN"),
    ({"ssn": "000-45-6789"}, "ssn: not a valid SSN"),
    ({"ssn": "666-45-6789"}, "ssn: not a valid SSN"),
    ({"ssn": "912-45-6789"}, "ssn: not a valid SSN"),
    ({"ssn": "123-00-6789"}, "ssn: not a valid SSN"),
    ({"ssn": "123-45-0000"}, "ssn: not a valid SSN"),
    ({"ssn": 123456789}, "ssn: expected a string, got integer"),
    ({"birth_date": "1990-02-30"}, "birth_date: not a calendar date, expected YYYY-MM-DD"),
    ({"birth_date": "15/06/1986"}, "birth_date: malformed, expected YYYY-MM-DD"),
    ({"birth_date": "2015-06-15"}, "birth_date: age at event time must be 18..120 years"),
    ({"birth_date": "1900-06-15"}, "birth_date: age at event time must be 18..120 years"),
    ({"legal_name": ""}, "legal_name: must not be empty"),
    ({"legal_name": "Jane " * 100}, "legal_name: must be at most 256 characters"),
    ({"email_domain": "jane.doe@example.com"}, "email_domain: expected the domain only"),
    ({"email_domain": "localhost"}, "email_domain: not a domain name"),
    ({"income": -1}, "income: must be >= 0, got -1"),
    ({"requested_amount": 0}, "requested_amount: must be > 0, got 0"),
    ({"employment": "gig"}, "employment: must be 'employed', 'self_employed'"),
])
def test_bad_applications(validator, overrides, reason):
    event = app(**overrides)
    result = rejected(validator, "applications", event)
    assert result.reason.startswith(reason), result.reason
    # The reason never echoes a PII value, whatever was wrong.
    for field in ("ssn", "legal_name", "birth_date", "email_domain"):
        value = str(event[field])
        if value and (field != "email_domain" or "@" in value):
            assert value not in result.reason


def test_age_is_checked_at_event_time_not_now(validator):
    # 18 on the event's date: accepted, and 17 the day before is not.
    on_birthday = app(birth_date="2008-11-24")
    assert check(validator, "applications", on_birthday)["age_years"] == 18
    day_before = app(birth_date="2008-11-25")
    assert rejected(validator, "applications", day_before).reason.startswith("birth_date: age")


def test_ssn_in_a_non_pii_field_is_not_echoed(validator):
    result = rejected(validator, "transactions", txn(card_id=["078-05-1120"]))
    assert "078-05-1120" not in result.reason
    assert "[redacted]" in result.reason


# --- message-level rejections ------------------------------------------------------------

def test_oversize_is_rejected_before_parsing(validator):
    limit = ValidationSettings().max_message_bytes
    raw = b'{"event_id": "big-1", "pad": "' + b"x" * limit + b'"}'
    result = validator.validate("transactions", raw, now_ms=NOW_MS)
    assert result == Rejection("oversize", f"message: {len(raw)} bytes, over the {limit}-byte "
                                           f"limit", "big-1")


def test_oversize_limit_comes_from_settings():
    small = Validator(ValidationSettings(max_message_bytes=100),
                      PiiSettings(hmac_key=SecretStr("k" * 32)))
    result = small.validate("transactions", encode(txn()), now_ms=NOW_MS)
    assert result.kind == "oversize"
    assert "over the 100-byte limit" in result.reason


@pytest.mark.parametrize("raw", [b'{"event_id": "x"', b"", b"\xff\xfe{}", b"{'a': 1}"])
def test_invalid_json(validator, raw):
    result = validator.validate("transactions", raw, now_ms=NOW_MS)
    assert result.kind == "invalid_json"
    assert result.reason.startswith("message: invalid JSON (")


@pytest.mark.parametrize(("raw", "got"), [
    (b"[1, 2]", "list"), (b'"text"', "string"), (b"42", "integer"), (b"null", "null"),
])
def test_not_an_object(validator, raw, got):
    result = validator.validate("transactions", raw, now_ms=NOW_MS)
    assert result == Rejection("invalid_json", f"message: expected a JSON object, got {got}", None)


def test_stale(validator):
    max_age_s = ValidationSettings().max_age_s
    event = txn(event_time=NOW_MS - max_age_s * 1000 - 1)
    result = rejected(validator, "transactions", event, kind="stale")
    assert result.reason == f"event_time: more than {max_age_s} s in the past, " \
                            f"got 2026-11-17T09:59:59.999Z"
    assert result.event_id == event["event_id"]


def test_event_time_in_seconds_is_stale_with_a_hint(validator):
    result = rejected(validator, "transactions", txn(event_time=NOW_MS // 1000),
                      kind="stale")
    assert "looks like seconds" in result.reason


def test_future(validator):
    result = rejected(validator, "transactions",
                      txn(event_time="2031-01-01T00:00:00Z"), kind="future")
    assert result.reason == "event_time: more than 300 s in the future, got 2031-01-01T00:00:00Z"


def test_stale_and_future_use_the_callers_clock(validator):
    event = txn(event_time=NOW_MS)
    assert check(validator, "transactions", event, now_ms=NOW_MS + 8 * DAY_MS).kind == "stale"
    assert check(validator, "transactions", event, now_ms=NOW_MS - 301_000).kind == "future"


def test_schema_is_checked_before_event_time(validator):
    event = txn(event_time=NOW_MS - 30 * DAY_MS, amount=-1)
    assert rejected(validator, "transactions", event).reason.startswith("amount:")


def test_unknown_stream_is_a_programming_error(validator):
    with pytest.raises(ValueError, match="unknown stream 'payments'"):
        validator.validate("payments", encode(txn()), now_ms=NOW_MS)


def test_validate_does_not_keep_or_share_state(validator):
    raw = encode(txn())
    first = validator.validate("transactions", raw, now_ms=NOW_MS)
    first["amount"] = -1
    assert validator.validate("transactions", raw, now_ms=NOW_MS)["amount"] == 42.5


def test_validated_events_serialise_with_orjson(validator):
    for stream, make in MAKERS.items():
        assert orjson.loads(orjson.dumps(check(validator, stream, make())))


# --- docstring examples run -------------------------------------------------------------

@pytest.mark.parametrize("module", [schemas.common, schemas.validation])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize("stream", ["transactions", "system-metrics", "labels"])
def test_validated_dict_equals_model_dump(validator, stream):
    # validate() copies the model's __dict__ instead of calling model_dump(): the same as long
    # as the models hold only plain values.
    event = MAKERS[stream]()
    model = schemas.validation.MODEL_OF_STREAM[stream].model_validate(event)
    assert check(validator, stream, event) == {**model.model_dump(), "stream": stream}

