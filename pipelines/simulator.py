"""Synthetic riskstream traffic: transactions, applications, system metrics and their labels.

Pure generation, no Kafka (``pipelines/simulate.py`` publishes). One ``Simulator`` is a fixed
population (cards, accounts, merchants, hosts) built from ``SimConfig.seed``; ``messages()``
is an endless, event-time ordered stream of wire-form messages (the contract's JSON, raw PII
in applications), deterministic for ``(seed, start_ms)``.

What is in the stream
---------------------
- One Poisson process of ``rate_eps`` "slots" per second of event time. Each slot belongs to
  a stream (``share_*``) and is valid, malformed (``malformed_share``) or an exact re-send of a
  recent valid message of that stream (``duplicate_share``).
- Injected fraud and incidents take ordinary slots, so the shares hold. Transactions:
  card-testing bursts, account takeover, out-of-pattern amounts (``fraud_share`` of
  transactions). Applications: synthetic-identity rings and identity reuse. Metrics: spikes,
  level shifts, stuck values and drift (``metric_anomaly_share`` of samples).
- Labels come *on top of* the slots (about 2-3 % more messages at the defaults): every fraud
  transaction / application and every anomalous metric sample gets label 1 exactly
  ``label_delay_s`` of event time after it; ``genuine_label_share`` of the genuine
  transactions and applications get label 0.

Limits: system-metrics are one round-robin over ``metric_hosts * 6`` series, so each series
gets a sample every ``metric_hosts * 6 / (rate_eps * share_metrics)`` s of event time (0.8 s
at the defaults; 8 hosts at 4.8 events/s would be the ~10 s cadence of a real scraper).
Amounts are in the merchant's currency (mostly USD/EUR/GBP; JPY amounts are ~150x larger).

Examples
--------
>>> from itertools import islice
>>> sim = Simulator(SimConfig(seed=1), start_ms=1_790_000_000_000)
>>> msgs = list(islice(sim.messages(), 10_000))  # 50 s of event time: labels after 30 s
>>> sorted({m.topic for m in msgs})
['applications', 'labels', 'system-metrics', 'transactions']
>>> all(a.event_time_ms <= b.event_time_ms for a, b in zip(msgs, msgs[1:]))
True
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, Literal

import orjson

from pipelines.topics import APPLICATIONS, LABELS, SYSTEM_METRICS, TRANSACTIONS, partition_key

MessageKind = Literal["valid", "malformed", "duplicate", "label"]
STREAMS: tuple[str, ...] = (TRANSACTIONS, APPLICATIONS, SYSTEM_METRICS)
METRICS: tuple[str, ...] = (
    "cpu",
    "memory",
    "latency_p95_ms",
    "error_rate",
    "request_rate",
    "queue_depth",
)
PERCENT_METRICS = frozenset({"cpu", "memory", "error_rate"})
MAX_AMOUNT = 1_000_000.0
# Payload padding of the oversize malformed messages: over the contract's 64 KiB limit.
OVERSIZE_BYTES = 70_000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY_MS = 86_400_000


@dataclass(frozen=True)
class SimConfig:
    """What the simulator produces; every share is a probability in [0, 1].

    ``share_transactions + share_applications + share_metrics`` must be 1.
    """

    seed: int = 7
    rate_eps: float = 200.0  # all three streams together, per second of event time
    share_transactions: float = 0.6
    share_applications: float = 0.1
    share_metrics: float = 0.3
    label_delay_s: float = 30.0  # event time between an event and its label
    malformed_share: float = 0.01  # of slots, in each stream
    duplicate_share: float = 0.01  # of slots, in each stream
    fraud_share: float = 0.01  # of transactions
    synthetic_identity_share: float = 0.02  # of applications
    identity_reuse_share: float = 0.01  # of applications
    metric_anomaly_share: float = 0.01  # of metric samples
    genuine_label_share: float = 0.02  # of genuine transactions and applications: label 0
    iso_time_share: float = 0.05  # of valid events whose event_time is an ISO-8601 string
    n_cards: int = 20_000
    n_merchants: int = 2_000
    metric_hosts: int = 8

    def __post_init__(self) -> None:
        if not self.rate_eps > 0:
            raise ValueError(f"rate_eps: must be > 0, got {self.rate_eps!r}")
        shares = (self.share_transactions, self.share_applications, self.share_metrics)
        if any(s < 0 for s in shares) or not math.isclose(sum(shares), 1.0, abs_tol=1e-6):
            raise ValueError(f"share_*: must be >= 0 and sum to 1, got {shares}")
        for name in (
            "malformed_share",
            "duplicate_share",
            "fraud_share",
            "synthetic_identity_share",
            "identity_reuse_share",
            "metric_anomaly_share",
            "genuine_label_share",
            "iso_time_share",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {value!r}")
        if self.malformed_share + self.duplicate_share > 1.0:
            raise ValueError("malformed_share + duplicate_share: must be <= 1")
        if self.synthetic_identity_share + self.identity_reuse_share > 0.5:
            raise ValueError("synthetic_identity_share + identity_reuse_share: must be <= 0.5")
        if self.fraud_share > 0.5:
            raise ValueError(f"fraud_share: must be <= 0.5, got {self.fraud_share!r}")
        if self.label_delay_s < 0:
            raise ValueError(f"label_delay_s: must be >= 0, got {self.label_delay_s!r}")
        if self.n_cards < 1 or self.n_merchants < 1 or self.metric_hosts < 1:
            raise ValueError("n_cards, n_merchants, metric_hosts: must be >= 1")


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One Kafka message.

    ``event_time_ms`` is when the message is sent in simulated time (non-decreasing along
    ``messages()``). It equals the payload's ``event_time`` for valid events and labels; a
    duplicate carries the original's payload, a malformed one whatever its corruption left.
    """

    topic: str
    key: bytes
    value: bytes
    event_time_ms: int
    kind: MessageKind


# --------------------------------------------------------------------------------------------
# Reference data. Weights are rough shares of card-present volume, not real market data.

# country: (weight as home country, currency, units per USD, first IPv4 octets)
_HOME_COUNTRIES: dict[str, tuple[float, str, float, tuple[int, ...]]] = {
    "US": (0.55, "USD", 1.0, (23, 34, 44, 52, 65, 71, 98, 108, 174)),
    "GB": (0.12, "GBP", 0.8, (2, 31, 81, 86)),
    "DE": (0.08, "EUR", 0.92, (5, 46, 79, 84, 91)),
    "FR": (0.06, "EUR", 0.92, (37, 78, 90)),
    "CA": (0.06, "CAD", 1.36, (24, 70, 99, 142)),
    "ES": (0.03, "EUR", 0.92, (83, 88)),
    "IT": (0.03, "EUR", 0.92, (79, 93)),
    "NL": (0.03, "EUR", 0.92, (77, 145)),
    "AU": (0.02, "AUD", 1.52, (1, 49, 101)),
    "JP": (0.02, "JPY", 150.0, (60, 106, 126, 153)),
}
# Where account takeovers and card testing come from (first octets of the fraudster's IPs):
# never a home country of the population.
_FRAUD_IP_OCTETS: dict[str, tuple[int, ...]] = {
    "BR": (177, 179, 186),
    "RO": (109, 188),
    "UA": (176, 178),
    "PH": (110, 112),
    "NG": (102, 105, 197),
    "VN": (14, 113, 171),
    "ID": (36, 114, 180),
}
_TRAVEL_SHARE = 0.04  # genuine card-present spend abroad


