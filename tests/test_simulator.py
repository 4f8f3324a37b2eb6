"""Unit tests of the simulator (no Kafka): reproducible, true to the contract, fraud that shows.

The contract checks here are a small independent reading of the event contract, so that the
simulator is tested even where ``schemas.validation`` is absent; where it exists, the real
``Validator`` must agree.
"""

from __future__ import annotations

import ipaddress
import math
import re
import statistics
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from itertools import islice, pairwise
from typing import Any

import orjson
import pytest

from pipelines.simulate import default_start_ms, run_simulator
from pipelines.simulator import SimConfig, SimMessage, Simulator
from pipelines.topics import APPLICATIONS, LABELS, SYSTEM_METRICS, TRANSACTIONS, partition_key

# A fixed start keeps the streams, and so the statistics asserted here, the same at every run.
# Checks of event time take the message's own send time as "now".
START_MS = 1_795_514_400_000  # 2026-11-24T10:00:00Z
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def take(n: int, config: SimConfig | None = None, start_ms: int = START_MS) -> list[SimMessage]:
    return list(islice(Simulator(config or SimConfig(), start_ms).messages(), n))


def payloads(msgs: list[SimMessage], kind: str, topic: str | None = None) -> list[dict]:
    return [
        orjson.loads(m.value)
        for m in msgs
        if m.kind == kind and (topic is None or m.topic == topic)
    ]


def event_ms(value: int | str) -> int:
    if isinstance(value, int):
        return value
    return (datetime.fromisoformat(value) - EPOCH) // timedelta(milliseconds=1)


def fraud_ids(msgs: list[SimMessage]) -> set[str]:
    return {p["target_event_id"] for p in payloads(msgs, "label") if p["label"] == 1}


def settled(msgs: list[SimMessage], topic: str, delay_ms: int = 30_000) -> list[dict]:
    """Valid events of ``topic`` old enough for their label to be in ``msgs``."""
    end = msgs[-1].event_time_ms - delay_ms
    return [p for p in payloads(msgs, "valid", topic) if event_ms(p["event_time"]) < end]


@pytest.fixture(scope="module")
def stream() -> list[SimMessage]:
    # 30,000 messages: ~150 s of event time at 200 events/s, ~300 malformed, ~300 duplicates.
    return take(30_000)


# --- an independent reading of the contract ---------------------------------------------------

KNOWN_CURRENCIES = {"USD", "EUR", "GBP", "CAD", "AUD", "JPY", "CHF", "SEK", "BRL", "INR", "MXN"}
KNOWN_COUNTRIES = {
    "US", "GB", "DE", "FR", "CA", "ES", "IT", "NL", "AU", "JP", "BR", "RO", "UA", "PH", "NG", "VN",
    "ID", "MX", "IN", "CH", "SE", "IE", "PT", "BE", "AT", "PL",
}
REQUIRED = {
    TRANSACTIONS: {"event_id", "event_time", "card_id", "account_id", "merchant_id", "mcc",
                   "amount", "currency", "channel", "country"},
    APPLICATIONS: {"event_id", "event_time", "applicant_id", "legal_name", "ssn", "birth_date",
                   "income", "employment", "requested_amount", "product", "email_domain"},
    SYSTEM_METRICS: {"event_id", "event_time", "host", "service", "metric", "value"},
    LABELS: {"event_id", "event_time", "target_stream", "target_event_id", "key", "label",
             "kind"},
}
OPTIONAL = {
    TRANSACTIONS: {"status", "device_id", "ip"},
    APPLICATIONS: {"address", "postal_code", "employer", "device_id", "ip"},
    SYSTEM_METRICS: set(),
    LABELS: set(),
}
SSN = re.compile(r"([0-9]{3})-?([0-9]{2})-?([0-9]{4})")
DOMAIN = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)+")


def is_number(x: Any) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


