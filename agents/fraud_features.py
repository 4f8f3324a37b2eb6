"""Online transaction features in event time, from compact per-card and per-merchant state.

Every window is an exponentially decayed aggregate: a count ``n`` decayed with time constant
``tau`` approximates the count over the last ``tau`` (its kernel integrates to ``tau``), and
costs two floats and one ``exp`` per update, whatever the traffic of the key. A card or a
merchant therefore holds a fixed number of floats, plus small bounded collections (its last
8 countries and devices, the merchants of its last hour), never a list of its events: about
0.5 KB a card (its numbers are one array of doubles, ``C_*`` indices).

A merchant's fraud *episode* (known frauds no more than a week apart, in event time) gives
its age in bands and its rate of *unexplained* fraud: each known fraud counts ``1 - score``
(the score the event got before its label was known) over the episode's labelled events. A
compromised terminal shows fraud after fraud that nothing else explained; a stolen card or
a fraudulent amount that happened to pass by a merchant does not make it suspect.

Merchant (terminal) fraud risk uses only labels already known: the scorer calls
``learn_label`` when a label arrives, with the time it became known, and the risk windows
decay from *that* time. A label that is 7 days late therefore moves the risk 7 days after
its transaction, as it would in production.

Limits: a card's first transactions have no history (``card_n_30d`` = 0 says so to the
model); state of a card or merchant not seen for ``max_keys`` newer keys is forgotten.

Snapshots: ``to_state`` / ``load_state`` give the exact state as JSON-able lists (one list of
slot values per card or merchant, in least-recently-seen order, so eviction resumes as it
would have).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left

from agents.features import BoundedDict

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

# Card spending windows: bursts (10 min, 1 h) and habits (1, 7, 30 days).
CARD_TAUS_MS = (10 * MINUTE_MS, HOUR_MS, DAY_MS, 7 * DAY_MS, 30 * DAY_MS)
# Merchant traffic and known-label windows (1, 7, 30 days).
MERCHANT_TAUS_MS = (DAY_MS, 7 * DAY_MS, 30 * DAY_MS)
# The card's own amount profile (mean and variance of log amount) and its known fraud.
PROFILE_TAU_MS = 30 * DAY_MS
CARD_FRAUD_TAU_MS = 7 * DAY_MS
# Amount bands (log1p of the amount, major units): cumulative indicators let a linear model
# learn a step anywhere between ~50 and ~520 (a fixed-limit rule, a merchant category's
# ceiling) instead of one slope for all amounts.
AMOUNT_BANDS = (4.0, 4.25, 4.5, 4.75, 5.0, 5.25, 5.5, 5.75, 6.0, 6.25)
# A merchant's fraud episode: known frauds no more than EPISODE_GAP_MS apart (event time).
# Its age, in weekly bands, lets the model learn how long episodes last.
EPISODE_GAP_MS = 7 * DAY_MS
EPISODE_BANDS_D = (7, 14, 21, 24, 27, 30, 35)
# The indicator vectors, precomputed: _AMOUNT_ONES[k] has the first k bands set.
_AMOUNT_ONES = tuple(tuple(1.0 if i < k else 0.0 for i in range(len(AMOUNT_BANDS)))
                     for k in range(len(AMOUNT_BANDS) + 1))
_EPISODE_ONES = tuple(tuple(1.0 if i == k else 0.0 for i in range(len(EPISODE_BANDS_D) + 1))
                      for k in range(len(EPISODE_BANDS_D) + 1))
_NO_EPISODE = (0.0,) * (len(EPISODE_BANDS_D) + 1)
MAX_SMALL_SET = 8       # usual countries / devices per card
MAX_RECENT_MERCHANTS = 32

_exp = math.exp
_log = math.log
_log1p = math.log1p
_sqrt = math.sqrt

# The feature vector, in a fixed order (pending events keep it as a compact array).
TX_FEATURES: tuple[str, ...] = (
    "amount_log",
    "card_n_10m", "card_n_1h", "card_n_1d", "card_n_7d", "card_n_30d",
    "card_mean_1d", "card_mean_7d", "card_mean_30d",
    "amount_vs_1d", "amount_vs_7d", "amount_vs_30d", "amount_z", "amount_z_linear",
    "card_anomaly_7d",
    "gap_log",
    "new_country", "new_device", "merchants_1h",
    "merchant_n_1d", "merchant_n_7d", "merchant_n_30d",
    "merchant_risk_1d", "merchant_risk_7d", "merchant_risk_30d",
    "merchant_fraud_1d", "merchant_fraud_7d",
    *(f"merchant_episode_{lo}d" for lo in (0, *EPISODE_BANDS_D)),
    "merchant_episode_rate",
    *(f"merchant_episode_rate_{lo}d" for lo in (0, *EPISODE_BANDS_D)),
    *(f"amount_band_{b}" for b in AMOUNT_BANDS),
    "card_known_fraud", "card_fraud_recent", "card_fraud_x_amount_z",
    "declined", "ecom", "night", "weekend",
)

# Reason code of each feature (several windows of one behaviour share a code).
TX_REASON_OF: dict[str, str] = {
    "amount_log": "high_amount",
    "card_n_10m": "card_velocity", "card_n_1h": "card_velocity", "card_n_1d": "card_velocity",
    "card_n_7d": "card_activity", "card_n_30d": "card_activity",
    "card_mean_1d": "card_spend_level", "card_mean_7d": "card_spend_level",
    "card_mean_30d": "card_spend_level",
    "amount_vs_1d": "amount_unusual_for_card", "amount_vs_7d": "amount_unusual_for_card",
    "amount_vs_30d": "amount_unusual_for_card", "amount_z": "amount_unusual_for_card",
    "amount_z_linear": "amount_unusual_for_card",
    "card_anomaly_7d": "card_recent_unusual_amounts",
    "merchant_fraud_1d": "merchant_fraud_risk", "merchant_fraud_7d": "merchant_fraud_risk",
    **{f"merchant_episode_{lo}d": "merchant_fraud_episode" for lo in (0, *EPISODE_BANDS_D)},
    "merchant_episode_rate": "merchant_fraud_episode",
    **{f"merchant_episode_rate_{lo}d": "merchant_fraud_episode"
       for lo in (0, *EPISODE_BANDS_D)},
    **{f"amount_band_{b}": "high_amount" for b in AMOUNT_BANDS},
    "gap_log": "rapid_repeat",
    "new_country": "new_country", "new_device": "new_device", "merchants_1h": "many_merchants",
    "merchant_n_1d": "merchant_volume", "merchant_n_7d": "merchant_volume",
    "merchant_n_30d": "merchant_volume",
    "merchant_risk_1d": "merchant_fraud_risk", "merchant_risk_7d": "merchant_fraud_risk",
    "merchant_risk_30d": "merchant_fraud_risk",
    "card_known_fraud": "card_recent_fraud", "card_fraud_recent": "card_recent_fraud",
    "card_fraud_x_amount_z": "card_recent_fraud",
    "declined": "declined", "ecom": "card_not_present", "night": "night_time",
    "weekend": "weekend", "detector_rank": "anomalous_pattern",
}


# A card's numbers, packed in one array of doubles (times in ms are exact in a double): a
# float object costs 24 bytes and a list slot 8 more, a double here 8. Indices:
C_N = 0             # 5 decayed counts (CARD_TAUS_MS), then
C_S = 5             # 5 decayed amount sums
C_T = 10            # last update of the spending windows (ms)
C_P_T, C_P_W, C_P_MEAN, C_P_VAR, C_Q_MEAN, C_Q_VAR = 11, 12, 13, 14, 15, 16  # amount profile
C_F_T, C_F_N, C_LAST_FRAUD = 17, 18, 19  # known fraud on the card (from labels), decayed
C_A_T, C_A_N = 20, 21  # unusual amounts lately: decayed sum of (z - 2)+
CARD_SLOTS = 22
_NEW_CARD = array("d", [0.0] * CARD_SLOTS)
_NEW_CARD[C_LAST_FRAUD] = -1.0


class CardState:
    """What one card remembers: its numbers (``x``, indices ``C_*``: decayed windows, amount
    profile, known fraud), its usual countries and devices (small tuples, most recent last:
    a set costs 216 bytes even with one member) and the merchants of its last hour (a flat
    tuple ``(merchant, time, ...)``, oldest first). ~0.5 KB a card with its key."""

    __slots__ = ("countries", "devices", "recent", "x")

    def __init__(self, t: int) -> None:
        x = self.x = array("d", _NEW_CARD)
        x[C_T] = x[C_P_T] = x[C_F_T] = x[C_A_T] = t
        self.countries: tuple[str, ...] = ()
        self.devices: tuple[str, ...] = ()
        self.recent: tuple = ()


class MerchantState:
    """What one merchant (terminal) remembers: decayed traffic and known-label windows."""

    __slots__ = ("ep_fu", "ep_l", "ep_last", "ep_start", "l_f", "l_n", "l_t", "n", "t")

    def __init__(self, t: int) -> None:
        self.t = t
        self.n = [0.0] * len(MERCHANT_TAUS_MS)
        self.l_t = t                    # last label update (label-arrival time)
        self.l_n = [0.0] * len(MERCHANT_TAUS_MS)  # labelled transactions, decayed
        self.l_f = [0.0] * len(MERCHANT_TAUS_MS)  # of which fraud, decayed
        self.ep_start = -1              # event time of the current fraud episode's first fraud
        self.ep_last = -1               # ... and of its latest known fraud
        self.ep_l = 0.0                 # labelled transactions of the episode (event time)
        self.ep_fu = 0.0                # ... their unexplained fraud: sum of (1 - score)


class TransactionFeatures:
    """Per-card and per-merchant online features of card transactions.

    ``compute(event)`` returns the event's features from the state *before* the event, then
    adds the event to the state (score first: an event never sees itself). ``learn_label``
    folds a label, once known, into the merchant's risk and the card's known fraud.

    Parameters
    ----------
    max_cards, max_merchants
        Keys kept; the least recently seen are forgotten beyond these.
    risk_prior
        Pseudo-count of the merchant risk's smoothing: a merchant with ``l`` labelled and
        ``f`` fraudulent transactions has risk ``f / (l + risk_prior)``, so one fraud out of
        one label is not a certainty.
    """

    names = TX_FEATURES

    def __init__(self, *, max_cards: int = 1_000_000, max_merchants: int = 500_000,
                 risk_prior: float = 1.0) -> None:
        self.max_cards = max_cards
        self.max_merchants = max_merchants
        self.risk_prior = risk_prior
        self._cards: BoundedDict[str, CardState] = BoundedDict(max_cards)
        self._merchants: BoundedDict[str, MerchantState] = BoundedDict(max_merchants)

    # ---------------------------------------------------------------------------- scoring

    def compute(self, event: dict) -> list[float]:
        """The event's feature values, in ``names`` order; then the event joins the state."""
        t = event["event_time"]
        amount = float(event["amount"])
        la = _log1p(amount)
        card_id = event["card_id"]
        merchant_id = event["merchant_id"]
        cards = self._cards
        card = cards.get(card_id)
        if card is None:
            card = CardState(t)
            cards[card_id] = card
        else:
            cards.move_to_end(card_id)
        merchants = self._merchants
        m = merchants.get(merchant_id)
        if m is None:
            m = MerchantState(t)
            merchants[merchant_id] = m
        else:
            merchants.move_to_end(merchant_id)

        # --- card spending windows, decayed to now (events out of order by a little: dt=0)
        (n0, n1, n2, n3, n4, s0, s1, s2, s3, s4, c_t, p_t, p_w, p_mean, p_var, q_mean, q_var,
         f_t, f_n, last_fraud, a_t, a_n) = card.x
        dt = t - c_t
        first = n4 == 0.0
        if dt > 0:  # unrolled: this is the hot path
            d = _exp(-dt / CARD_TAUS_MS[0])
            n0 *= d
            s0 *= d
            d = _exp(-dt / CARD_TAUS_MS[1])
            n1 *= d
            s1 *= d
            d = _exp(-dt / CARD_TAUS_MS[2])
            n2 *= d
            s2 *= d
            d = _exp(-dt / CARD_TAUS_MS[3])
            n3 *= d
            s3 *= d
            d = _exp(-dt / CARD_TAUS_MS[4])
            n4 *= d
            s4 *= d
            c_t = t
        mean1d = s2 / n2 if n2 > 1e-9 else 0.0
        mean7d = s3 / n3 if n3 > 1e-9 else 0.0
        mean30d = s4 / n4 if n4 > 1e-9 else 0.0
        # log ratio of the amount to the card's mean spend; 0 when there is no history
        vs1d = la - _log1p(mean1d) if n2 > 0.05 else 0.0
        vs7d = la - _log1p(mean7d) if n3 > 0.05 else 0.0
        vs30d = la - _log1p(mean30d) if n4 > 0.05 else 0.0
        # z-score of log amount against the card's profile (robust to a few outliers: needs
        # some weight first)
        if p_w >= 3.0:
            z = (la - p_mean) / _sqrt(p_var + 0.01)
            z = -5.0 if z < -5.0 else min(z, 10.0)
            zl = (amount - q_mean) / _sqrt(q_var + 1.0)
            zl = -5.0 if zl < -5.0 else min(zl, 20.0)
        else:
            z = zl = 0.0
        if a_n > 0.0 and t > a_t:
            a_n *= _exp(-(t - a_t) / (7 * DAY_MS))
        a_n_now = a_n
        a_n += z - 2.0 if z > 2.0 else 0.0
        a_t = t
        gap_s = dt / 1000.0 if not first else 30 * 86_400.0
        gap_log = _log1p(gap_s if gap_s > 0 else 0.0)

        country = event.get("country")
        device = event.get("device_id")
        countries, devices = card.countries, card.devices
        new_country = 1.0 if (not first and country not in countries) else 0.0
        new_device = 1.0 if (not first and device is not None and device not in devices) \
            else 0.0
        recent = card.recent  # (merchant, last visit, ...), oldest first: drop the stale ones
        if recent:
            horizon = t - HOUR_MS
            i = 0
            while i < len(recent) and recent[i + 1] < horizon:
                i += 2
            if i:
                recent = recent[i:]
            visited = recent[::2]
            seen_here = merchant_id in visited
            merchants_1h = float(len(visited) + (not seen_here))
        else:
            seen_here = False
            merchants_1h = 1.0

        # --- card's known fraud (labels already arrived), decayed from their arrival
        f_now = f_n
        if f_now > 0.0:
            f_now *= _exp(-(t - f_t) / CARD_FRAUD_TAU_MS) if t > f_t else 1.0
        fraud_recent = 1.0 if last_fraud >= 0 and t - last_fraud < 14 * DAY_MS else 0.0

        # --- merchant traffic and known-label risk, decayed to now
        mn = m.n
        dtm = t - m.t
        if dtm > 0:
            mn[0] *= _exp(-dtm / MERCHANT_TAUS_MS[0])
            mn[1] *= _exp(-dtm / MERCHANT_TAUS_MS[1])
            mn[2] *= _exp(-dtm / MERCHANT_TAUS_MS[2])
            m.t = t
        risk0 = risk1 = risk2 = mf1 = mf7 = 0.0
        episode = episode_rate = _NO_EPISODE
        ep_rate = 0.0
        l_f = m.l_f
        if l_f[2] > 0.0:
            dtl = t - m.l_t
            prior = self.risk_prior
            l_n = m.l_n
            if dtl > 0:  # unrolled over MERCHANT_TAUS_MS
                d0 = _exp(-dtl / MERCHANT_TAUS_MS[0])
                d1 = _exp(-dtl / MERCHANT_TAUS_MS[1])
                d2 = _exp(-dtl / MERCHANT_TAUS_MS[2])
            else:
                d0 = d1 = d2 = 1.0
            f0, f1 = l_f[0] * d0, l_f[1] * d1
            risk0 = f0 / (l_n[0] * d0 + prior)
            risk1 = f1 / (l_n[1] * d1 + prior)
            risk2 = l_f[2] * d2 / (l_n[2] * d2 + prior)
            mf1 = _log1p(f0)
            mf7 = _log1p(f1)
            if m.ep_last >= 0 and t - m.ep_last < 2 * EPISODE_GAP_MS:
                age_d = (t - m.ep_start) / DAY_MS
                band = bisect_left(EPISODE_BANDS_D, age_d + 1e-9)
                episode = _EPISODE_ONES[band]
                ep_rate = m.ep_fu / (m.ep_l + 1.0)
                episode_rate = [0.0] * len(_NO_EPISODE)
                episode_rate[band] = ep_rate

        channel = event.get("channel")
        hour = (t // HOUR_MS) % 24
        weekday = (t // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday: 0 = Monday
        x = [
            la,
            _log1p(n0), _log1p(n1), _log1p(n2), _log1p(n3), _log1p(n4),
            _log1p(mean1d), _log1p(mean7d), _log1p(mean30d),
            vs1d, vs7d, vs30d, z, zl, _log1p(a_n_now),
            gap_log,
            new_country, new_device, merchants_1h,
            _log1p(mn[0]), _log1p(mn[1]), _log1p(mn[2]),
            risk0, risk1, risk2,
            mf1, mf7, *episode, ep_rate, *episode_rate,
            *_AMOUNT_ONES[bisect_left(AMOUNT_BANDS, la)],
            _log1p(f_now), fraud_recent,
            # a card with known fraud is suspect when it spends unusually, not otherwise
            fraud_recent * (max(0.0, zl)),
            0.0 if event.get("status", "approved") == "approved" else 1.0,
            1.0 if channel == "ecom" or channel == "moto" else 0.0,
            1.0 if hour < 6 else 0.0,
            1.0 if weekday >= 5 else 0.0,
        ]

        # --- the event joins the state
        mn[0] += 1.0
        mn[1] += 1.0
        mn[2] += 1.0
        card.x = array("d", (n0 + 1.0, n1 + 1.0, n2 + 1.0, n3 + 1.0, n4 + 1.0,
                             s0 + amount, s1 + amount, s2 + amount, s3 + amount, s4 + amount,
                             c_t, *_profile(p_t, p_w, p_mean, p_var, q_mean, q_var, t, la,
                                            amount, 1.0),
                             f_t, f_n, last_fraud, a_t, a_n))
        if country is not None and country not in countries:
            if countries:
                card.countries = (*countries[-(MAX_SMALL_SET - 1):], country)
            else:  # most cards stay in one country: one shared tuple per country
                card.countries = _ONE_COUNTRY.get(country) or _one_country(country)
        if device is not None and device not in devices:
            card.devices = (*devices[-(MAX_SMALL_SET - 1):], device)
        if seen_here:
            i = recent.index(merchant_id)  # merchants sit at even indices, times are ints
            recent = recent[:i] + recent[i + 2:]
        recent = (*recent, merchant_id, t)
        if len(recent) > 2 * MAX_RECENT_MERCHANTS:
            recent = recent[2:]
        card.recent = recent
        return x

    # ----------------------------------------------------------------------------- labels

    def learn_label(self, card_id: str, merchant_id: str, event_time: int, amount: float,
                    label: int, known_at: int, score: float = 0.0) -> None:
        """Fold a label that became known at ``known_at`` into merchant risk and card fraud.

        A fraud label also takes the fraudulent amount out of the card's amount profile, so
        that the card's "usual" spend is its owner's, not the fraudster's.

        ``score`` is the fraud score the event got when it was scored: a merchant's fraud
        episode counts each fraud by how *unexplained* it was (``1 - score``). A fraud the
        model already caught from the card or the amount (a stolen card used anywhere, a
        fraudulent amount) says little about the merchant; frauds that nothing else
        explained, one after another at one merchant, are a compromised terminal.
        """
        m = self._merchants.get(merchant_id)
        if m is not None:
            dt = known_at - m.l_t
            if dt > 0:
                for i, tau in enumerate(MERCHANT_TAUS_MS):
                    d = _exp(-dt / tau)
                    m.l_n[i] *= d
                    m.l_f[i] *= d
                m.l_t = known_at
            for i in range(3):
                m.l_n[i] += 1.0
                if label:
                    m.l_f[i] += 1.0
            if label:
                if m.ep_last < 0 or event_time - m.ep_last > EPISODE_GAP_MS:
                    m.ep_start = event_time
                    m.ep_l = m.ep_fu = 0.0
                m.ep_last = max(m.ep_last, event_time)
            if 0 <= m.ep_start <= event_time:
                m.ep_l += 1.0
                if label:
                    m.ep_fu += 1.0 - score
        if label:
            card = self._cards.get(card_id)
            if card is not None:
                x = card.x
                if known_at > x[C_F_T]:
                    x[C_F_N] *= _exp(-(known_at - x[C_F_T]) / CARD_FRAUD_TAU_MS)
                    x[C_F_T] = known_at
                x[C_F_N] += 1.0
                x[C_LAST_FRAUD] = max(x[C_LAST_FRAUD], known_at)
                # weight of the fraudulent amount in the profile today
                p_t = x[C_P_T]
                age = p_t - event_time
                w = _exp(-age / PROFILE_TAU_MS) if age > 0 else 1.0
                x[C_P_T:C_Q_VAR + 1] = array("d", _profile(
                    *x[C_P_T:C_Q_VAR + 1], p_t, _log1p(amount), amount, -w))

    def __len__(self) -> int:
        return len(self._cards)

    # -------------------------------------------------------------------------- snapshots

    _CARD_FIELDS = CardState.__slots__
    _MERCHANT_FIELDS = MerchantState.__slots__

    def to_state(self) -> dict:
        """JSON-able state: every card and merchant, least recently seen first.

        Restoring it (``load_state``) and computing the next events gives the same features as
        never having stopped (floats survive JSON exactly).
        """
        cards = []
        for key, c in self._cards.items():
            # copies: the state is serialised on another thread while the scorer goes on
            # (the fields in __slots__ order: countries, devices, recent, x)
            cards.append([key, [list(c.countries), list(c.devices), list(c.recent),
                                c.x.tolist()]])
        merchants = [[key, [_copy(getattr(m, f)) for f in self._MERCHANT_FIELDS]]
                     for key, m in self._merchants.items()]
        return {"card_fields": list(self._CARD_FIELDS), "cards": cards,
                "merchant_fields": list(self._MERCHANT_FIELDS), "merchants": merchants}

    def load_state(self, state: dict) -> None:
        """Replace the per-card and per-merchant state by ``state`` (from ``to_state``).

        Raises
        ------
        ValueError
            The state holds other fields than this version's ``CardState`` / ``MerchantState``.
        """
        if (tuple(state["card_fields"]) != self._CARD_FIELDS
                or tuple(state["merchant_fields"]) != self._MERCHANT_FIELDS):
            raise ValueError("transaction feature state: its card/merchant fields are not this "
                             "version's; discard the snapshot and let the features warm up")
        self._cards.clear()
        for key, (countries, devices, recent, x) in state["cards"]:
            c = CardState.__new__(CardState)
            c.countries, c.devices, c.recent = tuple(countries), tuple(devices), tuple(recent)
            c.x = array("d", x)
            self._cards[key] = c
        self._merchants.clear()
        for key, row in state["merchants"]:
            m = MerchantState.__new__(MerchantState)
            for f, v in zip(self._MERCHANT_FIELDS, row):
                setattr(m, f, v)
            self._merchants[key] = m


_ONE_COUNTRY: dict[str, tuple[str]] = {}


def _one_country(country: str) -> tuple[str]:
    """The shared 1-tuple of ``country`` (a new one past 1,024 distinct values: bounded)."""
    one = (country,)
    if len(_ONE_COUNTRY) < 1024:
        _ONE_COUNTRY[country] = one
    return one


def _profile(p_t: float, w: float, mean: float, var: float, qmean: float, qvar: float,
             t: float, la: float, amount: float, weight: float) -> tuple:
    """Fold (or, with a negative weight, take out) an amount into a card's amount profile:
    the new ``(p_t, p_w, p_mean, p_var, q_mean, q_var)``.

    Robust: once the profile has some weight, a value is clipped to 3 standard deviations
    of it before it counts, so a burst of fraudulent amounts does not make itself usual
    before its labels arrive.
    """
    dt = t - p_t
    if dt > 0:
        w *= _exp(-dt / PROFILE_TAU_MS)
        p_t = t
    new_w = w + weight
    if new_w <= 1e-6:
        return p_t, 0.0, 0.0, 0.0, 0.0, 0.0
    if w >= 3.0:
        sd = 3.0 * _sqrt(var + 0.01)
        la = mean + sd if la > mean + sd else max(la, mean - sd)
        sd = 3.0 * _sqrt(qvar + 1.0)
        amount = qmean + sd if amount > qmean + sd else max(amount, qmean - sd)
    # West's weighted incremental mean and variance
    delta = la - mean
    mean += weight * delta / new_w
    var = (w * var + weight * delta * (la - mean)) / new_w
    delta = amount - qmean
    qmean += weight * delta / new_w
    qvar = (w * qvar + weight * delta * (amount - qmean)) / new_w
    return p_t, new_w, mean, max(0.0, var), qmean, max(0.0, qvar)


def _copy(value):
    """A snapshot's copy of a state field: lists are mutated in place by later events."""
    return value.copy() if isinstance(value, (list, dict)) else value


def pack(values: list[float]) -> array:
    """A compact copy of a feature vector for the pending store: 4 bytes a value (float32
    keeps ~7 significant digits, plenty for learning)."""
    return array("f", values)