@dataclass(frozen=True, slots=True)
class _Category:
    mcc: str
    weight: float  # share of genuine transactions
    median_usd: float
    sigma: float  # of the log-normal amount
    channels: tuple[tuple[str, float], ...]


_CATEGORIES: tuple[_Category, ...] = (
    _Category("5411", 0.20, 45.0, 0.7, (("pos", 0.85), ("ecom", 0.15))),  # grocery
    _Category("5812", 0.12, 35.0, 0.6, (("pos", 0.90), ("ecom", 0.10))),  # restaurants
    _Category("5814", 0.10, 12.0, 0.5, (("pos", 0.95), ("ecom", 0.05))),  # fast food
    _Category("5541", 0.08, 50.0, 0.4, (("pos", 1.0),)),  # fuel
    _Category("5311", 0.06, 80.0, 0.8, (("pos", 0.6), ("ecom", 0.4))),  # department stores
    _Category("5732", 0.03, 250.0, 0.8, (("pos", 0.5), ("ecom", 0.5))),  # electronics
    _Category("5999", 0.06, 40.0, 1.0, (("pos", 0.5), ("ecom", 0.5))),  # misc retail
    _Category("4511", 0.02, 450.0, 0.7, (("ecom", 0.9), ("moto", 0.1))),  # airlines
    _Category("7011", 0.02, 300.0, 0.6, (("ecom", 0.5), ("pos", 0.5))),  # hotels
    _Category("4121", 0.06, 22.0, 0.5, (("ecom", 1.0),)),  # taxis, ride-hailing
    _Category("5815", 0.06, 10.0, 0.8, (("ecom", 1.0),)),  # digital goods
    _Category("5734", 0.02, 30.0, 0.9, (("ecom", 1.0),)),  # software
    _Category("5944", 0.01, 600.0, 0.8, (("pos", 0.7), ("ecom", 0.3))),  # jewellery
    _Category("6011", 0.05, 100.0, 0.7, (("atm", 1.0),)),  # ATM cash
    _Category("5912", 0.05, 25.0, 0.6, (("pos", 0.9), ("ecom", 0.1))),  # pharmacies
    _Category("4900", 0.04, 120.0, 0.5, (("ecom", 0.7), ("moto", 0.3))),  # utilities
)
_MCC_INDEX = {c.mcc: i for i, c in enumerate(_CATEGORIES)}
_CARD_TESTING_MCCS = ("5815", "5734", "5999")  # cheap digital goods: instant authorisation
_HIGH_VALUE_MCCS = ("5732", "5944", "4511", "5311")

_FIRST_NAMES = (
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David",
    "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah",
    "Charles", "Karen", "Christopher", "Lisa", "Daniel", "Nancy", "Matthew", "Betty", "Anthony",
    "Sandra", "Mark", "Margaret", "Donald", "Ashley", "Steven", "Kimberly", "Andrew", "Emily",
    "Paul", "Donna", "Joshua", "Michelle", "Kenneth", "Carol", "Kevin", "Amanda", "Brian",
    "Melissa", "George", "Deborah", "Timothy", "Stephanie", "Jose", "Maria", "Luis", "Ana", "Wei",
    "Mei", "Hiroshi", "Yuki", "Ahmed", "Fatima", "Raj", "Priya"
)
_LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
    "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott",
    "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera",
    "Campbell", "Mitchell", "Carter", "Roberts", "Chen", "Wang", "Kim", "Patel", "Singh", "Khan",
    "Tanaka", "O'Brien", "Murphy", "Kowalski", "Novak"
)
_STREETS = (
    "Main", "Oak", "Pine", "Maple", "Cedar", "Elm", "Washington", "Lake", "Hill", "Park", "Sunset",
    "Lincoln", "Jackson", "River", "Church", "Highland", "Forest", "Meadow", "Willow", "Spring"
)
_STREET_SUFFIXES = ("St", "Ave", "Rd", "Blvd", "Ln", "Dr", "Ct", "Way")
# city, state, ZIP prefix
_CITIES = (
    ("Springfield", "IL", "627"),
    ("Austin", "TX", "787"),
    ("Columbus", "OH", "432"),
    ("Portland", "OR", "972"),
    ("Denver", "CO", "802"),
    ("Raleigh", "NC", "276"),
    ("Phoenix", "AZ", "850"),
    ("Tampa", "FL", "336"),
    ("Madison", "WI", "537"),
    ("Albany", "NY", "122"),
    ("Fresno", "CA", "937"),
    ("Boise", "ID", "837"),
)
_EMPLOYERS = (
    "Acme Logistics",
    "Northwind Traders",
    "General Hospital",
    "City School District",
    "Globex Corporation",
    "Initech",
    "Umbrella Health",
    "Stark Manufacturing",
    "Wayne Enterprises",
    "Contoso Ltd",
    "State University",
    "County Government",
    "Riverside Retail",
    "Blue Ridge Bank",
)
_SHELL_EMPLOYERS = ("Bright Star Consulting LLC", "Prime Capital Group", "Elite Ventures Inc")
# (domain, weight) for genuine applicants; company domains stand for work addresses.
_GENUINE_EMAIL = (
    ("gmail.com", 0.36),
    ("yahoo.com", 0.12),
    ("outlook.com", 0.10),
    ("hotmail.com", 0.08),
    ("icloud.com", 0.08),
    ("comcast.net", 0.05),
    ("aol.com", 0.03),
    ("att.net", 0.03),
    ("verizon.net", 0.02),
    ("protonmail.com", 0.01),
    ("globex.com", 0.04),
    ("initech.com", 0.04),
    ("stateuniversity.edu", 0.04),
)
_FRAUD_EMAIL = (
    "gmail.com",
    "outlook.com",
    "protonmail.com",
    "yopmail.com",
    "mailinator.com",
    "guerrillamail.com",
    "10minutemail.com",
)
# employment: (weight, min age, max age)
_EMPLOYMENT = (
    ("employed", 0.62, 21, 66),
    ("self_employed", 0.10, 24, 70),
    ("unemployed", 0.05, 19, 64),
    ("retired", 0.13, 60, 88),
    ("student", 0.10, 19, 27),
)
_PRODUCTS = (
    ("credit_card", 0.40),
    ("personal_loan", 0.25),
    ("bnpl", 0.20),
    ("deposit_account", 0.15),
)
_US_IP_OCTETS = _HOME_COUNTRIES["US"][3]
_VPN_OCTETS = (45, 185, 193)  # hosting ranges: VPNs and proxies