def contract_problems(topic: str, raw: bytes, sent_ms: int) -> list[str]:
    """What is wrong with a message, by the contract; [] when it is valid at ``sent_ms``."""
    if len(raw) > 65_536:
        return ["oversize"]
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ["invalid JSON"]
    if not isinstance(d, dict):
        return ["not an object"]
    problems = [f"{f}: missing" for f in REQUIRED[topic] - d.keys()]
    problems += [f"{f}: unexpected" for f in d.keys() - REQUIRED[topic] - OPTIONAL[topic]]

    def bad(field: str, ok: bool) -> None:
        if field in d and not ok:
            problems.append(f"{field}: {d[field]!r}"[:60])

    t = d.get("event_time")
    if type(t) is int:
        when = t
    elif type(t) is str:
        try:
            parsed = datetime.fromisoformat(t)
            when = event_ms(t) if parsed.tzinfo is not None else None
        except ValueError:
            when = None
    else:
        when = None
    bad("event_time", when is not None and when - sent_ms <= 300_000)
    bad("event_id", type(d.get("event_id")) is str and 1 <= len(d["event_id"]) <= 64)
    bad("ip", d.get("ip") is None or _is_ip(d["ip"]))
    bad("device_id", d.get("device_id") is None or type(d["device_id"]) is str)
    if topic == TRANSACTIONS:
        bad("amount", is_number(d.get("amount")) and 0 < d["amount"] <= 1_000_000)
        bad("currency", d.get("currency") in KNOWN_CURRENCIES)
        bad("country", d.get("country") in KNOWN_COUNTRIES)
        bad("mcc", type(d.get("mcc")) is str and re.fullmatch(r"[0-9]{4}", d["mcc"]) is not None)
        bad("channel", d.get("channel") in ("pos", "ecom", "atm", "moto"))
        bad("status", d.get("status", "approved") in ("approved", "declined", "failed"))
    elif topic == APPLICATIONS:
        bad("ssn", _valid_ssn(d.get("ssn")))
        bad("birth_date", when is not None and _adult(d.get("birth_date"), when))
        bad("income", is_number(d.get("income")) and d["income"] >= 0)
        bad("requested_amount", is_number(d.get("requested_amount")) and d["requested_amount"] > 0)
        bad("employment", d.get("employment") in
            ("employed", "self_employed", "unemployed", "retired", "student"))
        bad("product", d.get("product") in ("credit_card", "personal_loan", "bnpl",
                                            "deposit_account"))
        bad("email_domain", type(d.get("email_domain")) is str
            and DOMAIN.fullmatch(d["email_domain"]) is not None)
    elif topic == SYSTEM_METRICS:
        metric, value = d.get("metric"), d.get("value")
        bad("metric", metric in ("cpu", "memory", "latency_p95_ms", "error_rate",
                                 "request_rate", "queue_depth"))
        percent = metric in ("cpu", "memory", "error_rate")
        bad("value", is_number(value) and (0 <= value <= 100 if percent else value >= 0))
        bad("service", type(d.get("service")) is str and 1 <= len(d["service"]) <= 256)
    else:
        bad("label", d.get("label") in (0, 1) and type(d["label"]) is int)
        bad("kind", (d.get("kind") == "genuine") == (d.get("label") == 0))
    return problems


def _is_ip(text: Any) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _valid_ssn(ssn: Any) -> bool:
    m = SSN.fullmatch(ssn) if type(ssn) is str else None
    if m is None or ssn.count("-") not in (0, 2):
        return False
    area, group, serial = m.groups()
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _adult(birth: Any, when_ms: int) -> bool:
    try:
        born = date.fromisoformat(birth)
    except (TypeError, ValueError):
        return False
    on = (EPOCH + timedelta(milliseconds=when_ms)).date()
    age = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    return 18 <= age <= 120


# --- reproducibility and shape -----------------------------------------------------------------


def test_same_seed_and_start_give_the_same_stream():
    first = take(2_000)
    again = take(2_000)
    assert first == again
    # The same Simulator replays from the start at each messages() call.
    sim = Simulator(SimConfig(), START_MS)
    assert list(islice(sim.messages(), 500)) == list(islice(sim.messages(), 500)) == first[:500]


def test_another_seed_or_start_gives_another_stream():
    first = take(2_000)
    assert take(2_000, SimConfig(seed=8)) != first
    # Another start: other event ids, so a second run is not dropped as duplicates.
    ids = {p["event_id"] for p in payloads(first, "valid")}
    other = take(2_000, start_ms=START_MS + 1)
    assert ids.isdisjoint(p["event_id"] for p in payloads(other, "valid"))


def test_event_time_is_ordered_and_advances_at_the_rate(stream):
    times = [m.event_time_ms for m in stream]
    assert times == sorted(times)
    assert times[0] >= START_MS
    slots = sum(m.kind != "label" for m in stream)
    span_s = (times[-1] - START_MS) / 1000
    assert slots / span_s == pytest.approx(200, rel=0.05)


