"""Online transaction features in event time, from compact per-card and per-merchant state.

Every window is an exponentially decayed aggregate: a count ``n`` decayed with time constant
``tau`` approximates the count over the last ``tau`` (its kernel integrates to ``tau``), and
costs two floats and one ``exp`` per update, whatever the traffic of the key. A card or a
merchant therefore holds a fixed number of floats, plus small bounded collections (its last
8 countries and devices, the merchants of its last hour), never a list of its events:
~0.4 KB a card with its key (a row of ``CardTable``: its numbers in one flat array of doubles,
``C_*`` indices).

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
model); the least recently seen cards and merchants are forgotten past ``max_cards`` /
``max_merchants`` (merchants one at a time, cards 1 % of ``max_cards`` at a time: see
``CardTable``).

Snapshots: ``to_state`` / ``load_state`` give the exact state as JSON-able lists (one list of
slot values per card or merchant, in least-recently-seen order, so eviction resumes as it
would have).
"""

from __future__ import annotations

import math
import struct
from array import array
from bisect import bisect_left
from itertools import count
from typing import NamedTuple

import numpy as np

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


# A feature vector as the pending store keeps it: the dense features (DENSE, in order) and one
# int of ``flags`` for the 0/1 ones, which are exact: bits 0-3 the number of amount bands set
# (they are cumulative), bits 4-7 the merchant episode's band + 1 (0: none; the band's
# episode rate is ``merchant_episode_rate``, the others 0), bits 8-14 the FLAG_FEATURES. 30
# values and 2 bytes a pending event instead of 62 values.
_AT = {name: i for i, name in enumerate(TX_FEATURES)}
BAND_COLS = tuple(_AT[f"amount_band_{b}"] for b in AMOUNT_BANDS)
EPISODE_COLS = tuple(_AT[f"merchant_episode_{lo}d"] for lo in (0, *EPISODE_BANDS_D))
EPISODE_RATE_COLS = tuple(_AT[f"merchant_episode_rate_{lo}d"] for lo in (0, *EPISODE_BANDS_D))
EPISODE_RATE = _AT["merchant_episode_rate"]
FLAG_FEATURES = ("new_country", "new_device", "card_fraud_recent", "declined", "ecom", "night",
                 "weekend")
FLAG_COLS = tuple(_AT[name] for name in FLAG_FEATURES)
DENSE = tuple(i for i in range(len(TX_FEATURES))
              if i not in {*BAND_COLS, *EPISODE_COLS, *EPISODE_RATE_COLS, *FLAG_COLS})


def expand(dense, flags: int) -> list[float]:
    """The full feature vector (``TX_FEATURES`` order) of its dense values and flags."""
    ep = flags >> 4 & 15
    if ep:
        episode = _EPISODE_ONES[ep - 1]
        episode_rate = [0.0] * len(_NO_EPISODE)
        episode_rate[ep - 1] = dense[_DENSE_RATE]
    else:
        episode = episode_rate = _NO_EPISODE
    b = _BITS[flags >> 8 & 127]
    # the layout of TX_FEATURES (checked at import)
    return [*dense[:16], b[0], b[1], *dense[16:25], *episode, dense[25], *episode_rate,
            *_AMOUNT_ONES[flags & 15], dense[26], b[2], dense[27], b[3], b[4], b[5], b[6]]


_DENSE_RATE = DENSE.index(EPISODE_RATE)
_BITS = tuple(tuple(float(code >> i & 1) for i in range(len(FLAG_FEATURES)))
              for code in range(1 << len(FLAG_FEATURES)))
assert DENSE == (*range(16), *range(18, 27), EPISODE_RATE, _AT["card_known_fraud"],
                 _AT["card_fraud_x_amount_z"]) and FLAG_COLS == (16, 17, 55, *range(57, 61)) \
    and EPISODE_COLS == tuple(range(27, 35)) and BAND_COLS == tuple(range(44, 54)), \
    "expand() is written for this order of TX_FEATURES"


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
CARD = struct.Struct(f"{CARD_SLOTS}d")  # a row of CardTable.x (native, as the array)
CARD_BYTES = CARD.size
_card_values = CARD.unpack_from
_card_write = CARD.pack_into