_SERVICES = ("payments-api", "auth", "ledger", "risk-gateway")


# --------------------------------------------------------------------------------------------
# Population


@dataclass(frozen=True, slots=True)
class _Card:
    card_id: str
    account_id: str
    home: str
    currency: str
    fx: float
    spend: float  # multiplier of the category medians
    devices: tuple[str, ...]
    ip: str


@dataclass(frozen=True, slots=True)
class _Merchant:
    merchant_id: str
    country: str
    category: _Category
    price: float  # multiplier of the category median


@dataclass(slots=True)
class _Person:
    applicant_id: str
    legal_name: str
    ssn: str
    birth: date
    address: str
    postal_code: str
    employment: str
    income: float
    employer: str | None
    device_id: str
    ip: str
    email_domain: str


@dataclass(slots=True)
class _Series:
    """One (host, metric) series and its injected anomaly, if any."""

    host: str
    service: str
    metric: str
    base: float
    amplitude: float
    noise: float
    scale: float  # size of "one anomaly unit" for this series
    phase_h: float  # hours of shift of the daily peak
    last: float = 0.0
    anomaly: str = ""  # "" | "spike" | "level_shift" | "stuck" | "drift"
    remaining: int = 0
    length: int = 0
    magnitude: float = 0.0


def _device(rng: random.Random) -> str:
    return f"dev-{rng.getrandbits(48):012x}"


def _ipv4(rng: random.Random, octets: tuple[int, ...]) -> str:
    return f"{rng.choice(octets)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randint(1, 254)}"


def _ip(rng: random.Random, octets: tuple[int, ...]) -> str:
    if rng.random() < 0.05:  # some residential IPv6
        return f"2a02:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::{rng.getrandbits(16):x}"
    return _ipv4(rng, octets)


def _ssn(rng: random.Random) -> str:
    """A valid SSN: area 001-899 except 666, group 01-99, serial 0001-9999."""
    area = rng.randint(1, 898)
    if area >= 666:
        area += 1
    group, serial = rng.randint(1, 99), rng.randint(1, 9999)
    if rng.random() < 0.1:
        return f"{area:03d}{group:02d}{serial:04d}"
    return f"{area:03d}-{group:02d}-{serial:04d}"


def _cum(weights: list[float]) -> list[float]:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


def _iso(ms: int, offset_min: int = 0) -> str:
    """``ms`` as ISO-8601 with milliseconds and a zone; exact to the millisecond."""
    when = _EPOCH + timedelta(milliseconds=ms)
    if offset_min == 0:
        return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    zone = timezone(timedelta(minutes=offset_min))
    return when.astimezone(zone).isoformat(timespec="milliseconds")


class Simulator:
    """Endless, reproducible traffic for all input topics.

    Parameters
    ----------
    config
        What to produce.
    start_ms
        Event time of the stream's start, epoch milliseconds. Together with ``config.seed`` it
        fixes the output: event ids embed a tag of both, so two runs with different starts
        never collide in deduplication.

    The population (cards, accounts, merchants, hosts) depends on the seed only. Each call of
    ``messages()`` starts the same stream from the beginning.
    """

    def __init__(self, config: SimConfig, start_ms: int) -> None:
        self.config = config
        self.start_ms = int(start_ms)
        rng = random.Random(config.seed)
        self._cards, self._card_cum = self._build_cards(rng)
        self._merchants = self._build_merchants(rng)
        self._cat_cum = _cum([c.weight for c in _CATEGORIES])
        self._home_codes = list(_HOME_COUNTRIES)
        self._home_cum = _cum([v[0] for v in _HOME_COUNTRIES.values()])
        self._host_params = self._build_hosts(rng)

    # ---------------------------------------------------------------------------- population

    def _build_cards(self, rng: random.Random) -> tuple[list[_Card], list[float]]:
        """The cards and the cumulative weights of how often each is used."""
        n = self.config.n_cards
        codes = list(_HOME_COUNTRIES)
        cum = _cum([v[0] for v in _HOME_COUNTRIES.values()])
        cards: list[_Card] = []
        weights: list[float] = []
        n_accounts = max(1, int(n * 0.8))  # some accounts hold two cards
        for i in range(n):
            home = codes[bisect(cum, rng.random() * cum[-1])]
            _, currency, fx, octets = _HOME_COUNTRIES[home]
            devices = tuple(_device(rng) for _ in range(rng.choice((1, 1, 2, 2, 3))))
            cards.append(
                _Card(
                    card_id=f"card-{i:06d}",
                    account_id=f"acct-{(i if i < n_accounts else rng.randrange(n_accounts)):06d}",
                    home=home,
                    currency=currency,
                    fx=fx,
                    spend=rng.lognormvariate(0.0, 0.5),
                    devices=devices,
                    ip=_ip(rng, octets),
                )
            )
            # A few cards are used a lot, most rarely: activity is log-normal.
            weights.append(rng.lognormvariate(0.0, 1.0))
        return cards, _cum(weights)

    def _build_merchants(self, rng: random.Random) -> dict[str, list[list[_Merchant]]]:
        """Merchants by country, then by category index; every cell holds at least one."""
        n = self.config.n_merchants
        by_country: dict[str, list[list[_Merchant]]] = {}
        for country, (cw, *_rest) in _HOME_COUNTRIES.items():
            cells: list[list[_Merchant]] = []
            for cat in _CATEGORIES:
                k = max(1, round(n * cw * cat.weight))
                cells.append(
                    [
                        _Merchant(
                            merchant_id=f"m-{country.lower()}-{cat.mcc}-{j:04d}",
                            country=country,
                            category=cat,
                            price=rng.lognormvariate(0.0, 0.3),
                        )
                        for j in range(k)
                    ]
                )
            by_country[country] = cells
        return by_country

    def _build_hosts(self, rng: random.Random) -> list[tuple[str, str, dict[str, tuple]]]:
        hosts = []
        for i in range(self.config.metric_hosts):
            service = _SERVICES[i % len(_SERVICES)]
            host = f"{service}-{i // len(_SERVICES) + 1:02d}"
            # metric: (base, daily amplitude, noise, anomaly scale)
            lat = rng.uniform(80.0, 200.0)
            err = rng.uniform(0.2, 1.0)
            req = rng.uniform(200.0, 1500.0)
            queue = rng.uniform(5.0, 30.0)
            params = {
                "cpu": (rng.uniform(20.0, 40.0), rng.uniform(10.0, 25.0), 2.5, 15.0),
                "memory": (rng.uniform(40.0, 65.0), rng.uniform(3.0, 8.0), 1.0, 10.0),
                "latency_p95_ms": (lat, lat * rng.uniform(0.2, 0.45), lat * 0.06, lat * 0.8),
                "error_rate": (err, err * 0.5, err * 0.15, max(2.0, 3 * err)),
                "request_rate": (req * 0.4, req * 0.6, req * 0.04, req * 0.5),
                "queue_depth": (queue * 0.3, queue * 0.7, math.sqrt(queue), 3 * queue + 10),
            }
            hosts.append((host, service, params))
        return hosts

    # ------------------------------------------------------------------------------- stream

    def messages(self) -> Iterator[SimMessage]:
        """Yield messages forever, in non-decreasing ``event_time_ms``.

        Labels are interleaved at their due time (event time + ``label_delay_s``).
        """
        return _Run(self).messages()