def test_shares_are_roughly_as_configured(stream):
    slots = [m for m in stream if m.kind != "label"]
    by_topic = Counter(m.topic for m in slots)
    assert by_topic[TRANSACTIONS] / len(slots) == pytest.approx(0.6, abs=0.015)
    assert by_topic[APPLICATIONS] / len(slots) == pytest.approx(0.1, abs=0.01)
    assert by_topic[SYSTEM_METRICS] / len(slots) == pytest.approx(0.3, abs=0.015)
    by_kind = Counter(m.kind for m in slots)
    assert by_kind["malformed"] / len(slots) == pytest.approx(0.01, abs=0.003)
    assert by_kind["duplicate"] / len(slots) == pytest.approx(0.01, abs=0.003)
    labels = sum(m.kind == "label" for m in stream)
    assert 0.005 < labels / len(slots) < 0.05  # labels come on top of the slots


@pytest.mark.parametrize(("malformed", "duplicates"), [(0.0, 0.0), (0.1, 0.05)])
def test_malformed_and_duplicate_shares_are_configurable(malformed, duplicates):
    config = SimConfig(malformed_share=malformed, duplicate_share=duplicates)
    slots = [m for m in take(10_000, config) if m.kind != "label"]
    by_kind = Counter(m.kind for m in slots)
    for kind, share in (("malformed", malformed), ("duplicate", duplicates)):
        if share == 0:
            assert by_kind[kind] == 0
        else:
            assert by_kind[kind] / len(slots) == pytest.approx(share, abs=0.01)


def test_keys_are_the_contract_keys(stream):
    for m in stream:
        if m.kind not in ("valid", "label"):
            continue
        d = orjson.loads(m.value)
        if m.topic == TRANSACTIONS:
            expected = d["card_id"]
        elif m.topic == APPLICATIONS:
            expected = d["applicant_id"]
        elif m.topic == SYSTEM_METRICS:
            expected = f"{d['host']}/{d['metric']}"
        else:
            expected = d["key"]
        assert m.key == expected.encode()


@pytest.mark.parametrize(("topic", "event", "key"), [
    ("transactions", {"card_id": "c-1"}, "c-1"),
    ("applications", {"applicant_id": "a-1"}, "a-1"),
    ("system-metrics", {"host": "web-1", "metric": "cpu"}, "web-1/cpu"),
    ("labels", {"key": "c-1"}, "c-1"),
    ("transactions", {}, None),  # a worker reject may lack what it raised on
])
def test_partition_key_is_the_key_producers_give_an_event(topic, event, key):
    # what the simulator keys by (above) and the worker's dead-letter records carry
    assert partition_key(topic, event) == key


# --- validity -------------------------------------------------------------------------------


def test_valid_labels_and_duplicates_meet_the_contract(stream):
    for m in stream:
        if m.kind != "malformed":
            assert contract_problems(m.topic, m.value, m.event_time_ms) == [], m


def test_malformed_messages_break_the_contract_in_many_ways(stream):
    malformed = [m for m in stream if m.kind == "malformed"]
    assert len(malformed) > 200
    kinds = Counter()
    for m in malformed:
        problems = contract_problems(m.topic, m.value, m.event_time_ms)
        assert problems, m
        kinds[problems[0].split(":")[0]] += 1
    # Not JSON, not an object, oversize, missing or unexpected fields, bad amounts, codes,
    # SSNs, times...: the validator sees every kind of mistake.
    assert len(kinds) >= 12, kinds
    assert kinds["invalid JSON"] and kinds["oversize"] and kinds["amount"] and kinds["ssn"]
    # Each is still keyed, like a producer's message.
    assert all(m.key for m in malformed)


def test_the_validator_accepts_valid_and_rejects_malformed(stream):
    validation = pytest.importorskip("schemas.validation")
    from pydantic import SecretStr

    from pipelines.settings import PiiSettings, ValidationSettings

    pii = PiiSettings(hmac_key=SecretStr("simulator-test-key-32-bytes!"))
    validator = validation.Validator(ValidationSettings(), pii)
    for m in stream:
        result = validator.validate(m.topic, m.value, now_ms=m.event_time_ms)
        if m.kind == "malformed":
            assert isinstance(result, validation.Rejection), m
        else:
            assert not isinstance(result, validation.Rejection), (m, result)


