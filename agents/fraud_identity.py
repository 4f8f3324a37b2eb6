"""Online application features: identity velocity, amount against income, consistency.

Per identity attribute (SSN hash, device, IP, e-mail domain, address hash) a key keeps
decayed application counts over 1 hour, 1 day and 30 days, and the fraud known from labels
on that key (decayed over 30 days, counted from when the label became known). Small bounded
sets catch one identity used with several names (stolen SSN) and one address used by several
SSNs (synthetic-identity rings at a drop address). Everything is O(1) memory per key.

Limits: e-mail domains are shared by millions of honest applicants, so their raw counts mean
nothing; the domain contributes its *burst* (last hour against its 30-day rate) and its known
fraud rate instead.

Snapshots: ``to_state`` / ``load_state`` give the exact state as JSON-able lists, keys least
recently seen first.
"""

from __future__ import annotations

import math
from array import array

from agents.features import BoundedDict
from agents.fraud_features import DAY_MS, HOUR_MS

_exp = math.exp
_log1p = math.log1p

TAUS_MS = (HOUR_MS, DAY_MS, 30 * DAY_MS)
FRAUD_TAU_MS = 30 * DAY_MS
MAX_SMALL_SET = 8
PRODUCTS = ("credit_card", "personal_loan", "bnpl", "deposit_account")

APP_FEATURES: tuple[str, ...] = (
    "ssn_n_1h", "ssn_n_1d", "ssn_n_30d",
    "device_n_1h", "device_n_1d", "device_n_30d",
    "ip_n_1h", "ip_n_1d", "ip_n_30d",
    "address_n_1h", "address_n_1d", "address_n_30d",
    "email_burst", "email_risk",
    "identity_known_fraud",
    "ssn_names", "address_ssns", "income_change",
    "amount_vs_income", "amount_log", "no_income",
    "employment_inconsistent", "young",
    *(f"product_{p}" for p in PRODUCTS),
)

APP_REASON_OF: dict[str, str] = {
    "ssn_n_1h": "identity_reuse", "ssn_n_1d": "identity_reuse", "ssn_n_30d": "identity_reuse",
    "device_n_1h": "device_reuse", "device_n_1d": "device_reuse", "device_n_30d": "device_reuse",
    "ip_n_1h": "ip_reuse", "ip_n_1d": "ip_reuse", "ip_n_30d": "ip_reuse",
    "address_n_1h": "address_reuse", "address_n_1d": "address_reuse",
    "address_n_30d": "address_reuse",
    "email_burst": "email_domain_burst", "email_risk": "email_domain_risk",
    "identity_known_fraud": "linked_to_known_fraud",
    "ssn_names": "ssn_with_other_names", "address_ssns": "address_with_many_ssns",
    "income_change": "income_changed",
    "amount_vs_income": "amount_high_vs_income", "amount_log": "high_amount",
    "no_income": "no_income", "employment_inconsistent": "employment_inconsistent",
    "young": "young_applicant",
    **{f"product_{p}": f"product_{p}" for p in PRODUCTS},
    "detector_rank": "anomalous_pattern",
}


# A key's numbers, in one array of doubles (indices below): the time of its counts, 3 decayed
# counts (TAUS_MS), the time of its fraud counts, known fraud and labelled events decayed
# alike (f / l is a fraud rate), the last income (SSN keys). An array is no object for the
# garbage collector to walk (a key of lists and sets was three: with millions of keys, the
# collector's passes were a third of the scoring time). The small sets (the names of an
# SSN, the SSNs of an address) are tuples in ``_seen``, for the keys that have one.
K_T, K_N, K_F_T, K_F, K_L, K_INCOME = 0, 1, 4, 5, 6, 7  # K_N: 3 decayed counts (TAUS_MS)
_NEW_KEY = array("d", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])


def _new_key(t: int) -> array:
    x = array("d", _NEW_KEY)
    x[K_T] = x[K_F_T] = t
    return x


def _counts(x: array, t: int) -> tuple[float, float, float]:
    """A key's counts decayed to ``t`` (state updated)."""
    dt = t - x[K_T]
    if dt > 0:
        x[1] *= _exp(-dt / TAUS_MS[0])
        x[2] *= _exp(-dt / TAUS_MS[1])
        x[3] *= _exp(-dt / TAUS_MS[2])
        x[K_T] = t
    return x[1], x[2], x[3]