class _Run:
    """The mutable state of one pass over the stream."""

    def __init__(self, sim: Simulator) -> None:
        cfg = sim.config
        self.sim = sim
        self.cfg = cfg
        self.rng = rng = random.Random(f"riskstream-simulator:{cfg.seed}:{sim.start_ms}")
        self.tag = f"{rng.getrandbits(32):08x}"
        self.n = 0  # event id counter
        self.label_delay_ms = round(cfg.label_delay_s * 1000)
        self.labels: deque[SimMessage] = deque()
        self.recent: dict[str, deque[tuple[bytes, bytes]]] = {
            s: deque(maxlen=512) for s in STREAMS
        }
        # Scheduled fraud: (due_ms, seq, fields, label_kind); emitted in the first slot of its
        # stream at or after due_ms.
        self.tx_due: list[tuple[int, int, dict[str, Any], str]] = []
        self.app_due: list[tuple[int, int, dict[str, Any], str]] = []
        self.seq = 0
        self.people: list[_Person] = []
        self.n_applicants = 0
        self.series = [
            _Series(
                host=host,
                service=service,
                metric=metric,
                base=params[metric][0],
                amplitude=params[metric][1],
                noise=params[metric][2],
                scale=params[metric][3],
                phase_h=rng.uniform(-1.5, 1.5),
            )
            for host, service, params in sim._host_params
            for metric in METRICS
        ]
        for s in self.series:
            s.last = s.base
        self.series_i = 0
        # Per-slot probabilities of starting a scenario, from the mean events per scenario, so
        # that the configured shares are the shares of events.
        f = cfg.fraud_share
        # scenario mix (by count) and mean events: card testing 0.15 x ~24, ATO 0.35 x ~4,
        # out-of-pattern 0.5 x 1 -> ~5.5 fraud transactions per scenario
        self.p_fraud_start = f / max(1e-9, (1 - f)) / 5.5
        ga = cfg.synthetic_identity_share + cfg.identity_reuse_share
        self.p_synth_start = cfg.synthetic_identity_share / max(1e-9, 1 - ga) / 4.5
        self.p_reuse_start = cfg.identity_reuse_share / max(1e-9, 1 - ga) / 2.0
        # spike ~2, level shift ~40, stuck ~40, drift ~60 samples -> ~35.5 on average
        a = cfg.metric_anomaly_share
        self.p_anomaly_start = a / max(1e-9, 1 - a) / 35.5

    # --------------------------------------------------------------------------- helpers

    def event_id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.tag}-{self.n:x}"

    def wire_time(self, now_ms: int) -> int | str:
        r = self.rng.random()
        share = self.cfg.iso_time_share
        if r >= share:
            return now_ms
        if r < share * 0.8:
            return _iso(now_ms)
        return _iso(now_ms, self.rng.choice((-300, 60, 120, 330)))

    def emit(
        self,
        topic: str,
        key: str,
        fields: dict[str, Any],
        now_ms: int,
        label: tuple[int, str] | None,
    ) -> SimMessage:
        """A valid message; remembers it for duplicates and schedules its label."""
        value = orjson.dumps(fields)
        kb = key.encode()
        self.recent[topic].append((kb, value))
        if label is not None:
            due = now_ms + self.label_delay_ms
            lab = {
                "event_id": self.event_id("lb"),
                "event_time": due,
                "target_stream": topic,
                "target_event_id": fields["event_id"],
                "key": key,
                "label": label[0],
                "kind": label[1],
            }
            self.labels.append(SimMessage(LABELS, kb, orjson.dumps(lab), due, "label"))
        return SimMessage(topic, kb, value, now_ms, "valid")

    # ---------------------------------------------------------------------------- the loop

    def messages(self) -> Iterator[SimMessage]:
        cfg, rng = self.cfg, self.rng
        start_ms = self.sim.start_ms
        rate = cfg.rate_eps
        c_tx = cfg.share_transactions
        c_app = c_tx + cfg.share_applications
        p_bad = cfg.malformed_share
        p_dup = p_bad + cfg.duplicate_share
        labels = self.labels
        expo = rng.expovariate
        rand = rng.random
        t_s = 0.0
        streams = {
            TRANSACTIONS: self.transaction,
            APPLICATIONS: self.application,
            SYSTEM_METRICS: self.metric,
        }
        while True:
            t_s += expo(rate)
            now_ms = start_ms + int(t_s * 1000.0)
            while labels and labels[0].event_time_ms <= now_ms:
                yield labels.popleft()
            u = rand()
            topic = TRANSACTIONS if u < c_tx else APPLICATIONS if u < c_app else SYSTEM_METRICS
            k = rand()
            if k < p_bad:
                yield self.malformed(topic, now_ms)
            elif k < p_dup and self.recent[topic]:
                key, value = rng.choice(self.recent[topic])
                yield SimMessage(topic, key, value, now_ms, "duplicate")
            else:
                yield streams[topic](now_ms)

    # ----------------------------------------------------------------------- transactions

    def transaction(self, now_ms: int) -> SimMessage:
        due = self.tx_due
        if due and due[0][0] <= now_ms:
            _, _, fields, kind = heapq.heappop(due)
            return self._tx_message(fields, now_ms, (1, kind))
        r = self.rng.random()
        p = self.p_fraud_start
        if r < p:
            return self._start_tx_fraud(now_ms, r / p)
        fields = self.genuine_tx_fields()
        label = (0, "genuine") if self.rng.random() < self.cfg.genuine_label_share else None
        return self._tx_message(fields, now_ms, label)

    _ID_PREFIX = {TRANSACTIONS: "tx", APPLICATIONS: "ap", SYSTEM_METRICS: "mt"}

    def _message(
        self, stream: str, fields: dict[str, Any], now_ms: int, label: tuple[int, str] | None
    ) -> SimMessage:
        out = {"event_id": self.event_id(self._ID_PREFIX[stream]),
               "event_time": self.wire_time(now_ms)}
        out.update(fields)
        return self.emit(stream, partition_key(stream, fields), out, now_ms, label)

    def _tx_message(self, fields: dict[str, Any], now_ms: int,
                    label: tuple[int, str] | None) -> SimMessage:
        return self._message(TRANSACTIONS, fields, now_ms, label)

    def _pick_card(self) -> _Card:
        sim = self.sim
        return sim._cards[bisect(sim._card_cum, self.rng.random() * sim._card_cum[-1])]

    def genuine_tx_fields(self) -> dict[str, Any]:
        rng, sim = self.rng, self.sim
        card = self._pick_card()
        cat_i = bisect(sim._cat_cum, rng.random() * sim._cat_cum[-1])
        cat = _CATEGORIES[cat_i]
        r = rng.random()
        channel = cat.channels[0][0]
        acc = 0.0
        for name, w in cat.channels:
            acc += w
            if r < acc:
                channel = name
                break
        country = card.home
        if channel in ("pos", "atm") and rng.random() < _TRAVEL_SHARE:
            country = sim._home_codes[bisect(sim._home_cum, rng.random() * sim._home_cum[-1])]
        merchant = rng.choice(sim._merchants[country][cat_i])
        _, currency, fx, _ = _HOME_COUNTRIES[merchant.country]
        if channel == "atm":
            amount = float(max(1, round(rng.lognormvariate(0.0, cat.sigma) * 5)) * 20)
            amount = round(amount * fx, 0 if fx > 50 else 2)
        else:
            usd = cat.median_usd * card.spend * merchant.price * rng.lognormvariate(0.0, cat.sigma)
            amount = round(min(max(usd, 0.5) * fx, MAX_AMOUNT), 0 if fx > 50 else 2)
        if channel == "ecom":
            device = rng.choice(card.devices) if rng.random() < 0.93 else _device(rng)
            ip = card.ip if rng.random() < 0.9 else _ip(rng, _HOME_COUNTRIES[card.home][3])
        else:
            device = ip = None
        r = rng.random()
        # Declines are more frequent on large amounts (limits, issuer rules).
        decline = 0.02 if amount < 300 * fx else 0.06
        status = "declined" if r < decline else "failed" if r < decline + 0.003 else "approved"
        return {
            "card_id": card.card_id,
            "account_id": card.account_id,
            "merchant_id": merchant.merchant_id,
            "mcc": cat.mcc,
            "amount": amount,
            "currency": currency,
            "channel": channel,
            "country": country,
            "status": status,
            "device_id": device,
            "ip": ip,
        }

    def _schedule_tx(self, due_ms: int, fields: dict[str, Any], kind: str) -> None:
        self.seq += 1
        heapq.heappush(self.tx_due, (due_ms, self.seq, fields, kind))

    def _start_tx_fraud(self, now_ms: int, u: float) -> SimMessage:
        """Start a fraud scenario; its first event goes out now, the rest are scheduled."""
        rng, sim = self.rng, self.sim
        card = self._pick_card()
        fraud_ip = _ipv4(rng, _FRAUD_IP_OCTETS[rng.choice(list(_FRAUD_IP_OCTETS))])
        fraud_device = _device(rng)
        # Remote fraud buys from merchants abroad (cross-border e-commerce): `country`, the
        # merchant's, is new for the card; so are the device and the IP.
        abroad = card.home
        while abroad == card.home:
            abroad = sim._home_codes[bisect(sim._home_cum, rng.random() * sim._home_cum[-1])]
        cells = sim._merchants[abroad]
        _, currency, fx, _ = _HOME_COUNTRIES[abroad]
        ndp = 0 if fx > 50 else 2
        base = {"card_id": card.card_id, "account_id": card.account_id}
        events: list[tuple[int, dict[str, Any], str]] = []
        if u < 0.15:
            # Card testing: many tiny e-commerce attempts at one or two merchants within
            # minutes, half of them declined, from a fraudster's device abroad.
            merchants = [
                rng.choice(cells[_MCC_INDEX[rng.choice(_CARD_TESTING_MCCS)]])
                for _ in range(rng.choice((1, 1, 2)))
            ]
            n = rng.randint(8, 40)
            span_ms = rng.randint(60_000, 480_000)
            offsets = sorted(rng.randrange(span_ms) for _ in range(n - 1))
            for off in [0, *offsets]:
                m = rng.choice(merchants)
                r = rng.random()
                status = "declined" if r < 0.5 else "failed" if r < 0.55 else "approved"
                if rng.random() < 0.3:
                    amount = rng.choice((1.0, 0.5, 2.0))  # the classic test amounts
                else:
                    amount = round(rng.uniform(0.5, 5.0), 2)
                fields = {
                    **base,
                    "merchant_id": m.merchant_id,
                    "mcc": m.category.mcc,
                    "amount": round(amount * fx, ndp) or 1.0,
                    "currency": currency,
                    "channel": "ecom",
                    "country": abroad,
                    "status": status,
                    "device_id": fraud_device,
                    "ip": fraud_ip,
                }
                events.append((now_ms + off, fields, "confirmed_fraud"))
        elif u < 0.5:
            # Account takeover: new device, new country, then several high amounts.
            n = rng.randint(2, 6)
            span_ms = rng.randint(5 * 60_000, 40 * 60_000)
            offsets = sorted(rng.randrange(span_ms) for _ in range(n - 1))
            for off in [0, *offsets]:
                cat_i = _MCC_INDEX[rng.choice(_HIGH_VALUE_MCCS)]
                m = rng.choice(cells[cat_i])
                usd = m.category.median_usd * card.spend * rng.uniform(5.0, 20.0)
                status = "approved" if rng.random() < 0.85 else "declined"
                fields = {
                    **base,
                    "merchant_id": m.merchant_id,
                    "mcc": m.category.mcc,
                    "amount": round(min(usd * fx, MAX_AMOUNT), ndp),
                    "currency": currency,
                    "channel": "ecom",
                    "country": abroad,
                    "status": status,
                    "device_id": fraud_device,
                    "ip": fraud_ip,
                }
                chargeback = status == "approved" and rng.random() < 0.7
                kind = "chargeback" if chargeback else "confirmed_fraud"
                events.append((now_ms + off, fields, kind))
        else:
            # Out-of-pattern amount: one purchase 10-40x the card's usual spend, with a
            # stolen card in a shop (at home) or on-line.
            ecom = rng.random() < 0.5
            if not ecom:
                abroad = card.home
                _, currency, fx, _ = _HOME_COUNTRIES[abroad]
                ndp = 0 if fx > 50 else 2
            cat_i = _MCC_INDEX[rng.choice(("5944", "5732"))]
            m = rng.choice(sim._merchants[abroad][cat_i])
            usd = m.category.median_usd * card.spend * rng.uniform(10.0, 40.0)
            fields = {
                **base,
                "merchant_id": m.merchant_id,
                "mcc": m.category.mcc,
                "amount": round(min(usd * fx, MAX_AMOUNT), ndp),
                "currency": currency,
                "channel": "ecom" if ecom else "pos",
                "country": abroad,
                "status": "approved",
                "device_id": fraud_device if ecom else None,
                "ip": fraud_ip if ecom else None,
            }
            kind = "chargeback" if rng.random() < 0.7 else "confirmed_fraud"
            events.append((now_ms, fields, kind))
        _, first, kind = events[0]
        for due_ms, fields, k in events[1:]:
            self._schedule_tx(due_ms, fields, k)
        return self._tx_message(first, now_ms, (1, kind))

    # ------------------------------------------------------------------------ applications

    def application(self, now_ms: int) -> SimMessage:
        due = self.app_due
        if due and due[0][0] <= now_ms:
            _, _, fields, kind = heapq.heappop(due)
            return self._app_message(fields, now_ms, (1, kind))
        r = self.rng.random()
        if r < self.p_synth_start:
            return self._start_synthetic_ring(now_ms)
        if r < self.p_synth_start + self.p_reuse_start and self.people:
            return self._start_identity_reuse(now_ms)
        if self.people and self.rng.random() < 0.12:  # a returning customer
            person = self.rng.choice(self.people)
        else:
            person = self._new_person(now_ms)
            if len(self.people) < 100_000:
                self.people.append(person)
            else:
                self.people[self.rng.randrange(len(self.people))] = person
        fields = self._app_fields(person, self._product_amount(person))
        label = (0, "genuine") if self.rng.random() < self.cfg.genuine_label_share else None
        return self._app_message(fields, now_ms, label)

    def _app_message(self, fields: dict[str, Any], now_ms: int,
                     label: tuple[int, str] | None) -> SimMessage:
        return self._message(APPLICATIONS, fields, now_ms, label)

    def _applicant_id(self) -> str:
        self.n_applicants += 1
        return f"apl-{self.tag}-{self.n_applicants:x}"

    def _new_person(self, now_ms: int) -> _Person:
        rng = self.rng
        r = rng.random()
        acc = 0.0
        employment, lo, hi = _EMPLOYMENT[0][0], _EMPLOYMENT[0][2], _EMPLOYMENT[0][3]
        for name, w, a_lo, a_hi in _EMPLOYMENT:
            acc += w
            if r < acc:
                employment, lo, hi = name, a_lo, a_hi
                break
        if employment == "employed":
            income, employer = rng.lognormvariate(math.log(62_000), 0.45), rng.choice(_EMPLOYERS)
        elif employment == "self_employed":
            income = rng.lognormvariate(math.log(55_000), 0.8)
            employer = f"{rng.choice(_LAST_NAMES)} Consulting LLC" if rng.random() < 0.5 else None
        elif employment == "retired":
            income, employer = rng.uniform(18_000, 60_000), None
        elif employment == "student":
            income, employer = rng.uniform(0, 18_000), None
        else:
            income, employer = rng.uniform(0, 12_000), None
        r = rng.random()
        acc = 0.0
        email = _GENUINE_EMAIL[0][0]
        for domain, w in _GENUINE_EMAIL:
            acc += w
            if r < acc:
                email = domain
                break
        address, postal_code = self._address()
        return _Person(
            applicant_id=self._applicant_id(),
            legal_name=self._name(),
            ssn=_ssn(rng),
            birth=self._birth(now_ms, lo, hi),
            address=address,
            postal_code=postal_code,
            employment=employment,
            income=round(income, -2),
            employer=employer,
            device_id=_device(rng),
            ip=_ip(rng, _US_IP_OCTETS),
            email_domain=email,
        )

    def _name(self) -> str:
        rng = self.rng
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        if rng.random() < 0.2:
            return f"{first} {chr(65 + rng.randrange(26))}. {last}"
        return f"{first} {last}"

    def _birth(self, now_ms: int, min_age: int, max_age: int) -> date:
        today = (_EPOCH + timedelta(milliseconds=now_ms)).date()
        # Age in whole years is in [min_age, max_age] at the event, whatever the day.
        return today - timedelta(days=_days_back(self.rng, min_age, max_age))

    def _address(self) -> tuple[str, str]:
        rng = self.rng
        city, state, zip3 = rng.choice(_CITIES)
        street = f"{rng.randint(1, 9999)} {rng.choice(_STREETS)} {rng.choice(_STREET_SUFFIXES)}"
        return f"{street}, {city}, {state}", f"{zip3}{rng.randrange(100):02d}"

    def _product_amount(self, person: _Person, greed: float = 1.0) -> tuple[str, float]:
        rng = self.rng
        r = rng.random()
        acc, product = 0.0, _PRODUCTS[0][0]
        for name, w in _PRODUCTS:
            acc += w
            if r < acc:
                product = name
                break
        income = max(person.income, 6_000.0)
        if product == "credit_card":
            amount = round(min(30_000.0, income * rng.uniform(0.05, 0.25) * greed) / 500) * 500.0
            amount = max(amount, 500.0)
        elif product == "personal_loan":
            amount = max(1_000.0, round(income * rng.uniform(0.05, 0.4) * greed, -2))
        elif product == "bnpl":
            amount = round(rng.uniform(40.0, 1_500.0) * min(greed, 2.0), 2)
        else:
            amount = round(rng.lognormvariate(math.log(2_000), 1.0), -1) or 100.0
        return product, amount

    def _app_fields(self, p: _Person, product_amount: tuple[str, float]) -> dict[str, Any]:
        return {
            "applicant_id": p.applicant_id,
            "legal_name": p.legal_name,
            "ssn": p.ssn,
            "birth_date": p.birth.isoformat(),
            "address": p.address,
            "postal_code": p.postal_code,
            "income": p.income,
            "employment": p.employment,
            "employer": p.employer,
            "requested_amount": product_amount[1],
            "product": product_amount[0],
            "device_id": p.device_id,
            "ip": p.ip,
            "email_domain": p.email_domain,
        }

    def _schedule_app(self, due_ms: int, fields: dict[str, Any], kind: str) -> None:
        self.seq += 1
        heapq.heappush(self.app_due, (due_ms, self.seq, fields, kind))

    def _start_synthetic_ring(self, now_ms: int) -> SimMessage:
        """A ring of synthetic identities: thin files, shared device, drop address and IP,
        valid-format SSNs that are new or belong to someone else, high requested amounts."""
        rng = self.rng
        devices = [_device(rng) for _ in range(rng.choice((1, 1, 2)))]
        ip = _ipv4(rng, _VPN_OCTETS if rng.random() < 0.5 else _US_IP_OCTETS)
        drop_address, drop_zip = self._address()
        n = rng.randint(2, 7)
        span_ms = rng.randint(10 * 60_000, 90 * 60_000)  # days in real life; minutes here
        offsets = [0, *sorted(rng.randrange(span_ms) for _ in range(n - 1))]
        first: dict[str, Any] | None = None
        for off in offsets:
            if self.people and rng.random() < 0.5:
                ssn = rng.choice(self.people).ssn  # someone else's SSN, another name and DOB
            else:
                ssn = _ssn(rng)
            employment = "self_employed" if rng.random() < 0.6 else "employed"
            person = _Person(
                applicant_id=self._applicant_id(),
                legal_name=self._name(),
                ssn=ssn,
                birth=self._birth(now_ms, 19, 27),
                address=drop_address,
                postal_code=drop_zip,
                employment=employment,
                income=round(rng.uniform(20_000, 45_000), -2),
                employer=rng.choice(_SHELL_EMPLOYERS) if rng.random() < 0.6 else None,
                device_id=rng.choice(devices),
                ip=ip,
                email_domain=rng.choice(_FRAUD_EMAIL),
            )
            fields = self._app_fields(person, self._product_amount(person, rng.uniform(2.5, 5.0)))
            if first is None:
                first = fields
            else:
                self._schedule_app(now_ms + off, fields, "confirmed_fraud")
        assert first is not None
        return self._app_message(first, now_ms, (1, "confirmed_fraud"))

    def _start_identity_reuse(self, now_ms: int) -> SimMessage:
        """A stolen identity (name, SSN, birth date of an earlier applicant) re-used from new
        sign-ups with other devices, addresses and e-mail domains within the hour."""
        rng = self.rng
        victim = rng.choice(self.people)
        device = _device(rng)
        n = rng.choice((1, 2, 2, 3))
        span_ms = rng.randint(5 * 60_000, 60 * 60_000)
        offsets = [0, *sorted(rng.randrange(span_ms) for _ in range(n - 1))]
        first: dict[str, Any] | None = None
        for off in offsets:
            address, postal = self._address()
            person = _Person(
                applicant_id=self._applicant_id(),
                legal_name=victim.legal_name,
                ssn=victim.ssn,
                birth=victim.birth,
                address=address,
                postal_code=postal,
                employment="employed",
                income=round(max(victim.income, 30_000.0) * rng.uniform(1.5, 3.0), -2),
                employer=rng.choice(_EMPLOYERS),
                device_id=device if rng.random() < 0.7 else _device(rng),
                ip=_ipv4(rng, _VPN_OCTETS if rng.random() < 0.6 else _US_IP_OCTETS),
                email_domain=rng.choice(_FRAUD_EMAIL),
            )
            fields = self._app_fields(person, self._product_amount(person, rng.uniform(1.5, 3.0)))
            if first is None:
                first = fields
            else:
                self._schedule_app(now_ms + off, fields, "confirmed_fraud")
        assert first is not None
        return self._app_message(first, now_ms, (1, "confirmed_fraud"))

    # ----------------------------------------------------------------------------- metrics

    def metric(self, now_ms: int) -> SimMessage:
        series = self.series
        s = series[self.series_i]
        self.series_i = (self.series_i + 1) % len(series)
        rng = self.rng
        normal = self._normal_value(s, now_ms)
        if not s.anomaly and rng.random() < self.p_anomaly_start:
            r = rng.random()
            if r < 0.25:
                s.anomaly, s.length = "spike", rng.randint(1, 3)
                s.magnitude = rng.uniform(3.0, 6.0)
            elif r < 0.5:
                s.anomaly, s.length = "level_shift", rng.randint(20, 60)
                s.magnitude = rng.uniform(1.5, 3.0)
            elif r < 0.75:
                s.anomaly, s.length = "stuck", rng.randint(20, 60)
            else:
                s.anomaly, s.length = "drift", rng.randint(30, 90)
                s.magnitude = rng.uniform(2.0, 4.0)
            s.remaining = s.length
        if s.anomaly:
            # request_rate falls in an incident (traffic lost); everything else rises.
            sign = -1.0 if s.metric == "request_rate" else 1.0
            if s.anomaly == "stuck":
                value = s.last
            elif s.anomaly == "drift":
                done = (s.length - s.remaining + 1) / s.length
                value = normal + sign * done * s.magnitude * s.scale
            else:
                value = normal + sign * s.magnitude * s.scale
            value = self._clip(s.metric, value)
            s.remaining -= 1
            if s.remaining <= 0:
                s.anomaly = ""
            label: tuple[int, str] | None = (1, "confirmed_incident")
        else:
            value = s.last = normal
            label = None
        fields = {
            "event_id": self.event_id("mt"),
            "event_time": self.wire_time(now_ms),
            "host": s.host,
            "service": s.service,
            "metric": s.metric,
            "value": value,
        }
        return self.emit(SYSTEM_METRICS, partition_key(SYSTEM_METRICS, fields), fields, now_ms,
                         label)

    def _normal_value(self, s: _Series, now_ms: int) -> float:
        rng = self.rng
        hour = (now_ms % _DAY_MS) / 3_600_000.0
        # Daily load in [0, 1], peaking around 15:00 UTC (+- a per-series shift).
        load = 0.5 + 0.5 * math.cos(2.0 * math.pi * (hour - 15.0 - s.phase_h) / 24.0)
        m = s.metric
        if m == "latency_p95_ms" or m == "request_rate":
            v = (s.base + s.amplitude * load) * rng.lognormvariate(0.0, s.noise / max(s.base, 1.0))
        elif m == "queue_depth":
            return float(max(0, round(s.base + s.amplitude * load + rng.gauss(0.0, s.noise))))
        else:
            v = s.base + s.amplitude * load + rng.gauss(0.0, s.noise)
        return self._clip(m, v)

    @staticmethod
    def _clip(metric: str, v: float) -> float:
        if metric in PERCENT_METRICS:
            return round(min(100.0, max(0.0, v)), 3)
        if metric == "queue_depth":
            return float(max(0, round(v)))
        return round(max(0.0, v), 2)

    # --------------------------------------------------------------------------- malformed

    def malformed(self, topic: str, now_ms: int) -> SimMessage:
        """An event that breaks the contract in one way; keyed like a valid one."""
        rng = self.rng
        if topic == TRANSACTIONS:
            fields = self.genuine_tx_fields()
        elif topic == APPLICATIONS:
            person = self._new_person(now_ms)
            fields = self._app_fields(person, self._product_amount(person))
        else:
            s = rng.choice(self.series)
            fields = {
                "host": s.host,
                "service": s.service,
                "metric": s.metric,
                "value": self._normal_value(s, now_ms),
            }
        d: dict[str, Any] = {"event_id": self.event_id(self._ID_PREFIX[topic]),
                             "event_time": now_ms, **fields}
        key = partition_key(topic, fields)  # taken before corrupt() may drop the field
        corrupt = rng.choice(_CORRUPTIONS[topic])
        value = corrupt(rng, d, now_ms)
        return SimMessage(topic, key.encode(), value, now_ms, "malformed")