class CardTable:
    """The cards' state in columns, one row a card (no object per card: ~0.4 KB a card with
    its key, where an object per card with its own array of doubles cost ~0.75 KB).

    - ``index``: card id -> row (a plain dict: an ``OrderedDict`` costs ~50 bytes more a key);
    - ``x``: one flat array of doubles, ``CARD_SLOTS`` a row (``C_*`` offsets), read and
      written a row at a time with ``CARD`` (``struct``: no array object per card);
    - ``countries``, ``devices``: the card's usual countries and devices, most recent last:
      ``()``, the one value itself (a string: most cards have one device), or a tuple (most
      cards stay in one country: its 1-tuple is shared);
    - ``recent``: the merchants of the last hour: ``()``, one merchant (a string, its visit
      time in ``recent_t``) or a flat tuple ``(merchant, time, ...)``, oldest first;
    - ``seen``: when each row's card was last seen, as a sequence number (``next(clock)``):
      ``touch`` is one store (a linked list over the rows cost ~10 array reads and writes a
      transaction). ``add`` on a full table forgets the least recently seen cards in bulk,
      ``evict_share`` of ``max_rows`` (at least one: a table under 200 rows forgets one card at
      a time, a million-card table 1 %, 10,000, by one ``numpy.argpartition`` over ``seen``),
      and reuses their rows (``free``) for the next new cards.
    """

    __slots__ = ("clock", "countries", "devices", "evict_n", "free", "index", "keys",
                 "max_rows", "recent", "recent_t", "seen", "x")

    evict_share = 0.01

    def __init__(self, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError(f"max_cards: must be >= 1, got {max_rows!r}")
        self.max_rows = max_rows
        self.evict_n = max(1, int(max_rows * self.evict_share))
        self.index: dict[str, int] = {}
        self.keys: list[str | None] = []  # (None: a free row)
        self.x = array("d")
        self.countries: list = []
        self.devices: list = []
        self.recent: list = []
        self.recent_t = array("q")
        self.seen = array("q")  # (-1: a free row)
        self.clock = count()
        self.free: list[int] = []

    def __len__(self) -> int:
        return len(self.index)

    def add(self, key: str, t: int) -> int:
        """A new card's row (a forgotten card's, past ``max_rows``), most recently seen, its
        numbers those of a card first seen at ``t``."""
        if not self.free and len(self.index) >= self.max_rows:
            self._evict()
        if self.free:
            row = self.free.pop()
            self.keys[row] = key
            self.x[row * CARD_SLOTS:(row + 1) * CARD_SLOTS] = _NEW_CARD
            self.countries[row] = self.devices[row] = self.recent[row] = ()
            self.recent_t[row] = 0
        else:
            row = len(self.keys)
            self.keys.append(key)
            self.x.extend(_NEW_CARD)
            self.countries.append(())
            self.devices.append(())
            self.recent.append(())
            self.recent_t.append(0)
            self.seen.append(-1)
        b = row * CARD_SLOTS
        x = self.x
        x[b + C_T] = x[b + C_P_T] = x[b + C_F_T] = x[b + C_A_T] = t
        self.index[key] = row
        self.seen[row] = next(self.clock)
        return row

    def _evict(self) -> None:
        """Forget the ``evict_n`` least recently seen cards; their rows become free."""
        seen = np.frombuffer(self.seen, np.int64)
        n = self.evict_n
        rows = (seen.argpartition(n - 1)[:n] if n < len(seen) else np.arange(len(seen)))
        keys, index = self.keys, self.index
        for row in sorted(rows.tolist(), reverse=True):  # the lowest row is reused first
            del index[keys[row]]
            keys[row] = None
            self.countries[row] = self.devices[row] = self.recent[row] = ()
            self.seen[row] = -1
            self.free.append(row)
        del seen  # (the array's buffer is exported while a view is held)

    def touch(self, row: int) -> None:
        """The card of ``row`` was just seen: it becomes the most recently seen."""
        self.seen[row] = next(self.clock)

    def rows(self) -> list[int]:
        """The rows of the cards held, least recently seen first."""
        seen = np.frombuffer(self.seen, np.int64)
        order = seen.argsort(kind="stable")
        return order[seen[order] >= 0].tolist()

    def view(self, key: str) -> CardView | None:
        """One card's state as plain values (tests, snapshots); None when not held."""
        row = self.index.get(key)
        return None if row is None else self._view(row)

    def _view(self, row: int) -> CardView:
        d, r = self.devices[row], self.recent[row]
        return CardView(self.countries[row], (d,) if d.__class__ is str else d,
                        (r, self.recent_t[row]) if r.__class__ is str else r,
                        self.x[row * CARD_SLOTS:(row + 1) * CARD_SLOTS].tolist())

    def clear(self) -> None:
        self.__init__(self.max_rows)


class CardView(NamedTuple):
    """One card's state, as ``to_state`` writes it: its usual countries and devices (most
    recent last), the merchants of its last hour ``(merchant, time, ...)`` and its numbers
    (``C_*`` indices)."""

    countries: tuple
    devices: tuple
    recent: tuple
    x: list


class MerchantState:
    """What one merchant (terminal) remembers: decayed traffic and known-label windows."""

    __slots__ = ("ep_fu", "ep_l", "ep_last", "ep_start", "key", "l_f", "l_n", "l_t", "n", "t")
    FIELDS = ("ep_fu", "ep_l", "ep_last", "ep_start", "l_f", "l_n", "l_t", "n", "t")  # state

    def __init__(self, t: int, key: str = "") -> None:
        self.key = key  # the merchant id: cards' recent merchants share this string
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
        Keys kept; the least recently seen are forgotten beyond these (cards in bulk, 1 % of
        ``max_cards`` at a time, at least one).
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
        self._cards = CardTable(max_cards)
        self._merchants: BoundedDict[str, MerchantState] = BoundedDict(max_merchants)
        self.flags = 0  # the last computed vector's 0/1 features, packed (``expand`` undoes it)

    # ---------------------------------------------------------------------------- scoring

    def compute(self, event: dict) -> list[float]:
        """The event's feature values, in ``names`` order; then the event joins the state."""
        t = event["event_time"]
        amount = float(event["amount"])
        la = _log1p(amount)
        card_id = event["card_id"]
        merchant_id = event["merchant_id"]
        cards = self._cards
        row = cards.index.get(card_id)
        if row is None:
            row = cards.add(card_id, t)
        else:  # cards.touch(row), inlined: the hot path
            cards.seen[row] = next(cards.clock)
        merchants = self._merchants
        m = merchants.get(merchant_id)
        if m is None:
            m = MerchantState(t, merchant_id)
            merchants[merchant_id] = m
        else:
            merchants.move_to_end(merchant_id)
            merchant_id = m.key  # one string a merchant, however many cards remember it
        xs = cards.x
        off = row * CARD_BYTES

        # --- card spending windows, decayed to now (events out of order by a little: dt=0)
        (n0, n1, n2, n3, n4, s0, s1, s2, s3, s4, c_t, p_t, p_w, p_mean, p_var, q_mean, q_var,
         f_t, f_n, last_fraud, a_t, a_n) = _card_values(xs, off)
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
        countries, devices = cards.countries[row], cards.devices[row]
        new_country = 1.0 if (not first and country not in countries) else 0.0
        # devices: (), one device (a string) or a tuple
        known_device = device == devices if devices.__class__ is str else device in devices
        new_device = 1.0 if (not first and device is not None and not known_device) else 0.0
        recent = cards.recent[row]  # (merchant, last visit, ...), oldest first: drop the stale
        if recent.__class__ is str:  # one merchant, its visit time apart
            recent = (recent, cards.recent_t[row])
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
        ep_code = 0  # the episode's band + 1 (flags)
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
                ep_code = band + 1
                episode = _EPISODE_ONES[band]
                ep_rate = m.ep_fu / (m.ep_l + 1.0)
                episode_rate = [0.0] * len(_NO_EPISODE)
                episode_rate[band] = ep_rate

        channel = event.get("channel")
        declined = event.get("status", "approved") != "approved"
        ecom = channel == "ecom" or channel == "moto"
        night = (t // HOUR_MS) % 24 < 6
        weekend = (t // DAY_MS + 3) % 7 >= 5  # 1970-01-01 was a Thursday: 0 = Monday
        k_amount = bisect_left(AMOUNT_BANDS, la)
        # the 0/1 features in one int, for the pending store (``expand`` undoes it)
        self.flags = (k_amount | ep_code << 4 | (new_country > 0.0) << 8
                      | (new_device > 0.0) << 9 | (fraud_recent > 0.0) << 10 | declined << 11
                      | ecom << 12 | night << 13 | weekend << 14)
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
            *_AMOUNT_ONES[k_amount],
            _log1p(f_now), fraud_recent,
            # a card with known fraud is suspect when it spends unusually, not otherwise
            fraud_recent * (max(0.0, zl)),
            1.0 if declined else 0.0,
            1.0 if ecom else 0.0,
            1.0 if night else 0.0,
            1.0 if weekend else 0.0,
        ]

        # --- the event joins the state
        mn[0] += 1.0
        mn[1] += 1.0
        mn[2] += 1.0
        # the amount joins the card's profile: ``_profile(p_t, ..., t, la, amount, 1.0)``
        # inlined (the hot path; the same operations, a weight of 1.0 multiplying exactly)
        dt_p = t - p_t
        if dt_p > 0:
            p_w *= _exp(-dt_p / PROFILE_TAU_MS)
            p_t = t
        new_w = p_w + 1.0
        if new_w <= 1e-6:
            new_w = p_mean = p_var = q_mean = q_var = 0.0
        else:
            la_p, amount_p = la, amount
            if p_w >= 3.0:  # robust: clipped to 3 standard deviations
                sd = 3.0 * _sqrt(p_var + 0.01)
                la_p = p_mean + sd if la > p_mean + sd else max(la, p_mean - sd)
                sd = 3.0 * _sqrt(q_var + 1.0)
                amount_p = q_mean + sd if amount > q_mean + sd else max(amount, q_mean - sd)
            delta = la_p - p_mean
            p_mean += delta / new_w
            p_var = (p_w * p_var + delta * (la_p - p_mean)) / new_w
            delta = amount_p - q_mean
            q_mean += delta / new_w
            q_var = (p_w * q_var + delta * (amount_p - q_mean)) / new_w
            p_var = max(0.0, p_var)
            q_var = max(0.0, q_var)
        _card_write(xs, off, n0 + 1.0, n1 + 1.0, n2 + 1.0, n3 + 1.0, n4 + 1.0,
                    s0 + amount, s1 + amount, s2 + amount, s3 + amount, s4 + amount,
                    c_t, p_t, new_w, p_mean, p_var, q_mean, q_var,
                    f_t, f_n, last_fraud, a_t, a_n)
        if country is not None and country not in countries:
            if countries:
                cards.countries[row] = (*countries[-(MAX_SMALL_SET - 1):], country)
            else:  # most cards stay in one country: one shared tuple per country
                cards.countries[row] = _ONE_COUNTRY.get(country) or _one_country(country)
        if device is not None and not known_device:
            if not devices and device.__class__ is str:
                cards.devices[row] = device  # most cards have one device: no tuple
            elif devices.__class__ is str:
                cards.devices[row] = (devices, device)
            else:
                cards.devices[row] = (*devices[-(MAX_SMALL_SET - 1):], device)
        if seen_here:
            i = recent.index(merchant_id)  # merchants sit at even indices, times are ints
            recent = recent[:i] + recent[i + 2:]
        if recent or merchant_id.__class__ is not str:
            recent = (*recent, merchant_id, t)
            if len(recent) > 2 * MAX_RECENT_MERCHANTS:
                recent = recent[2:]
            cards.recent[row] = recent
        else:  # one merchant: no tuple, no int object
            cards.recent[row] = merchant_id
            cards.recent_t[row] = t
        return x

    # ----------------------------------------------------------------------------- labels

    def learn_label(self, card_id: str | None, merchant_id: str, event_time: int, amount: float,
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
            l_n, l_f = m.l_n, m.l_f
            dt = known_at - m.l_t
            if dt > 0:  # unrolled over MERCHANT_TAUS_MS: a label per event
                d = _exp(-dt / MERCHANT_TAUS_MS[0])
                l_n[0] *= d
                l_f[0] *= d
                d = _exp(-dt / MERCHANT_TAUS_MS[1])
                l_n[1] *= d
                l_f[1] *= d
                d = _exp(-dt / MERCHANT_TAUS_MS[2])
                l_n[2] *= d
                l_f[2] *= d
                m.l_t = known_at
            l_n[0] += 1.0
            l_n[1] += 1.0
            l_n[2] += 1.0
            if label:
                l_f[0] += 1.0
                l_f[1] += 1.0
                l_f[2] += 1.0
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
            row = self._cards.index.get(card_id)
            if row is not None:
                x = self._cards.x
                b = row * CARD_SLOTS
                if known_at > x[b + C_F_T]:
                    x[b + C_F_N] *= _exp(-(known_at - x[b + C_F_T]) / CARD_FRAUD_TAU_MS)
                    x[b + C_F_T] = known_at
                x[b + C_F_N] += 1.0
                x[b + C_LAST_FRAUD] = max(x[b + C_LAST_FRAUD], known_at)
                # weight of the fraudulent amount in the profile today
                p_t = x[b + C_P_T]
                age = p_t - event_time
                w = _exp(-age / PROFILE_TAU_MS) if age > 0 else 1.0
                x[b + C_P_T:b + C_Q_VAR + 1] = array("d", _profile(
                    *x[b + C_P_T:b + C_Q_VAR + 1], p_t, _log1p(amount), amount, -w))

    def __len__(self) -> int:
        return len(self._cards)

    # -------------------------------------------------------------------------- snapshots

    _CARD_FIELDS = ("countries", "devices", "recent", "x")
    _MERCHANT_FIELDS = MerchantState.FIELDS

    def card(self, card_id: str) -> CardView | None:
        """The state of one card (None when it is not held)."""
        return self._cards.view(card_id)

    def to_state(self) -> dict:
        """JSON-able state: every card and merchant, least recently seen first.

        Restoring it (``load_state``) and computing the next events gives the same features as
        never having stopped (floats survive JSON exactly).
        """
        cards = self._cards
        keys, view = cards.keys, cards._view
        # copies: the state is serialised on another thread while the scorer goes on
        # (the fields in _CARD_FIELDS order: countries, devices, recent, x)
        card_rows = [[keys[row], [list(c) for c in view(row)]] for row in cards.rows()]
        merchants = [[key, [_copy(getattr(m, f)) for f in self._MERCHANT_FIELDS]]
                     for key, m in self._merchants.items()]
        return {"card_fields": list(self._CARD_FIELDS), "cards": card_rows,
                "merchant_fields": list(self._MERCHANT_FIELDS), "merchants": merchants}

    def load_state(self, state: dict) -> None:
        """Replace the per-card and per-merchant state by ``state`` (from ``to_state``).

        Raises
        ------
        ValueError
            The state holds other fields than this version's cards / ``MerchantState``.
        """
        if (tuple(state["card_fields"]) != self._CARD_FIELDS
                or tuple(state["merchant_fields"]) != self._MERCHANT_FIELDS):
            raise ValueError("transaction feature state: its card/merchant fields are not this "
                             "version's; discard the snapshot and let the features warm up")
        self._merchants.clear()
        for key, row in state["merchants"]:
            m = MerchantState.__new__(MerchantState)
            m.key = key
            for f, v in zip(self._MERCHANT_FIELDS, row):
                setattr(m, f, v)
            self._merchants[key] = m
        merchants = self._merchants
        cards = self._cards
        cards.clear()
        for key, (countries, devices, recent, x) in state["cards"]:
            row = cards.add(key, 0)
            if len(x) != CARD_SLOTS:
                raise ValueError(f"transaction feature state: card {key!r} has {len(x)} "
                                 f"numbers, not {CARD_SLOTS}; discard the snapshot")
            cards.x[row * CARD_SLOTS:(row + 1) * CARD_SLOTS] = array("d", x)
            cards.countries[row] = (_ONE_COUNTRY.get(countries[0]) or _one_country(countries[0])
                                    if len(countries) == 1 else tuple(countries))
            cards.devices[row] = (devices[0] if len(devices) == 1 and devices[0].__class__ is str
                                  else tuple(devices))
            # the merchants' own strings, as when the events came
            recent = tuple(merchants[v].key if i % 2 == 0 and v in merchants else v
                           for i, v in enumerate(recent))
            if len(recent) == 2 and recent[0].__class__ is str:
                cards.recent[row], cards.recent_t[row] = recent
            else:
                cards.recent[row] = recent


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
    the new ``(p_t, p_w, p_mean, p_var, q_mean, q_var)``. (``compute`` has its own copy for a
    weight of 1.0: keep the two the same.)

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