# --- labels and duplicates ---------------------------------------------------------------------


def test_labels_come_after_their_delay_and_point_at_real_events(stream):
    sent: dict[str, tuple[int, SimMessage]] = {}
    labels = 0
    for i, m in enumerate(stream):
        if m.kind == "valid":
            sent[orjson.loads(m.value)["event_id"]] = (i, m)
        elif m.kind == "label":
            labels += 1
            lab = orjson.loads(m.value)
            j, target = sent[lab["target_event_id"]]  # an event already sent
            assert j < i
            assert lab["target_stream"] == target.topic
            assert lab["key"].encode() == m.key == target.key
            target_time = event_ms(orjson.loads(target.value)["event_time"])
            assert lab["event_time"] == m.event_time_ms == target_time + 30_000
            if target.topic == SYSTEM_METRICS:
                assert (lab["label"], lab["kind"]) == (1, "confirmed_incident")
    kinds = Counter(
        (p["target_stream"], p["label"], p["kind"]) for p in payloads(stream, "label")
    )
    assert kinds[(TRANSACTIONS, 1, "confirmed_fraud")] and kinds[(TRANSACTIONS, 0, "genuine")]
    assert kinds[(APPLICATIONS, 0, "genuine")]
    assert kinds[(SYSTEM_METRICS, 1, "confirmed_incident")]
    assert labels == sum(kinds.values())


def test_label_delay_is_configurable():
    msgs = take(3_000, SimConfig(label_delay_s=2.5, fraud_share=0.2))
    sent = {orjson.loads(m.value)["event_id"]: m for m in msgs if m.kind == "valid"}
    for lab in payloads(msgs, "label"):
        target = sent[lab["target_event_id"]]
        assert lab["event_time"] - event_ms(orjson.loads(target.value)["event_time"]) == 2_500


def test_duplicates_are_byte_copies_of_earlier_messages(stream):
    seen: set[tuple[str, bytes, bytes]] = set()
    duplicates = 0
    for m in stream:
        if m.kind == "valid":
            seen.add((m.topic, m.key, m.value))
        elif m.kind == "duplicate":
            duplicates += 1
            assert (m.topic, m.key, m.value) in seen
    assert duplicates > 200


# --- injected fraud and incidents are there to be found -----------------------------------------

SMALL_CURRENCIES = {"USD", "EUR", "GBP", "CAD", "AUD"}  # not JPY: 500 JPY is a small amount


@pytest.fixture(scope="module")
def fraud_stream() -> list[SimMessage]:
    # 20 % fraud so that a short stream holds many scenarios; 40 events/s so that it spans
    # 500 s of event time, longer than most card-testing bursts.
    return take(20_000, SimConfig(rate_eps=40.0, fraud_share=0.2, seed=3))


def test_card_testing_bursts_many_small_amounts_per_card(fraud_stream):
    fraud = fraud_ids(fraud_stream)
    txs = [t for t in settled(fraud_stream, TRANSACTIONS) if t["currency"] in SMALL_CURRENCIES]
    small_times: dict[str, list[int]] = defaultdict(list)
    for t in txs:
        if t["amount"] < 10:
            small_times[t["card_id"]].append(event_ms(t["event_time"]))

    def burst(t: dict) -> bool:
        # 5+ small amounts on the card within 10 minutes of this one
        now = event_ms(t["event_time"])
        return sum(abs(s - now) <= 600_000 for s in small_times[t["card_id"]]) >= 5

    fraud_tx = [t for t in txs if t["event_id"] in fraud]
    genuine_tx = [t for t in txs if t["event_id"] not in fraud]
    assert len(fraud_tx) > 300
    assert sum(map(burst, fraud_tx)) / len(fraud_tx) > 0.4
    # Genuine purchases that look like a burst are the owner's, on a card under attack.
    assert sum(map(burst, genuine_tx)) / len(genuine_tx) < 0.02
    # The bursts are ecom, many declined.
    bursts = [t for t in fraud_tx if burst(t) and t["amount"] < 10]
    assert {t["channel"] for t in bursts} == {"ecom"}
    assert 0.3 < sum(t["status"] != "approved" for t in bursts) / len(bursts) < 0.8