def _days_back(rng: random.Random, min_age: int, max_age: int) -> int:
    """Days back from today to a birth date whose age is in [min_age, max_age] years."""
    return rng.randint(min_age * 366 + 1, (max_age + 1) * 365 - 2)


# ------------------------------------------------------------------------------ corruptions
# Each takes the rng, a valid event dict (wire form, event_time as int) and now_ms, and
# returns bytes that the contract rejects.

_Corrupt = Callable[[random.Random, dict[str, Any], int], bytes]

_REQUIRED = {
    TRANSACTIONS: (
        "event_id", "event_time", "card_id", "account_id", "merchant_id", "mcc", "amount",
        "currency", "channel", "country",
    ),
    APPLICATIONS: (
        "event_id", "event_time", "applicant_id", "legal_name", "ssn", "birth_date", "income",
        "employment", "requested_amount", "product", "email_domain",
    ),
    SYSTEM_METRICS: ("event_id", "event_time", "host", "service", "metric", "value"),
}
_NUMBER_FIELD = {
    TRANSACTIONS: ("amount",),
    APPLICATIONS: ("income", "requested_amount"),
    SYSTEM_METRICS: ("value",),
}
_PAD_FIELD = {TRANSACTIONS: "merchant_id", APPLICATIONS: "employer", SYSTEM_METRICS: "service"}
_TYPO_FIELD = {TRANSACTIONS: "amout", APPLICATIONS: "incomee", SYSTEM_METRICS: "hostname"}