def _fraud(x: array, t: int) -> tuple[float, float]:
    """A key's known fraud and labelled events, decayed to ``t``."""
    if x[K_L] == 0.0:
        return 0.0, 0.0
    f_t = x[K_F_T]
    d = _exp(-(t - f_t) / FRAUD_TAU_MS) if t > f_t else 1.0
    return x[K_F] * d, x[K_L] * d


_INCONSISTENT_INCOME = {"unemployed": 30_000.0, "student": 40_000.0}


class ApplicationFeatures:
    """Identity velocity and consistency features of applications (see the module doc)."""

    names = APP_FEATURES

    def __init__(self, *, max_keys: int = 2_000_000, risk_prior: float = 5.0) -> None:
        self.max_keys = max_keys
        self.risk_prior = risk_prior
        self._seen: dict[str, tuple[str, ...]] = {}
        self._keys: BoundedDict[str, array] = BoundedDict(
            max_keys, on_evict=lambda key: self._seen.pop(key, None))
        # the identity keys of the event computed last: its label context (``context``)
        self._last_event: dict | None = None
        self._last_context: tuple = ()

    def _key(self, kind: str, value: object, t: int, used: list[str]) -> array | None:
        if value is None or value == "":
            return None
        k = f"{kind}:{value}"
        used.append(k)
        state = self._keys.get(k)
        if state is None:
            state = self._keys[k] = _new_key(t)
        else:
            self._keys.move_to_end(k)
        return state

    def compute(self, event: dict) -> list[float]:
        t = event["event_time"]
        used: list[str] = []
        ssn = self._key("ssn", event.get("ssn_hash"), t, used)
        dev = self._key("dev", event.get("device_id"), t, used)
        ip = self._key("ip", event.get("ip"), t, used)
        addr = self._key("addr", event.get("address_hash"), t, used)
        mail = self._key("mail", event.get("email_domain"), t, used)
        self._last_event, self._last_context = event, tuple(used)
        x: list[float] = []
        known_fraud = 0.0
        for state in (ssn, dev, ip, addr):
            if state is None:
                x += (0.0, 0.0, 0.0)
                continue
            n = _counts(state, t)
            x += (_log1p(n[0]), _log1p(n[1]), _log1p(n[2]))
            known_fraud += _fraud(state, t)[0]
        if mail is not None:
            n = _counts(mail, t)
            # last hour against the domain's hourly rate over 30 days
            burst = _log1p(n[0]) - _log1p(n[2] / 720.0)
            f, l_ = _fraud(mail, t)
            email_risk = f / (l_ + self.risk_prior)
        else:
            burst = email_risk = 0.0
        name = event.get("name_hash")
        ssn_names = 0.0
        income = float(event.get("income") or 0.0)
        income_change = 0.0
        if ssn is not None:
            ssn_key = used[0]
            seen = self._seen.get(ssn_key, ())
            ssn_names = float(len(seen) + (name is not None and name not in seen)) - 1.0
            if name is not None and name not in seen and len(seen) < MAX_SMALL_SET:
                self._seen[ssn_key] = (*seen, name)
            last_income = ssn[K_INCOME]
            if last_income >= 0.0:
                income_change = abs(_log1p(income) - _log1p(last_income))
            ssn[K_INCOME] = income
        address_ssns = 0.0
        ssn_hash = event.get("ssn_hash")
        if addr is not None:
            addr_key = f"addr:{event.get('address_hash')}"
            seen = self._seen.get(addr_key, ())
            address_ssns = float(len(seen) + (ssn_hash is not None and ssn_hash not in seen))
            address_ssns = max(0.0, address_ssns - 1.0)
            if ssn_hash is not None and ssn_hash not in seen and len(seen) < MAX_SMALL_SET:
                self._seen[addr_key] = (*seen, ssn_hash)
        requested = float(event["requested_amount"])
        employment = event.get("employment")
        age = event.get("age_years") or 40
        inconsistent = (
            income > _INCONSISTENT_INCOME.get(employment, math.inf)
            or (employment == "employed" and income < 5_000.0)
            or (employment == "retired" and age < 45)
            or (employment == "student" and age > 40)
        )
        product = event.get("product")
        x += (
            burst, email_risk, _log1p(known_fraud),
            ssn_names, address_ssns, income_change,
            math.log((requested + 100.0) / (income + 1_000.0)), _log1p(requested),
            1.0 if income <= 0.0 else 0.0,
            1.0 if inconsistent else 0.0,
            1.0 if age < 21 else 0.0,
            *(1.0 if product == p else 0.0 for p in PRODUCTS),
        )
        for state in (ssn, dev, ip, addr, mail):
            if state is not None:
                n = state
                n[1] += 1.0
                n[2] += 1.0
                n[3] += 1.0
        return x

    def context(self, event: dict) -> tuple:
        """The identity keys an event's label marks (those ``compute`` just used for it)."""
        if event is self._last_event:
            return self._last_context
        return tuple(f"{kind}:{event.get(field)}" for kind, field in (
            ("ssn", "ssn_hash"), ("dev", "device_id"), ("ip", "ip"), ("addr", "address_hash"),
            ("mail", "email_domain")) if event.get(field) not in (None, ""))

    def learn_label(self, context: tuple, label: int, known_at: int) -> None:
        """A label known at ``known_at``: fraud marks every identity attribute it used."""
        for k in context:
            state = self._keys.get(k)
            if state is None:
                continue
            x = state
            if known_at > x[K_F_T]:
                d = _exp(-(known_at - x[K_F_T]) / FRAUD_TAU_MS)
                x[K_F] *= d
                x[K_L] *= d
                x[K_F_T] = known_at
            x[K_L] += 1.0
            if label:
                x[K_F] += 1.0

    _FIELDS = ("seen", "x")

    def to_state(self) -> dict:
        """JSON-able state of every key, least recently seen first."""
        # copies: the state is serialised on another thread while the scorer goes on
        # (the fields in __slots__ order: seen, x)
        seen = self._seen
        keys = [[key, [list(seen.get(key, ())), x.tolist()]] for key, x in self._keys.items()]
        return {"key_fields": list(self._FIELDS), "keys": keys}

    def load_state(self, state: dict) -> None:
        """Replace the per-key state by ``state`` (from ``to_state``).

        Raises
        ------
        ValueError
            The state holds other fields than this version's (``seen``, ``x``).
        """
        if tuple(state["key_fields"]) != self._FIELDS:
            raise ValueError("application feature state: its key fields are not this version's;"
                             " discard the snapshot and let the features warm up")
        self._keys.clear()
        self._seen.clear()
        for key, (seen, x) in state["keys"]:
            self._keys[key] = array("d", x)
            if seen:
                self._seen[key] = tuple(seen)

    # the detector's features, in ``detector_view``'s order
    DETECTOR_KEYS = ("ssn_1d", "device_1d", "ip_1d", "address_1d", "amount_vs_income",
                     "ssn_names", "income_change")

    @staticmethod
    def detector_view(v: list[float]) -> tuple[float, ...]:
        """A few features scaled to [0, 1] for HalfSpaceTrees (``DETECTOR_KEYS``): a
        sequence, which the detector walks a batch of at a time."""
        return (min(1.0, v[1] / 2.0), min(1.0, v[4] / 2.0), min(1.0, v[7] / 2.0),
                min(1.0, v[10] / 2.0), min(1.0, max(0.0, (v[18] + 4.0) / 6.0)),
                min(1.0, v[15] / 3.0), min(1.0, v[17]))

    @staticmethod
    def cold_reasons(x: dict[str, float]) -> list[str]:
        flags = [(x["ssn_n_30d"] > 0 or x["ssn_names"] > 0, "identity_reuse"),
                 (x["identity_known_fraud"] > 0, "linked_to_known_fraud"),
                 (x["device_n_1d"] > 0.5, "device_reuse"),
                 (x["address_ssns"] > 0, "address_with_many_ssns"),
                 (x["amount_vs_income"] >= -0.7, "amount_high_vs_income"),  # over ~half
                 (x["employment_inconsistent"] > 0, "employment_inconsistent"),
                 (x["no_income"] > 0, "no_income"), (x["young"] > 0, "young_applicant")]
        return [name for on, name in flags if on]