def test_takeover_and_out_of_pattern_fraud_has_large_amounts(fraud_stream):
    fraud = fraud_ids(fraud_stream)
    txs = [t for t in settled(fraud_stream, TRANSACTIONS) if t["currency"] == "USD"]
    large_fraud = [t["amount"] for t in txs if t["event_id"] in fraud and t["amount"] >= 10]
    genuine = [t["amount"] for t in txs if t["event_id"] not in fraud]
    assert statistics.median(large_fraud) > 10 * statistics.median(genuine)
    # ... on-line, from a device and in a country the card does not use otherwise.
    everything = settled(fraud_stream, TRANSACTIONS)
    countries: dict[str, set] = defaultdict(set)
    devices: dict[str, set] = defaultdict(set)
    for t in everything:
        if t["event_id"] not in fraud:
            countries[t["card_id"]].add(t["country"])
            devices[t["card_id"]].add(t["device_id"])
    remote = [t for t in everything if t["event_id"] in fraud and t["channel"] == "ecom"]
    assert len(remote) > 300
    new_country = sum(t["country"] not in countries[t["card_id"]] for t in remote)
    new_device = sum(t["device_id"] not in devices[t["card_id"]] for t in remote)
    assert new_country / len(remote) > 0.95 and new_device / len(remote) > 0.95


def test_application_fraud_shares_identities_and_devices():
    # 5 events/s: ~6,000 s of event time, long enough for rings and re-used identities to show.
    msgs = take(30_000, SimConfig(rate_eps=5.0, synthetic_identity_share=0.1,
                                  identity_reuse_share=0.1, seed=5))
    fraud = fraud_ids(msgs)
    apps = settled(msgs, APPLICATIONS)
    ids_of_ssn: dict[str, set] = defaultdict(set)
    ids_of_device: dict[str, set] = defaultdict(set)
    for a in apps:
        ids_of_ssn[a["ssn"].replace("-", "")].add(a["applicant_id"])
        ids_of_device[a["device_id"]].add(a["applicant_id"])

    def linked(a: dict) -> bool:
        # SSN or device also used by another applicant
        return (len(ids_of_ssn[a["ssn"].replace("-", "")]) > 1
                or len(ids_of_device[a["device_id"]]) > 1)

    fraud_apps = [a for a in apps if a["event_id"] in fraud]
    genuine_apps = [a for a in apps if a["event_id"] not in fraud]
    assert len(fraud_apps) > 200
    assert sum(map(linked, fraud_apps)) / len(fraud_apps) > 0.7
    # Genuine applicants are linked only as victims of re-use or SSN theft.
    assert sum(map(linked, genuine_apps)) / len(genuine_apps) < 0.25

    def ratio(a: dict) -> float:
        return a["requested_amount"] / max(a["income"], 1.0)

    loans = [a for a in apps if a["product"] == "personal_loan"]
    assert (statistics.median(ratio(a) for a in loans if a["event_id"] in fraud)
            > 1.8 * statistics.median(ratio(a) for a in loans if a["event_id"] not in fraud))
    disposable = {"yopmail.com", "mailinator.com", "guerrillamail.com", "10minutemail.com"}
    assert not any(a["email_domain"] in disposable for a in genuine_apps)
    assert sum(a["email_domain"] in disposable for a in fraud_apps) / len(fraud_apps) > 0.3


def test_metric_anomalies_stand_out_from_their_series():
    msgs = take(30_000, SimConfig(share_transactions=0.0, share_applications=0.0,
                                  share_metrics=1.0, metric_anomaly_share=0.05))
    incident = fraud_ids(msgs)
    series: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for d in settled(msgs, SYSTEM_METRICS):
        series[f"{d['host']}/{d['metric']}"].append((d["value"], d["event_id"] in incident))
    assert len(series) == 48  # 8 hosts x 6 metrics
    far = {True: 0, False: 0}
    count = {True: 0, False: 0}
    stuck_runs = 0
    for samples in series.values():
        normal = [v for v, anomalous in samples if not anomalous]
        mid = statistics.median(normal)
        spread = statistics.median(abs(v - mid) for v in normal) or 1.0
        for v, anomalous in samples:
            count[anomalous] += 1
            far[anomalous] += abs(v - mid) / spread > 4
        run = 1
        for (a, la), (b, lb) in pairwise(samples):
            run = run + 1 if a == b and la and lb else 1
            stuck_runs += run == 10
    assert count[True] / (count[True] + count[False]) == pytest.approx(0.05, abs=0.025)
    assert far[True] / count[True] > 0.4  # spikes, shifts, drifts; stuck values look normal
    assert far[False] / count[False] < 0.02
    assert stuck_runs > 0  # a stuck series repeats its last value exactly