def _stream_of(d: dict[str, Any]) -> str:
    if "card_id" in d:
        return TRANSACTIONS
    if "applicant_id" in d:
        return APPLICATIONS
    return SYSTEM_METRICS


def _truncated(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    b = orjson.dumps(d)
    return b[: rng.randint(1, len(b) - 1)]  # any proper prefix of an object is not JSON


def _not_object(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    return orjson.dumps([d])


def _missing(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    del d[rng.choice(_REQUIRED[_stream_of(d)])]
    return orjson.dumps(d)


def _wrong_type(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    d[rng.choice(_NUMBER_FIELD[_stream_of(d)])] = rng.choice(("abc", "n/a", "", "twelve", "1,5"))
    return orjson.dumps(d)


def _oversize(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    d[_PAD_FIELD[_stream_of(d)]] = "x" * OVERSIZE_BYTES
    return orjson.dumps(d)


def _future(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    future_ms = now_ms + rng.randint(200, 2_000) * _DAY_MS  # a clock or unit bug
    d["event_time"] = future_ms if rng.random() < 0.5 else _iso(future_ms)
    return orjson.dumps(d)


def _naive_time(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    d["event_time"] = _iso(now_ms)[:-1]  # ISO without its zone
    return orjson.dumps(d)


def _unexpected_field(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    d[_TYPO_FIELD[_stream_of(d)]] = 1
    return orjson.dumps(d)


def _empty_event_id(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    d["event_id"] = "" if rng.random() < 0.5 else "e" * 65
    return orjson.dumps(d)


def _bad_ip(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    d["ip"] = rng.choice(("999.10.1.1", "10.0.0", "not-an-ip", "1.2.3.4.5"))
    return orjson.dumps(d)


def _tx_amount(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    d["amount"] = rng.choice((0, 0.0, -1.0, -round(rng.uniform(1, 500), 2), 2_000_000.0))
    return orjson.dumps(d)


def _tx_currency(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    d["currency"] = rng.choice(("ZZZ", "ABC", "QQQ", "US$", "EURO"))
    return orjson.dumps(d)


def _tx_country(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    d["country"] = rng.choice(("USA", "U1", "", "GBR"))
    return orjson.dumps(d)


def _tx_mcc(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    d["mcc"] = rng.choice(("541", "54a1", "54111", ""))
    return orjson.dumps(d)


def _tx_enum(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    if rng.random() < 0.5:
        d["channel"] = rng.choice(("phone", "POS ", "web"))
    else:
        d["status"] = rng.choice(("pending", "ok"))
    return orjson.dumps(d)


def _app_ssn(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    d["ssn"] = rng.choice(
        (
            "000-12-3456",  # area 000
            "666-12-3456",  # area 666
            f"9{rng.randint(0, 99):02d}-12-3456",  # area 9xx
            "123-00-4567",  # group 00
            "123-45-0000",  # serial 0000
            "123-45-678",  # too short
            "12-345-6789",  # misplaced dashes
            "12345678a",
            "1234567890",
        )
    )
    return orjson.dumps(d)


def _app_age(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    today = (_EPOCH + timedelta(milliseconds=now_ms)).date()
    if rng.random() < 0.5:
        d["birth_date"] = today.replace(year=today.year - 12, day=min(today.day, 28)).isoformat()
    else:
        d["birth_date"] = rng.choice(("1890-01-01", "31/12/1980", "1980-13-01"))
    return orjson.dumps(d)


def _app_amounts(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    if rng.random() < 0.5:
        d["income"] = -round(rng.uniform(1, 50_000), -2)
    else:
        d["requested_amount"] = rng.choice((0, -500.0))
    return orjson.dumps(d)


def _app_enum(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    if rng.random() < 0.5:
        d["product"] = rng.choice(("mortgage", "CreditCard"))
    else:
        d["employment"] = rng.choice(("pirate", "full_time"))
    return orjson.dumps(d)


def _metric_range(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    if d["metric"] in PERCENT_METRICS:
        d["value"] = rng.choice((round(rng.uniform(100.5, 250.0), 2), -3.0))
    else:
        d["value"] = -round(rng.uniform(1, 100), 2)
    return orjson.dumps(d)


def _metric_non_finite(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    # Some encoders write NaN/Infinity; it is not JSON, and orjson refuses to.
    d["value"] = 0.0
    literal = rng.choice((b"NaN", b"Infinity", b"-Infinity"))
    return orjson.dumps(d).replace(b'"value":0.0', b'"value":' + literal)


def _metric_name(rng: random.Random, d: dict[str, Any], now_ms: int) -> bytes:
    d["metric"] = rng.choice(("disk_io", "CPU", "latency_p99_ms"))
    return orjson.dumps(d)


_COMMON: tuple[_Corrupt, ...] = (
    _truncated,
    _not_object,
    _missing,
    _wrong_type,
    _oversize,
    _future,
    _naive_time,
    _unexpected_field,
    _empty_event_id,
)
_CORRUPTIONS: dict[str, tuple[_Corrupt, ...]] = {
    TRANSACTIONS: _COMMON
    + (_tx_amount, _tx_amount, _tx_currency, _tx_country, _tx_mcc, _tx_enum, _bad_ip),
    APPLICATIONS: _COMMON + (_app_ssn, _app_ssn, _app_age, _app_amounts, _app_enum, _bad_ip),
    SYSTEM_METRICS: _COMMON + (_metric_range, _metric_range, _metric_non_finite, _metric_name),
}