def test_metrics_follow_a_daily_cycle():
    day = START_MS // 86_400_000 * 86_400_000
    only_metrics = SimConfig(share_transactions=0.0, share_applications=0.0, share_metrics=1.0,
                             metric_anomaly_share=0.0)

    def mean_cpu(start_ms: int) -> float:
        msgs = payloads(take(3_000, only_metrics, start_ms=start_ms), "valid", SYSTEM_METRICS)
        return statistics.mean(d["value"] for d in msgs if d["metric"] == "cpu")

    night, afternoon = mean_cpu(day + 3 * 3_600_000), mean_cpu(day + 15 * 3_600_000)
    assert 15 < night < afternoon < 80


def test_config_is_checked():
    with pytest.raises(ValueError, match="sum to 1"):
        SimConfig(share_transactions=0.9)
    with pytest.raises(ValueError, match="rate_eps"):
        SimConfig(rate_eps=0)
    with pytest.raises(ValueError, match="malformed_share"):
        SimConfig(malformed_share=1.5)


# --- publishing ---------------------------------------------------------------------------------


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.flushed = 0

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append((topic, key, value))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self.flushed += 1
        return 0


def test_run_simulator_fast_sends_max_events_and_stays_in_the_past():
    fake = FakeProducer()
    config = SimConfig(label_delay_s=1.0)
    counts = run_simulator("unused:9092", config, duration_s=None, max_events=5_000,
                           realtime=False, progress=False, producer=fake)
    assert counts["total"] == len(fake.sent) == 5_000
    assert sum(counts[t] for t in (TRANSACTIONS, APPLICATIONS, SYSTEM_METRICS, LABELS)) == 5_000
    assert sum(counts[k] for k in ("valid", "malformed", "duplicate", "label")) == 5_000
    assert counts["delivery_errors"] == 0 and fake.flushed == 1
    # Fast mode starts in the past: no event is ahead of the wall clock (labels: always valid).
    now = time.time_ns() // 1_000_000
    times = [event_ms(orjson.loads(v)["event_time"]) for t, _, v in fake.sent if t == LABELS]
    assert times and max(times) <= now
    assert default_start_ms(SimConfig(), realtime=False, max_events=20_000, now_ms=now) == (
        now - 100_000)


class ClockedProducer(FakeProducer):
    """Records the wall clock of every produce; optionally sets ``stop`` after N messages."""

    def __init__(self, stop_after: int | None = None, stop: threading.Event | None = None):
        super().__init__()
        self.wall_ms: list[float] = []
        self.stop_after, self.stop = stop_after, stop

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        super().produce(topic, value, key)
        self.wall_ms.append(time.time() * 1000)
        if self.stop is not None and len(self.sent) == self.stop_after:
            self.stop.set()


def test_run_simulator_realtime_never_runs_ahead_of_event_time(capsys):
    """Real time: a message goes out no earlier than its event time (later on a busy machine)."""
    fake = ClockedProducer()
    run_simulator("unused:9092", SimConfig(rate_eps=1_000.0), duration_s=0.5, realtime=True,
                  progress=True, producer=fake, start_ms=int(time.time() * 1000))
    assert len(fake.sent) > 10
    checked = 0
    for (topic, _, value), wall in zip(fake.sent, fake.wall_ms):
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue  # a malformed message
        t = event.get("event_time") if isinstance(event, dict) else None
        # (a duplicate carries its original's older time; a malformed "future" event is days
        # ahead on purpose)
        if topic != LABELS and isinstance(t, int) and abs(t - wall) < 3_600_000:
            assert wall >= t - 5  # 5 ms: clock granularity
            checked += 1
    assert checked > 10
    assert "simulate" in capsys.readouterr().err  # the final progress line


def test_run_simulator_stops_on_the_stop_event():
    stop = threading.Event()
    fake = ClockedProducer(stop_after=20, stop=stop)  # "Ctrl-C" after the 20th message
    counts = run_simulator("unused:9092", SimConfig(rate_eps=2_000.0), duration_s=None,
                           realtime=True, progress=False, stop=stop, producer=fake)
    # It stops at the next message boundary, flushes once, and reports what it sent.
    assert counts["total"] == len(fake.sent) and 20 <= len(fake.sent) <= 21
    assert fake.flushed == 1
