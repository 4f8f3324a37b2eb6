"""Online fraud and application-risk scorers: plain Python over dicts, no Faust, no broker.

Score first, learn later
------------------------
``score_record(event)`` computes the event's features from per-key state in event time
(``agents/fraud_features.py``, ``agents/fraud_identity.py``), scores them and keeps them,
as a compact array, until the event's label arrives on the ``labels`` stream
(``learn_label``), or until ``label_ttl_s`` of event time has passed, after which the event
is learned as genuine (no news is good news: most genuine events are never labelled).
``score_records(events)`` does the same for a batch (the worker's): each event's record, or
what scoring it raised, the same numbers and state as ``score_record`` event by event, with
the detector walking the batch's events together (``score_many``).

The model
---------
- an unsupervised River ``HalfSpaceTrees`` (3 trees, learning from every other event) over
  a few behaviour features scaled to [0, 1]; its score's rank among recent scores is a
  feature of the classifier (and the whole score during the cold start, calibrated so that
  about ``alert_share`` of traffic is flagged);
- a supervised River ``StandardScaler`` + ``LogisticRegression`` (Adam), learned from the
  delayed labels. Genuine events are learned at the rate ``negative_rate`` (fraud is ~1 % of
  traffic: the classifier learns a balanced-enough sample, and 10x faster); the probability
  is then corrected for that sampling, ``p * r / (p * r + 1 - p)``, so the score is a
  calibrated probability of fraud again. Scoring uses the scaler folded into the weights
  (refolded every ``REFRESH_EVERY`` learned examples, or by ``sync()``): the same number as
  ``predict_proba_one(transform_one(x))`` without building dicts on the hot path. Learning is
  River's ``learn_one`` step by step over arrays (``_Logistic``: River's loss, clipping,
  intercept schedule and Adam step; the weights written back into the River model by
  ``sync()`` and snapshots);
- reasons: the features that moved the score most, i.e. the largest ``weight * z`` of the
  standardised features (0 = an average event), mapped to reason codes; during the cold
  start, rule flags.

Cold start
----------
Two things make a young model learn faster than one Adam step per label allows:

- *priors for the features fed by labels* (a merchant's known fraud, a card's known fraud,
  an identity linked to fraud: ``label_feedback_priors``). Such a feature is 0 in every event
  scored before the first labels arrived, and those are the events labelled next: the
  classifier sees it vary only one label delay after the first labels (day 14 with a 7-day
  delay) and would ignore it until then, just when it starts to carry the signal. Until
  ``prior_examples`` learned examples have shown a feature non-zero, its coefficient is its
  prior (per unit of the raw feature, times ``prior_strength``: known fraud raises the odds);
  then the classifier's weight starts from that prior (the prior times the feature's standard
  deviation: the score does not jump) and learns from there;
- *replay while young*: until ``replay_until`` labels were learned, each learned example is
  followed by ``replay`` examples drawn at random from a buffer of the last ~``replay_size``
  learned ones (a random slot is replaced once it is full), so the few early frauds teach more
  than one step each. Then the buffer is dropped and learning costs one step a label.

Measured on the Fraud Detection Handbook (``riskstream eval fraud``, 7-day delay): ROC AUC
0.8914 -> 0.9016 (seeds 42, 1, 7: 0.9016, 0.9015, 0.9014), the first two weeks scored 0.728
and 0.796 -> 0.845 and 0.874, later weeks unchanged.

Limits: the first ``min_labels`` labels the score is the detector's rank (uncalibrated as a
probability); per-key state and pending events are bounded (``max_cards``, ``max_pending``:
past it, the oldest pending event is learned as genuine early). Merchant and identity state
is per worker: with several workers (partitioned by card / applicant) each one sees its own
share of a merchant's traffic and labels.

Snapshots
---------
``to_state()`` is the whole scorer as plain JSON (``STATE_VERSION``; ``feature_schema`` is
the hash of the feature names for the snapshot manifest): the logistic regression's weights,
intercept and Adam moments, the scaler's counts/means/variances, the scaler-folded weights,
the HalfSpaceTrees' split structure (feature, threshold) and node masses (l_mass, r_mass) and
window counter, the detector's rolling rank window, the random generators' states, per-card /
merchant / identity feature state, the pending events awaiting their labels (their
features as one base64 blob of half-precision floats), the cold start's progress (``cold``:
the label-fed features seeded and the examples seen of the others) and the replay buffer
(``replay``). ``cold`` and ``replay`` were added without a version bump: a version-3 state
without them loads as a model past its cold start (a feature that varied is seeded).
``load_state`` restores it exactly: restoring and then scoring and learning the same events
gives the same scores as never having stopped (``tests/test_agents_fraud_snapshot.py``).

Memory: a pending event is one ``bytes`` (event time, score, the dense features as float16
and the 0/1 ones as bits: 76 bytes for 62 features; then its label context: amount, card and
merchant ids), ~0.3 KB with its id and dict slot; a card is a row of a columnar table
(``agents/fraud_features.py``: 22 doubles, its usual countries, devices and recent merchants),
~0.4 KB with its key; an identity key one array of 8 doubles. 1,000,000 cards, each with one
pending transaction: 671 MiB (``python -m pipelines.bench_state 1000000 10000``: 979 MiB RSS
with 10,000 metric series and the interpreter).

Measured (``riskstream eval fraud``, Fraud Detection Handbook, 7-day label delay, after the
first 7 days): ROC AUC 0.9016, average precision 0.734, card precision@100 0.546 (see the
README for the speed of the scoring path). About 20 % of the frauds scored
(1,922 of 9,328) are at a terminal compromised less than 7 days before: no label about that
terminal can be known yet and nothing else in the data sets them apart, so ranked at random
they bound the ROC AUC near 0.91 whatever the model.
"""

from __future__ import annotations

import base64
import math
import random
import struct
from array import array
from itertools import chain
from operator import add, itemgetter, mul, sub
from typing import ClassVar, Protocol

import numpy as np
import orjson
from river import anomaly, linear_model, optim, preprocessing, utils
from river.tree.padded import PaddedBranch, PaddedLeaf

from agents.features import RollingRank, calibrated, decision_of
from agents.fraud_features import (
    BAND_COLS,
    DAY_MS,
    DENSE,
    EPISODE_COLS,
    EPISODE_RATE,
    EPISODE_RATE_COLS,
    FLAG_COLS,
    TX_FEATURES,
    TX_REASON_OF,
    TransactionFeatures,
    expand,
)
from agents.fraud_identity import APP_REASON_OF, ApplicationFeatures
from agents.quality import RollingQuality
from agents.snapshot import feature_schema_hash

DETECTOR_FEATURE = "detector_rank"
# The layout of ``to_state()``: bumped when it changes (the snapshot store refuses others).
STATE_VERSION = 3


class FeatureSource(Protocol):
    """What a scorer needs of its feature extractor."""

    names: tuple[str, ...]

    def compute(self, event: dict) -> list[float]: ...


_IS_REASON = (0.05).__lt__  # a contribution to the logit over 0.05 is a reason (``_reasons``)


class _Scorer:
    """Shared mechanics: features -> detector + classifier; pending events await labels."""

    model_version = "v1"
    reason_of: ClassVar[dict[str, str]] = {}
    # the detector's features when ``_detector_view`` gives a sequence (None: a dict)
    _detector_keys: ClassVar[tuple[str, ...] | None] = None
    # Starting coefficients (per unit of the raw feature) of the features fed by labels: see
    # "Cold start" above.
    label_feedback_priors: ClassVar[dict[str, float]] = {}
    REFRESH_EVERY = 8

    def __init__(self, *, seed: int = 42, min_labels: int = 50, max_pending: int = 2_000_000,
                 label_ttl_s: float = 30 * 86_400, review_at: float = 0.7,
                 decline_at: float = 0.9, alert_share: float = 0.005,
                 negative_rate: float = 0.1, learning_rate: float = 0.001,
                 n_reasons: int = 3, quality_window: int = 5_000,
                 prior_strength: float = 1.0, prior_examples: int = 100, replay: int = 2,
                 replay_until: int = 150_000, replay_size: int = 30_000) -> None:
        if not 0.0 < negative_rate <= 1.0:
            raise ValueError(f"negative_rate: must be in (0, 1], got {negative_rate!r}")
        if not 0.0 <= review_at <= decline_at <= 1.0:
            raise ValueError(f"review_at <= decline_at in [0, 1]: got {review_at!r}, "
                             f"{decline_at!r}")
        for name, value in (("prior_strength", prior_strength), ("prior_examples", prior_examples),
                            ("replay", replay), ("replay_until", replay_until),
                            ("replay_size", replay_size)):
            if value < 0:
                raise ValueError(f"{name}: must be >= 0, got {value!r}")
        self.seed = seed
        self.min_labels = min_labels
        self.max_pending = max_pending
        self.label_ttl_s = label_ttl_s
        self.review_at = review_at
        self.decline_at = decline_at
        self.alert_share = alert_share
        self.negative_rate = negative_rate
        self.learning_rate = learning_rate
        self.n_reasons = n_reasons
        self.quality_window = quality_window
        self.prior_strength = prior_strength
        self.prior_examples = prior_examples
        self.replay = replay
        self.replay_until = replay_until
        self.replay_size = replay_size
        # (score when scored, label) of the last labelled events: monitoring, not snapshotted
        self.quality = RollingQuality(quality_window, review_at)
        self._rng = random.Random(seed)
        self._rank = RollingRank(2000)
        # HalfSpaceTrees wants features in [0, 1]; window_size is the reference window in events.
        # 3 trees of height 6: the detector is one feature among ~50 here, and its cost is per
        # event (~2.7 us walked by ``_HalfSpace`` one event at a time, ~0.7 a batch of 500).
        self._detector = anomaly.HalfSpaceTrees(n_trees=3, height=6, window_size=250, seed=seed)
        self._hst = _HalfSpace(self._detector, self._detector_keys)
        self._scaler = preprocessing.StandardScaler()
        # the scaler's numbers as arrays (``_Standardizer``), written into ``_scaler`` by
        # ``sync()`` and ``to_state()``
        self._std = _Standardizer(0)
        # the classifier's learning over arrays (``_Logistic``), built at first use
        self._lr: _Logistic | None = None
        # Adam: per-feature step sizes; rare indicators (amount bands, merchant episodes) learn
        # as fast as dense features.
        self._classifier = linear_model.LogisticRegression(
            optimizer=optim.Adam(learning_rate), intercept_lr=learning_rate)
        # The classifier folded with the scaler, refreshed after learning:
        # logit = bias + sum(coef_i * (x_i - mean_i)), coef_i = weight_i / sd_i.
        self._coef: list[float] = []
        self._means: list[float] = []
        self._bias = 0.0
        self._stale = True
        # Refolding costs ~60 dict reads: done once per REFRESH_EVERY learned examples (the
        # weights move little in a few steps) and by ``sync()``.
        self._learned_since_refresh = 0
        # event_id -> one bytes: event time, score, features (float16) and the label context
        # (``_pack_context``); the expiry queue in scoring order. ~0.3 KB a pending event with
        # its id (a million await their labels).
        self._pending: dict[str, bytes] = {}
        self._expiry = _Fifo()
        self._ttl_ms = int(label_ttl_s * 1000)
        self._watermark = -(2 ** 62)
        self._n_seen = 0
        self._n_labels = 0
        self._n_fraud = 0
        self._n_expired = 0
        self._names: tuple[str, ...] = ()
        # Cold start: the label-fed features whose weight the classifier does not own yet,
        # {index: prior coefficient} (built from the names at first use), and how many learned
        # examples showed each one non-zero.
        self._unseeded: dict[int, float] | None = None
        self._active: dict[str, int] = {}
        # The replay buffer: learned entries and their labels (dropped after replay_until).
        self._replay: list[bytes] = []
        self._replay_labels = bytearray()

    # ----------------------------------------------------------------- to be specialised

    def _compute(self, event: dict) -> list[float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _detector_view(self, v: list[float]):  # pragma: no cover
        """The detector's features: a dict, or a sequence in ``_detector_keys`` order."""
        raise NotImplementedError

    def _context(self, event: dict) -> tuple:
        return ()

    def _flags(self) -> int:
        """What ``_compute`` left beside the values of the event it computed, for its pending
        entry (``_entry``)."""
        return 0

    def _entry(self, t: int, score: float, v: list[float], event: dict, flags: int) -> bytes:
        """A pending entry: event time, score, the feature values and the label context."""
        return self._packer.pack(t, score, *v) + self._pack_context(event)

    def _values_of(self, entry: bytes) -> list[float]:
        """The feature values of a pending entry (``feature_names`` order, as float16)."""
        return list(self._packer.unpack_from(entry)[2:])

    def _values_blob(self, entries: list[bytes]) -> bytes:
        """The entries' feature values as one array of float16, ``feature_names`` wide (the
        snapshot's layout)."""
        end = self._packer.size
        return b"".join(e[_HEAD_BYTES:end] for e in entries)

    def _packed_values(self, blob: bytes, n: int) -> list[bytes]:
        """The inverse of ``_values_blob``: each entry's values as ``_pack`` writes them."""
        w = _VALUE_SIZE * len(self._names)
        return [blob[i * w:(i + 1) * w] for i in range(n)]

    def _pack_context(self, event: dict) -> bytes:
        """The event's label context (``_context``) as the tail of its pending entry."""
        return self._context_bytes(self._context(event))

    def _context_bytes(self, context: tuple) -> bytes:
        return orjson.dumps(context)  # (strings: JSON is exact and one C call)

    def _context_of(self, entry: bytes) -> tuple:
        """The label context of a pending entry (what ``_context`` gave)."""
        return tuple(orjson.loads(entry[self._packer.size:]))

    def _learn_context(self, context: tuple, event_time: int, label: int,
                       known_at: int, score: float) -> None:
        pass

    def _learn_entry(self, entry: bytes, event_time: int, label: int, known_at: int,
                     score: float) -> None:
        """``_learn_context`` of a pending entry's label context."""
        self._learn_context(self._context_of(entry), event_time, label, known_at, score)

    def _cold_reasons(self, v: list[float]) -> list[str]:  # pragma: no cover
        """Reason codes from the feature values ``v`` (``feature_names`` order) alone, before
        the classifier has learned."""
        raise NotImplementedError

    # --------------------------------------------------------------------------- scoring

    @property
    def n_labels(self) -> int:
        """Labels learned so far (explicit ones and TTL-expired genuine ones)."""
        return self._n_labels

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self._names

    @property
    def n_pending(self) -> int:
        return len(self._pending)

    def pending_time(self, event_id: str) -> int | None:
        """The event time of a scored event still awaiting its label (None otherwise)."""
        entry = self._pending.get(event_id)
        return None if entry is None else _HEAD.unpack_from(entry)[0]

    def features(self, event: dict) -> dict[str, float]:
        """The event's features (this updates the per-key state: call once per event)."""
        v = self._compute(event)
        return dict(zip(self._names, v))

    def score_one(self, event: dict) -> tuple[float, list[float], list[str]]:
        """Score an event; it waits, with its features, for its label.

        Returns the score, the feature values (in ``feature_names`` order) and the reason
        codes.
        """
        t, event_id = event["event_time"], event["event_id"]
        if t > self._watermark:
            self._watermark = t
            self._expire(t - self._ttl_ms)
        v = self._compute(event)
        self._n_seen += 1
        # the detector's reference mass learns from every other event
        detector = self._hst.score_learn(self._detector_view(v), self._n_seen & 1)
        score, reasons, entry = self._classify(t, v, self._flags(), detector, event)
        if event_id not in self._pending:
            self._expiry.append(t, event_id)
        self._pending[event_id] = entry
        if len(self._pending) > self.max_pending:
            self._expire(None)
        return score, v, reasons

    def score_many(self, events: list[dict]) -> list[tuple | Exception]:
        """``score_one`` of each event in turn, the same numbers and state, with the
        detector walking the batch's events together (``_HalfSpace.score_learn_many``, ~2 us
        an event less); an event's result is what ``score_one`` returns, or the exception it
        raised (the others go on).

        The events' features are computed in order, then the detector scores them, then the
        classifier, in order. A pending event that expires meanwhile is learned in two
        halves, each where ``score_one`` learns it: its label-fed features at once, the
        classifier in the classifier's pass, at the event that expired it (before that
        event's score for an expiry by the label TTL, after it for one by a store over
        ``max_pending``). Where that order cannot hold, the events so far are finished first
        (``_finish``), and the event is scored alone (``score_one``) when it is already
        pending or twice in the batch, when its label TTL would expire one of the batch, or
        when the store is over ``max_pending`` already; and where an expiry reaches one of
        the batch (an event labelled, then scored again). A batch of ``max_pending`` events
        or more, or under ``_HalfSpace.BATCH_MIN``, is scored one event at a time.
        """
        if len(events) < _HalfSpace.BATCH_MIN or len(events) >= self.max_pending:
            return [_result(self.score_one, event) for event in events]
        out: list = [None] * len(events)
        pending, ttl, max_pending = self._pending, self._ttl_ms, self.max_pending
        compute, view, flags_of = self._compute, self._detector_view, self._flags
        seg = _Segment()
        for i, event in enumerate(events):
            try:
                t, event_id = event["event_time"], event["event_id"]
                advance = t > self._watermark
                alone = (event_id in pending or event_id in seg.ids
                         or (advance and t - ttl > seg.oldest)  # it would expire one of them
                         or len(pending) + len(seg.ids) > max_pending)  # over: several expire
            except Exception as exc:  # (a comparison: an event time of another type)
                out[i] = exc
                continue
            if alone:
                seg = self._finish(seg, events, out)
                out[i] = _result(self.score_one, event)
                continue
            before: list[bytes] | tuple = ()
            try:
                if advance:
                    self._watermark = t
                    before = []
                    if not self._expire(t - ttl, before, seg.ids):
                        seg = self._finish(seg, events, out)
                        self._expire(t - ttl, before)
                v = compute(event)
                flags = flags_of()
                self._n_seen += 1
                seg.views.append(view(v))
            except Exception as exc:
                out[i] = exc
                seg.steps.append((i, t, event_id, None, 0, before, ()))
                continue
            seg.learns.append(self._n_seen & 1)
            seg.ids.add(event_id)
            if t < seg.oldest:
                seg.oldest = t
            after: list[bytes] | tuple = ()
            if len(pending) + len(seg.ids) > max_pending:  # when score_one would insert it
                after = []
                if not self._expire(None, after, seg.ids):
                    seg.steps.append((i, t, event_id, v, flags, before, after))
                    seg = self._finish(seg, events, out)
                    if len(pending) > max_pending:
                        self._expire(None)
                    continue
            seg.steps.append((i, t, event_id, v, flags, before, after))
        self._finish(seg, events, out)
        return out

    def _finish(self, seg: _Segment, events: list[dict], out: list) -> _Segment:
        """``score_many``'s second half for the events of ``seg``: the detector, then the
        classifier, in order; returns a new segment."""
        detector = iter(self._hst.score_learn_many(seg.views, seg.learns))
        pending, expiry, learn = self._pending, self._expiry, self._learn_model
        for i, t, event_id, v, flags, before, after in seg.steps:
            # (``next(detector)`` first: the walk's results are in the order of ``v``s)
            detected = next(detector) if v is not None else None
            try:
                for entry in before:
                    learn(entry, 0)
                if v is not None:
                    score, reasons, entry = self._classify(t, v, flags, detected, events[i])
                    expiry.append(t, event_id)
                    pending[event_id] = entry
                    out[i] = (score, v, reasons)
                for entry in after:
                    learn(entry, 0)
            except Exception as exc:  # as score_one would raise; an eviction for an event
                out[i] = exc          # that raised went ahead (the store one under its limit)
        return _Segment()

    def _classify(self, t: int, v: list[float], flags: int, detector: float,
                  event: dict) -> tuple[float, list[str], bytes]:
        """The score and reasons of computed features ``v``, and the event's pending entry;
        the detector's rank is appended to ``v`` itself."""
        v.append(self._rank.update(detector))
        if self._n_labels >= self.min_labels:
            if self._stale and (self._learned_since_refresh >= self.REFRESH_EVERY
                                or not self._coef):
                self._refresh()
            # = classifier.predict_proba_one(scaler.transform_one(x)), without building dicts
            contrib = list(map(mul, self._coef, map(sub, v, self._means)))
            logit = self._bias + sum(contrib)
            logit = -30.0 if logit < -30.0 else min(logit, 30.0)
            p = 1.0 / (1.0 + math.exp(-logit))
            r = self.negative_rate
            score = p * r / (p * r + 1.0 - p)  # undo the negative sampling: calibrated
            reasons = self._reasons(contrib)
        else:
            score = calibrated(v[-1], share=self.alert_share, at=self.decline_at)
            reasons = self._cold_reasons(v)
        return score, reasons, self._entry(t, score, v, event, flags)

    def _refresh(self) -> None:
        """Fold the scaler into the classifier's weights (after the model learned)."""
        weights = self._learner().w
        std = self._standardizer()
        variances = std.vars.tolist()
        coef = [w / math.sqrt(var) if var > 0.0 else 0.0
                for w, var in zip(weights.tolist(), variances)]
        unseeded = self._cold()
        if unseeded:
            for i, prior in list(unseeded.items()):
                name, var = self._names[i], variances[i]
                if var > 0.0 and self._active.get(name, 0) >= self.prior_examples:
                    # the classifier takes over from the prior, without a jump in the score
                    weights[i] = prior * math.sqrt(var)
                    del unseeded[i]
                coef[i] = prior
            if not unseeded:
                self._active.clear()
        self._coef, self._means = coef, std.means.tolist()
        self._bias = self._classifier.intercept
        self._stale = False
        self._learned_since_refresh = 0
        self._codes = [self.reason_of.get(k, k) for k in self._names]

    def _cold(self) -> dict[int, float]:
        """The label-fed features the classifier does not own yet: {index: prior}."""
        if self._unseeded is None:
            priors = self.label_feedback_priors if self.prior_strength > 0 else {}
            self._unseeded = {i: priors[name] * self.prior_strength
                              for i, name in enumerate(self._names) if name in priors}
        return self._unseeded

    def _reasons(self, contrib: list[float]) -> list[str]:
        """Reason codes of the features that pushed the score up most (distinct codes)."""
        out: list[str] = []
        codes = self._codes
        index = contrib.index
        # the contributions in decreasing order (a sort of plain floats runs in C, a sort of
        # the indices keyed by contribution 3x slower), each found back by ``index`` (its
        # first occurrence; among equal values the next one: the order of a stable sort of the
        # indices), read until n_reasons distinct codes; a contribution under 0.05 (logit)
        # changes the odds by under 5 %: not a reason, unless nothing else pushed the score up
        # (only those over 0.05 are sorted: a filter in C, then a sort of a few)
        top = sorted(filter(_IS_REASON, contrib), reverse=True)
        if not top:
            return [codes[index(max(contrib))]]
        i, last = -1, None
        for c in top:
            i = index(c, i + 1) if c == last else index(c)
            last = c
            code = codes[i]
            if code not in out:
                out.append(code)
                if len(out) == self.n_reasons:
                    break
        return out

    def sync(self) -> None:
        """Fold the latest learned weights in now (scoring does it every few examples), and
        write the scaler's numbers into the River ``StandardScaler`` and the weights into the
        River ``LogisticRegression``."""
        if self._stale:
            self._refresh()
        self._standardizer().to_river(self._scaler, self._names)
        self._learner().to_river()

    def _learner(self) -> _Logistic:
        if self._lr is None:  # (the names are set by the subclass)
            self._lr = _Logistic(self._classifier, self._names)
        return self._lr

    def _standardizer(self) -> _Standardizer:
        if len(self._std.means) != len(self._names):  # (the names are set by the subclass)
            self._std = _Standardizer.from_river(self._scaler, self._names)
        return self._std

    def explain(self, event_features: list[float]) -> dict[str, float]:
        """Each feature's contribution to the logit (0 = an average event): for analysts."""
        self.sync()
        return dict(zip(self._names, map(mul, self._coef, map(sub, event_features,
                                                                  self._means))))

    def score_record(self, event: dict, scored_at_ms: int) -> dict:
        """The output record: the event plus score, decision, reasons, model version."""
        score, _, reasons = self.score_one(event)
        return self._record(event, score, reasons, scored_at_ms)

    def score_records(self, events: list[dict], scored_at_ms: int) -> list[dict | Exception]:
        """``score_record`` of each event in turn (``score_many``): a record, or what scoring
        the event raised."""
        record = self._record
        return [r if isinstance(r, Exception) else record(event, r[0], r[2], scored_at_ms)
                for event, r in zip(events, self.score_many(events))]

    def _record(self, event: dict, score: float, reasons: list[str], scored_at_ms: int
                ) -> dict:
        return {**event, "score": score,
                "decision": decision_of(score, self.review_at, self.decline_at),
                "reasons": reasons, "model_version": self.model_version,
                "scored_at": scored_at_ms}

    # -------------------------------------------------------------------------- learning

    def learn_label(self, target_event_id: str, label: int, known_at_ms: int | None = None
                    ) -> bool:
        """Learn a delayed label; False when the event's features are no longer held.

        ``known_at_ms`` is when the label became known (default: the latest event time seen);
        the per-key label windows (merchant risk, card fraud) start counting it from then.
        """
        entry = self._pending.pop(target_event_id, None)
        if entry is None:
            return False
        known_at = self._watermark if known_at_ms is None else known_at_ms
        self._learn(entry, 1 if label else 0, known_at)
        return True

    def _learn(self, entry: bytes, label: int, known_at: int) -> None:
        self._learn_features(entry, label, known_at)
        self._learn_model(entry, label)

    def _learn_features(self, entry: bytes, label: int, known_at: int) -> None:
        """A label's first half: the label-fed features (``_learn_entry``)."""
        t, score = _HEAD.unpack_from(entry)
        self._learn_entry(entry, t, label, known_at, score)

    def _learn_model(self, entry: bytes, label: int) -> None:
        """A label's second half: the quality figures and the classifier."""
        blob = entry
        score = _HEAD.unpack_from(blob)[1]
        self.quality.update(score, label)
        self._n_labels += 1
        if label:
            self._n_fraud += 1
        elif self._rng.random() >= self.negative_rate:
            return  # genuine events are learned at negative_rate (corrected at scoring)
        # = scaler.learn_one(x); classifier.learn_one(scaler.transform_one(x), label)
        values = self._values_of(blob)
        unseeded = self._cold()
        if unseeded:
            active, names = self._active, self._names
            for i in unseeded:
                if values[i] != 0.0:
                    active[names[i]] = active.get(names[i], 0) + 1
        std = self._standardizer()
        std.learn(values)
        self._learner().learn(std.transform(values), label)
        if self.replay and self._n_labels <= self.replay_until:
            self._replay_learn(blob, label)
        elif self._replay:  # the model is past its youth
            self._replay, self._replay_labels = [], bytearray()
        self._stale = True
        self._learned_since_refresh += 1

    def _replay_learn(self, entry: bytes, label: int) -> None:
        """Keep ``entry`` in the replay buffer and learn ``replay`` examples drawn from it."""
        buffer, labels, rng = self._replay, self._replay_labels, self._rng
        if len(buffer) < self.replay_size:
            buffer.append(entry)
            labels.append(label)
        else:
            k = rng.randrange(len(buffer))
            buffer[k], labels[k] = entry, label
        transform, learn = self._std.transform, self._lr.learn
        for _ in range(self.replay):
            k = rng.randrange(len(buffer))
            learn(transform(self._values_of(buffer[k])), labels[k])

    def _expire(self, before_ms: int | None, later: list[bytes] | None = None,
                held: set[str] | tuple = ()) -> bool:
        """Learn as genuine the pending events older than ``before_ms`` (or the oldest one,
        when over ``max_pending``).

        ``score_many``: with ``later``, only their features, the entries added to ``later``
        for the classifier; False where the next record to pop is of an event id in ``held``
        (in practice a labelled event's record, the event scored again in the batch and not
        pending yet), left unpopped, True when done. After False the caller finishes the
        batch and calls again with the same ``later`` (its entries' features are learned).
        """
        expiry, pending = self._expiry, self._pending
        while expiry:
            t, event_id = expiry.first()
            if before_ms is not None and t >= before_ms:
                return True
            if event_id in held:
                return False
            expiry.popleft()
            entry = pending.pop(event_id, None)
            if entry is None:
                continue  # labelled already
            self._n_expired += 1
            if later is None:
                self._learn(entry, 0, self._watermark)
            else:
                self._learn_features(entry, 0, self._watermark)
                later.append(entry)
            if before_ms is None and len(pending) <= self.max_pending:
                return True
        return True

    def params(self) -> dict[str, float]:
        """The arguments that shape its scores (evaluations write them with the figures)."""
        return {k: getattr(self, k) for k in (
            "seed", "min_labels", "label_ttl_s", "negative_rate", "learning_rate",
            "prior_strength", "prior_examples", "replay", "replay_until", "replay_size")}

    def stats(self) -> dict[str, int]:
        return {"labels": self._n_labels, "fraud_labels": self._n_fraud,
                "expired_as_genuine": self._n_expired, "pending": len(self._pending)}

    # ------------------------------------------------------------------------- snapshots

    @property
    def feature_schema(self) -> str:
        """Hash of the feature names, for the snapshot manifest."""
        return feature_schema_hash(self._names)

    def to_state(self) -> dict:
        """JSON-able state that resumes *after* the last scored event and learned label.

        Restoring it (``load_state``) and replaying the events and labels that came after it
        gives the same scores as never having stopped. The state is built from copies: it can
        be compressed and written on another thread while the scorer goes on.
        """
        clf, adam = self._classifier, self._classifier.optimizer
        det = self._detector
        self._hst.sync()
        self._standardizer().to_river(self._scaler, self._names)
        lr = self._learner()
        pending = self._pending
        heads = [_HEAD.unpack_from(e) for e in pending.values()]  # (event time, score)
        blob = self._values_blob(list(pending.values()))
        context_of = self._context_of
        return {
            "version": STATE_VERSION,
            "model": type(self).__name__,
            "model_version": self.model_version,
            "features": list(self._names),
            "rng": _rng_state(self._rng),
            "rank": list(self._rank._fifo),
            "detector": {
                "counter": det.counter, "first_window": det._first_window,
                "rng": _rng_state(det.rng), "trees": [_tree_state(t) for t in det.trees]},
            "scaler": {"counts": dict(self._scaler.counts), "means": dict(self._scaler.means),
                       "vars": dict(self._scaler.vars)},
            "classifier": {
                "weights": lr.named(lr.w), "intercept": clf.intercept,
                "n_iterations": adam.n_iterations,
                "m": None if adam.m is None else lr.named(adam.m),
                "v": None if adam.v is None else lr.named(adam.v)},
            "folded": {"coef": list(self._coef), "means": list(self._means),
                       "bias": self._bias, "stale": self._stale,
                       "learned_since_refresh": self._learned_since_refresh},
            "pending": {
                "ids": list(pending), "times": [h[0] for h in heads],
                "contexts": [list(context_of(e)) for e in pending.values()],
                "scores": [h[1] for h in heads],
                "width": len(self._names), "byteorder": "little",
                "value_format": _VALUE_FORMAT,
                "values": base64.b64encode(blob).decode("ascii")},
            "expiry": [list(e) for e in self._expiry],
            "watermark": self._watermark,
            "counts": [self._n_seen, self._n_labels, self._n_fraud, self._n_expired],
            "feature_state": self._features.to_state(),
            "cold": {"unseeded": [self._names[i] for i in self._cold()],
                     "active": dict(self._active)},
            "replay": {"labels": list(self._replay_labels),
                       "values": base64.b64encode(
                           self._values_blob(self._replay)).decode("ascii")},
        }

    def load_state(self, state: dict) -> None:
        """Replace the scorer's state by ``state`` (from ``to_state``).

        Constructor arguments are not part of the state: the scorer keeps its own.

        Raises
        ------
        ValueError
            The state is of another layout, model or feature list. Operator action: delete the
            snapshot to retrain from labels (scores are cold until ``min_labels`` arrive).
        """
        if state.get("version") != STATE_VERSION or state.get("model") != type(self).__name__:
            raise ValueError(
                f"fraud scorer state: version {state.get('version')!r} of "
                f"{state.get('model')!r}, this is version {STATE_VERSION} of "
                f"{type(self).__name__}; delete the snapshot to retrain from labels")
        if tuple(state["features"]) != self._names:
            raise ValueError("fraud scorer state: trained on other features; delete the "
                             "snapshot to retrain from labels")
        self._features.load_state(state["feature_state"])
        self._rng.setstate(_rng_from(state["rng"]))
        self._rank = RollingRank(self._rank.window)
        self._rank._fifo.extend(state["rank"])
        self._rank._sorted = sorted(state["rank"])
        d = state["detector"]
        det = self._detector
        det.counter, det._first_window = d["counter"], d["first_window"]
        det.rng.setstate(_rng_from(d["rng"]))
        det.trees = [_tree_from(t, det.height) for t in d["trees"]]
        det._tree_nodes = [list(t.iter_dfs()) for t in det.trees]
        self._hst = _HalfSpace(det, self._detector_keys)
        sc = self._scaler
        sc.counts.clear()
        sc.counts.update(state["scaler"]["counts"])
        sc.means.clear()
        sc.means.update(state["scaler"]["means"])
        sc.vars.clear()
        sc.vars.update(state["scaler"]["vars"])
        self._std = _Standardizer.from_river(sc, self._names)
        c = state["classifier"]
        clf, adam = self._classifier, self._classifier.optimizer
        clf._weights = utils.VectorDict(c["weights"], clf.initializer)
        clf.intercept = c["intercept"]
        adam.n_iterations = c["n_iterations"]
        adam.m = None if c["m"] is None else utils.VectorDict(c["m"])
        adam.v = None if c["v"] is None else utils.VectorDict(c["v"])
        self._lr = None  # rebuilt from the River model
        f = state["folded"]
        self._coef, self._means, self._bias = f["coef"], f["means"], f["bias"]
        self._stale, self._learned_since_refresh = f["stale"], f["learned_since_refresh"]
        self._codes = [self.reason_of.get(k, k) for k in self._names]
        p = state["pending"]
        blob = base64.b64decode(p["values"])
        if p.get("value_format") != _VALUE_FORMAT:
            raise ValueError("fraud scorer state: pending features of another format; delete "
                             "the snapshot to retrain from labels")
        if p["width"] != len(self._names) or len(blob) != (
                _VALUE_SIZE * p["width"] * len(p["ids"])):
            raise ValueError("fraud scorer state: pending features of another width; delete "
                             "the snapshot to retrain from labels")
        context_bytes = self._context_bytes
        self._pending = {
            event_id: _HEAD.pack(t, score) + values + context_bytes(tuple(ctx))
            for event_id, t, ctx, score, values in zip(
                p["ids"], p["times"], p["contexts"], p["scores"],
                self._packed_values(blob, len(p["ids"])))}
        self._expiry = _Fifo()
        for t, event_id in state["expiry"]:
            self._expiry.append(t, event_id)
        self._watermark = state["watermark"]
        self._n_seen, self._n_labels, self._n_fraud, self._n_expired = state["counts"]
        self._unseeded = None
        cold = state.get("cold")
        if cold is None:  # a version-3 state of before the cold start: what varied is seeded
            variances = self._std.vars.tolist()
            self._unseeded = {i: p for i, p in self._cold().items() if variances[i] == 0.0}
            self._active = {}
        else:
            names = set(cold["unseeded"])
            self._unseeded = {i: p for i, p in self._cold().items() if self._names[i] in names}
            self._active = dict(cold["active"])
        replay = state.get("replay") or {"labels": [], "values": ""}
        head = _HEAD.pack(0, 0.0)
        self._replay_labels = bytearray(replay["labels"])
        self._replay = [head + v for v in self._packed_values(
            base64.b64decode(replay["values"]), len(self._replay_labels))]


# A pending event's packed head (event time, score) and features, little-endian whatever
# the machine. The features are half-precision floats (2 bytes, ~3 significant digits, up to
# 65,504): the features are logs, rates, z-scores and indicators, and a learner's step does
# not need more; a million pending events then hold 124 MB of features, not 248 MB. Scoring
# uses the exact values.
_HEAD = struct.Struct("<qd")
_HEAD_BYTES = _HEAD.size
_VALUE_FORMAT = "e"
_VALUE_SIZE = struct.calcsize(_VALUE_FORMAT)
# A transaction's label context after its features: amount and the card id's length in
# characters (then the card and merchant ids, UTF-8).
_TX_CONTEXT = struct.Struct("<dI")
# A transaction's values in its pending entry: DENSE and the detector's rank, then the flags.
_TX_VALUES = np.dtype([("dense", "<f2", (len(DENSE) + 1,)), ("flags", "<u2")])


def _tx_full(packed: np.ndarray) -> np.ndarray:
    """The full feature vectors (float16, ``TransactionScorer.feature_names`` order) of packed
    values (``_TX_VALUES``): ``fraud_features.expand`` for many entries at once."""
    n = len(packed)
    full = np.zeros((n, len(TX_FEATURES) + 1), "<f2")
    full[:, [*DENSE, len(TX_FEATURES)]] = packed["dense"]
    flags = packed["flags"].astype(np.int64)
    n_bands = flags & 15
    for j, col in enumerate(BAND_COLS):
        full[:, col] = n_bands > j
    episode = flags >> 4 & 15
    for j, (col, rate_col) in enumerate(zip(EPISODE_COLS, EPISODE_RATE_COLS)):
        on = episode == j + 1
        full[:, col] = on
        full[:, rate_col] = np.where(on, full[:, EPISODE_RATE], 0)
    for bit, col in enumerate(FLAG_COLS, 8):
        full[:, col] = flags >> bit & 1
    return full


class _Standardizer:
    """River's ``StandardScaler`` (``learn_one``, ``transform_one``; no window) over a fixed
    list of features, every one in every example, as numpy arrays: the same numbers (each
    ``+ - * /`` of float64 is rounded once, in numpy as in Python, and they are the same
    operations in the same order; the square root is Python's ``** 0.5``, as River's), at
    about a third of the cost (a learned example was ~25 us in River's dict loop).

    The counts are float64 (exact integers below 2**53); ``to_river`` writes them as ints.
    """

    __slots__ = ("counts", "dirty", "means", "sd", "vars")

    def __init__(self, width: int) -> None:
        self.counts = np.zeros(width)
        self.means = np.zeros(width)
        self.vars = np.zeros(width)
        self.sd = np.zeros(width)  # the square roots of vars, Python's ``** 0.5`` as River's
        self.dirty = False

    def learn(self, values: list[float]) -> None:
        """``StandardScaler.learn_one``."""
        x = np.array(values, dtype=np.float64)
        n = self.counts
        n += 1.0
        old = self.means
        d = x - old                                       # xi - old_mean
        self.means = mean = old + d / n                   # means[i] += d / counts[i]
        v = self.vars
        self.vars = v + (d * (x - mean) - v) / n          # vars_[i] += (d * (xi - means[i])
        self.dirty = True                                 #              - vars_[i]) / counts[i]
        self._root()

    def _root(self) -> None:
        # (numpy's sqrt differs from River's ``** 0.5`` in the last bit now and then)
        self.sd = np.array([v ** 0.5 for v in self.vars.tolist()])

    def transform(self, values: list[float]) -> np.ndarray:
        """``StandardScaler.transform_one`` as an array (0 for a feature that has not
        varied)."""
        sd = self.sd
        return np.divide(np.array(values, dtype=np.float64) - self.means, sd,
                         out=np.zeros(len(sd)), where=sd > 0.0)

    def to_river(self, scaler: preprocessing.StandardScaler, names: tuple[str, ...]) -> None:
        """Write the numbers learned since the last call into ``scaler``."""
        if self.dirty:
            dict.update(scaler.counts, zip(names, self.counts.astype(np.int64).tolist()))
            scaler.means.update(zip(names, self.means.tolist()))
            scaler.vars.update(zip(names, self.vars.tolist()))
            self.dirty = False

    @classmethod
    def from_river(cls, scaler: preprocessing.StandardScaler,
                   names: tuple[str, ...]) -> _Standardizer:
        new = cls(len(names))
        new.counts[:] = [scaler.counts.get(k, 0) for k in names]
        new.means[:] = [scaler.means.get(k, 0.0) for k in names]
        new.vars[:] = [scaler.vars.get(k, 0.0) for k in names]
        new._root()
        return new


class _Logistic:
    """River's ``LogisticRegression.learn_one`` for a fixed list of features that every
    example has, over numpy arrays: the weights in ``names`` order, and River's own loss
    gradient, gradient clipping, intercept schedule and optimizer step (River's optimizers
    take arrays: its ``learn_many`` path). The steps of ``learn_one``, in its order; the dot
    product sums in another order, so the weights agree with River's to rounding (within
    1e-9 relative after 1,500 steps, tested), not bit for bit. ~10 us a learned example where
    River's dict path took ~90 us.

    The weights live here: ``to_river`` writes them into the River model (``sync``,
    snapshots); the optimizer's moments stay arrays in River's ``Adam``.
    """

    __slots__ = ("clf", "names", "w")

    def __init__(self, clf: linear_model.LogisticRegression, names: tuple[str, ...]) -> None:
        self.clf, self.names = clf, names
        self.w = self.array(clf._weights)
        adam = clf.optimizer
        if adam.m is not None and not isinstance(adam.m, np.ndarray):
            adam.m, adam.v = self.array(adam.m), self.array(adam.v)

    def array(self, values) -> np.ndarray:
        """A River dict of feature values (or a ``VectorDict``) as an array."""
        d = values.to_dict() if hasattr(values, "to_dict") else values
        return np.array([d.get(k, 0.0) for k in self.names], dtype=np.float64)

    def named(self, values: np.ndarray) -> dict[str, float]:
        """An array (the weights, Adam's moments) as ``{feature: value}``."""
        return dict(zip(self.names, values.tolist()))

    def learn(self, z: np.ndarray, label: int) -> None:
        """``clf.learn_one(dict(zip(names, z)), bool(label))``."""
        clf = self.clf
        opt = clf.optimizer
        opt.look_ahead(w=self.w)
        g = clf.loss.gradient(y_true=bool(label), y_pred=float(self.w @ z) + clf.intercept)
        clip = clf.clip_gradient
        g = -clip if g < -clip else min(g, clip)
        clf.intercept -= clf.intercept_lr.get(opt.n_iterations) * g
        self.w = opt.step(w=self.w, g=g * z)

    def to_river(self) -> None:
        self.clf._weights = utils.VectorDict(self.named(self.w), self.clf.initializer)


class _Fifo:
    """(event time, event id) in scoring order: 16 bytes an entry (a deque of tuples costs
    ~90), popped from the front by moving a head index, compacted now and then."""

    __slots__ = ("_head", "_ids", "_times")

    def __init__(self) -> None:
        self._times = array("q")
        self._ids: list[str] = []
        self._head = 0

    def append(self, t: int, event_id: str) -> None:
        self._times.append(t)
        self._ids.append(event_id)

    def first(self) -> tuple[int, str]:
        h = self._head
        return self._times[h], self._ids[h]

    def popleft(self) -> None:
        self._head += 1
        h = self._head
        if h >= 4096 and 2 * h >= len(self._ids):  # amortised O(1)
            del self._times[:h]
            del self._ids[:h]
            self._head = 0

    def __len__(self) -> int:
        return len(self._ids) - self._head

    def __iter__(self):
        return zip(self._times[self._head:], self._ids[self._head:])


class _Segment:
    """``score_many``'s events computed and not scored yet: ``steps`` (index, event time,
    id, features or None where they raised, flags, the entries learned before it and after
    it), their ``ids``, the detector's ``views`` and ``learns``, the ``oldest`` event time."""

    __slots__ = ("ids", "learns", "oldest", "steps", "views")

    def __init__(self) -> None:
        self.steps: list[tuple] = []
        self.ids: set[str] = set()
        self.views: list = []
        self.learns: list[int] = []
        self.oldest = 1 << 62


class _HalfSpace:
    """A River ``HalfSpaceTrees``' trees as flat lists, heap order (node ``k``'s children at
    ``2k + 1`` and ``2k + 2``), walked once per tree to score and learn (``score_learn``).

    The same numbers as River's ``score_one(x)`` then ``learn_one(x)`` (scoring reads the
    reference masses ``r_mass``, learning writes the current ones ``l_mass`` along the same
    path; the masses are integers: exact in any order), at about a third of the cost: the hot
    path. The masses live here; ``sync()`` writes them back into the River nodes (snapshots).

    ``keys``: the features of a view that is a sequence (``x[i]`` is feature ``keys[i]``);
    None: the view is a dict.
    """

    __slots__ = ("_branch_base", "_node_base", "_pows", "_split_features", "_split_thresholds",
                 "det", "height", "keys", "max_score", "nodes", "size_limit", "trees", "zeros")

    # A batch this long or longer is walked as arrays (``score_learn_many``): ~0.7 us per
    # event at 500, 2.7 one at a time; even at ~30 (``python -m pipelines.bench_scoring``).
    BATCH_MIN = 32

    def __init__(self, det: anomaly.HalfSpaceTrees, keys: tuple[str, ...] | None = None) -> None:
        self.det = det
        self.keys = keys
        self.height = det.height
        self.size_limit = 0.1 * det.window_size
        self.max_score = det._max_score
        # per tree: (features, thresholds, l_mass, r_mass) and its River nodes, heap order
        self.trees: list[tuple[list, list, list, list]] = []
        self.nodes: list[list] = []
        self.zeros = [0] * (2 ** (det.height + 1) - 1)
        if det.trees:
            self._flatten()

    def _flatten(self) -> None:
        at = None if self.keys is None else {k: i for i, k in enumerate(self.keys)}
        n_branches = 2 ** self.height - 1
        self.trees, self.nodes = [], []
        for root in self.det.trees:
            heap = [root]
            for k in range(n_branches):
                heap += heap[k].children
            branches = heap[:n_branches]
            features = [b.feature if at is None else at[b.feature] for b in branches]
            self.trees.append((features, [b.threshold for b in branches],
                               [n.l_mass for n in heap], [n.r_mass for n in heap]))
            self.nodes.append(heap)
        # the splits of every tree as flat arrays, tree after tree (they never change), for
        # ``score_learn_many``; None: the views are dicts, walked one at a time
        n_trees, n_nodes = len(self.trees), 2 * n_branches + 1
        self._split_features = None if at is None else np.array(
            [t[0] for t in self.trees], np.intp).ravel()
        self._split_thresholds = np.array([t[1] for t in self.trees], np.float64).ravel()
        self._branch_base = (np.arange(n_trees) * n_branches)[:, None]
        self._node_base = (np.arange(n_trees) * n_nodes)[:, None]
        self._pows = (1 << np.arange(self.height + 1))[:, None, None]

    def sync(self) -> None:
        """Write the masses back into the River trees' nodes."""
        for heap, (_, _, l_mass, r_mass) in zip(self.nodes, self.trees):
            for node, lm, rm in zip(heap, l_mass, r_mass):
                node.l_mass = lm
                node.r_mass = rm

    def score_learn(self, x, learn: int) -> float:
        """``det.score_one(x)``, then ``det.learn_one(x)`` when ``learn``. ``x`` holds every
        feature of the trees."""
        det = self.det
        trees = self.trees
        if not trees:  # the first event builds the trees
            xd = x if self.keys is None else dict(zip(self.keys, x))
            score = det.score_one(xd)
            if learn:
                det.learn_one(xd)
            if det.trees:
                self._flatten()
            return score
        height = self.height
        first = det._first_window
        limit = self.size_limit
        total = 0.0
        if learn:
            for features, thresholds, l_mass, r_mass in trees:
                k = 0
                depth_pow = 1
                scoring = not first
                for _ in range(height):
                    if scoring:
                        r = r_mass[k]
                        total += r * depth_pow
                        if r < limit:  # River stops scoring here
                            scoring = False
                    l_mass[k] += 1
                    # left (2k + 1) when x < threshold, as River
                    k = 2 * k + 2 - (x[features[k]] < thresholds[k])
                    depth_pow <<= 1
                if scoring:
                    total += r_mass[k] * depth_pow
                l_mass[k] += 1
            # River's learn_one: pivot the masses at the end of each window
            det.counter += 1
            if det.counter == det.window_size:
                zeros = self.zeros
                for _, _, l_mass, r_mass in trees:
                    r_mass[:] = l_mass
                    l_mass[:] = zeros
                det._first_window = False
                det.counter = 0
        elif not first:
            for features, thresholds, _, r_mass in trees:
                k = 0
                depth_pow = 1
                for _ in range(height):
                    r = r_mass[k]
                    total += r * depth_pow
                    if r < limit:
                        break
                    k = 2 * k + 2 - (x[features[k]] < thresholds[k])
                    depth_pow <<= 1
                else:
                    total += r_mass[k] * depth_pow
        return 0 if first else 1 - total / self.max_score

    def score_learn_many(self, views: list, learns: list[int]) -> list[float]:
        """``score_learn`` of each view in turn, as arrays: the same numbers.

        Scoring reads the reference masses only, which change when a window ends (every
        ``window_size`` learned events): the views are walked together up to each window's
        end, every tree a level at a time; the paths of the learned ones then add to
        ``l_mass`` (integers: exact in any order) and the window pivots as in ``score_learn``.
        """
        n = len(views)
        if n < self.BATCH_MIN or not self.trees or self._split_features is None:
            return list(map(self.score_learn, views, learns))
        det, trees, height = self.det, self.trees, self.height
        width = len(views[0])
        x = np.fromiter(chain.from_iterable(views), np.float64, n * width)
        learn = np.fromiter(learns, bool, n)
        features, thresholds = self._split_features, self._split_thresholds
        n_nodes = len(self.zeros)
        out: list[float] = []
        start = 0
        while start < n:
            # up to the event whose learning ends the window (all of them if none does)
            learned = np.cumsum(learn[start:])
            pivot = int(np.searchsorted(learned, det.window_size - det.counter))
            end = n if pivot >= n - start else start + pivot + 1
            row = np.arange(start, end) * width
            k = np.zeros((len(trees), end - start), np.intp)
            paths = np.empty((height + 1, *k.shape), np.intp)  # level x tree x event
            for depth in range(height):
                paths[depth] = k
                split = k + self._branch_base
                # left (2k + 1) when x < threshold, as River
                k = 2 * k + 2 - (x.take(row + features.take(split)) < thresholds.take(split))
            paths[height] = k
            nodes = paths + self._node_base  # the trees' nodes numbered one after the other
            if det._first_window:
                out += [0] * (end - start)
            else:
                r = np.array([r_mass for _, _, _, r_mass in trees], np.int64).ravel().take(nodes)
                # River stops scoring below the first node under the size limit (counted)
                counted = np.ones(r.shape, bool)
                np.logical_and.accumulate(r[:-1] >= self.size_limit, axis=0, out=counted[1:])
                total = (r * self._pows * counted).sum(axis=(0, 1))
                out += (1 - total / self.max_score).tolist()
            took = learn[start:end]
            if n_learned := int(np.count_nonzero(took)):
                counts = np.bincount(nodes[:, :, took].ravel(),
                                     minlength=len(trees) * n_nodes).tolist()
                for i, (_, _, l_mass, _) in enumerate(trees):
                    l_mass[:] = map(add, l_mass, counts[i * n_nodes:(i + 1) * n_nodes])
                det.counter += n_learned
                if det.counter == det.window_size:
                    for _, _, l_mass, r_mass in trees:
                        r_mass[:] = l_mass
                        l_mass[:] = self.zeros
                    det._first_window = False
                    det.counter = 0
            start = end
        return out


def _result(score_one, event: dict):
    """``score_one(event)``, or the exception it raised."""
    try:
        return score_one(event)
    except Exception as exc:
        return exc


def _rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_from(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])


def _tree_state(root: PaddedBranch) -> dict:
    """A HalfSpaceTrees tree in depth-first order: splits of the branches, masses of all
    nodes (the tree is complete, so its shape follows from the height)."""
    features, thresholds, masses = [], [], []
    for node in root.iter_dfs():
        if isinstance(node, PaddedBranch):
            features.append(node.feature)
            thresholds.append(node.threshold)
        masses += (node.l_mass, node.r_mass)
    return {"features": features, "thresholds": thresholds, "masses": masses}


def _tree_from(state: dict, height: int) -> PaddedBranch:
    splits = iter(zip(state["features"], state["thresholds"]))
    masses = iter(state["masses"])

    def build(depth: int):  # depth-first, as written
        l_mass, r_mass = next(masses), next(masses)
        if depth == height:
            return PaddedLeaf(l_mass=l_mass, r_mass=r_mass)
        feature, threshold = next(splits)
        left = build(depth + 1)
        right = build(depth + 1)
        return PaddedBranch(left, right, feature, threshold, l_mass, r_mass)

    return build(0)


class TransactionScorer(_Scorer):
    """Card transactions: spending windows, merchant risk from known labels, the card's
    amount profile, new device / country, bursts (``agents/fraud_features.py``)."""

    model_version = "txn-hst-lr-v1"
    reason_of = TX_REASON_OF
    # Known fraud at the merchant (risk and episode rate in [0, 1]: a compromised terminal's
    # ~0.5-0.9 adds ~3-5 to the logit; decayed counts, log1p) and on the card. Set once by
    # hand to say "known fraud raises the odds, a merchant's more than a card's", then
    # checked on the Handbook: half or double these changes its ROC AUC by under 0.001.
    label_feedback_priors: ClassVar[dict[str, float]] = {
        "merchant_risk_1d": 2.0, "merchant_risk_7d": 6.0, "merchant_risk_30d": 2.0,
        "merchant_episode_rate": 6.0, "merchant_fraud_1d": 1.0, "merchant_fraud_7d": 1.0,
        "card_known_fraud": 2.0, "card_fraud_x_amount_z": 0.6,
    }

    def __init__(self, *, max_cards: int = 1_000_000, max_merchants: int = 500_000,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_cards = max_cards
        self.max_merchants = max_merchants
        self._features = TransactionFeatures(max_cards=max_cards, max_merchants=max_merchants)
        self._names = (*self._features.names, DETECTOR_FEATURE)
        # a pending entry keeps the dense features and the detector's rank (float16), then
        # the 0/1 features' flags (fraud_features.expand): 60 bytes of values, not 124
        self._packer = struct.Struct(f"<qd{len(DENSE) + 1}{_VALUE_FORMAT}H")
        self._dense_of = itemgetter(*DENSE, len(self._features.names))
        self._entry_head = struct.Struct(self._packer.format + _TX_CONTEXT.format[1:])
        self._compute = self._features.compute
        n = self._features.names
        self._view_of = itemgetter(*(n.index(k) for k in (
            "amount_log", "amount_z", "gap_log", "new_country", "new_device", "merchants_1h",
            "card_n_1h")))
        self._cold_of = itemgetter(*(n.index(k) for k in (
            "new_country", "new_device", "gap_log", "amount_z", "merchant_risk_7d",
            "card_fraud_recent", "declined")))

    _detector_keys = ("amount", "amount_z", "burst", "new_country", "new_device",
                      "merchants_1h", "velocity_1h")

    def _detector_view(self, v: list[float]) -> tuple[float, ...]:
        a, z, gap, nc, nd, m1h, n1h = self._view_of(v)
        # (``_detector_keys`` order; conditional expressions, not min/max calls: this runs
        # for every event)
        return (
            a / 10.0 if a < 10.0 else 1.0,              # log1p(22,000) ~ 10
            (z + 5.0) / 15.0,                           # z is clipped to [-5, 10]
            1.0 - gap / 15.0 if gap < 15.0 else 0.0,    # log1p(38 days in s) ~ 15
            nc,
            nd,
            m1h / 10.0 if m1h < 10.0 else 1.0,
            n1h / 3.0 if n1h < 3.0 else 1.0,
        )

    def _flags(self) -> int:
        return self._features.flags

    def _entry(self, t: int, score: float, v: list[float], event: dict, flags: int) -> bytes:
        # one pack: head, values, flags, then the context's amount and card id length; the
        # ids after it (``_context_bytes``)
        card_id = event["card_id"]
        return self._entry_head.pack(t, score, *self._dense_of(v), flags,
                                     float(event["amount"]), len(card_id)) + \
            (card_id + event["merchant_id"]).encode("utf-8", "surrogatepass")

    def _values_of(self, entry: bytes) -> list[float]:
        values = self._packer.unpack_from(entry)
        return [*expand(values[2:-2], values[-1]), values[-2]]

    def _values_blob(self, entries: list[bytes]) -> bytes:
        # as float16 (numpy, not one Python call per value: a million entries take ~0.2 s)
        end = self._packer.size
        packed = np.frombuffer(b"".join(e[_HEAD_BYTES:end] for e in entries), _TX_VALUES)
        return _tx_full(packed).tobytes()

    def _packed_values(self, blob: bytes, n: int) -> list[bytes]:
        full = np.frombuffer(blob, "<f2").reshape(n, len(self._names))
        packed = np.empty(n, _TX_VALUES)
        n_bands = (full[:, BAND_COLS] == 1).sum(axis=1)
        episode = full[:, EPISODE_COLS] == 1
        flags = n_bands + np.where(episode.any(axis=1), episode.argmax(axis=1) + 1, 0) * 16
        for bit, col in enumerate(FLAG_COLS, 8):
            flags += (full[:, col] == 1) * (1 << bit)
        packed["dense"] = full[:, [*DENSE, len(self._names) - 1]]
        packed["flags"] = flags
        # the 0/1 features must be what the flags say (they are, as written by to_state)
        if not np.array_equal(_tx_full(packed).view("<u2"), full.view("<u2")):
            raise ValueError("fraud scorer state: pending features that are not this "
                             "version's; delete the snapshot to retrain from labels")
        raw, w = packed.tobytes(), packed.itemsize
        return [raw[i * w:(i + 1) * w] for i in range(n)]

    def _context(self, event: dict) -> tuple:
        return (event["card_id"], event["merchant_id"], float(event["amount"]))

    def _context_bytes(self, context: tuple) -> bytes:
        # amount, the card id's length (characters), the card and merchant ids (UTF-8): ~30
        # bytes in the entry's bytes, where a tuple, a float and the ids' strings cost ~200 more
        card_id, merchant_id, amount = context
        return _TX_CONTEXT.pack(float(amount), len(card_id)) + \
            (card_id + merchant_id).encode("utf-8", "surrogatepass")

    def _context_of(self, entry: bytes) -> tuple:
        at = self._packer.size
        amount, n = _TX_CONTEXT.unpack_from(entry, at)
        ids = entry[at + _TX_CONTEXT.size:].decode("utf-8", "surrogatepass")
        return ids[:n], ids[n:], amount

    def _learn_context(self, context: tuple, event_time: int, label: int,
                       known_at: int, score: float) -> None:
        card_id, merchant_id, amount = context
        self._features.learn_label(card_id, merchant_id, event_time, amount, label, known_at,
                                   score)

    def _learn_entry(self, entry: bytes, event_time: int, label: int, known_at: int,
                     score: float) -> None:
        # ``_context_of`` without its tuple; the card id only for a fraud label (9 labels in
        # 10 are genuine: the merchant's label windows learn them, the card does not)
        at = self._packer.size
        amount, n = _TX_CONTEXT.unpack_from(entry, at)
        ids = entry[at + _TX_CONTEXT.size:].decode("utf-8", "surrogatepass")
        self._features.learn_label(ids[:n] if label else None, ids[n:], event_time, amount,
                                   label, known_at, score)

    def _cold_reasons(self, v: list[float]) -> list[str]:
        # (read by position: a dict of the 62 features per event cost more than the rest)
        new_country, new_device, gap_log, amount_z, risk_7d, fraud_recent, declined = \
            self._cold_of(v)
        flags = [(new_country > 0, "new_country"), (new_device > 0, "new_device"),
                 (gap_log < 4.1, "rapid_repeat"),            # under a minute
                 (amount_z > 3.0, "amount_unusual_for_card"),
                 (risk_7d > 0.2, "merchant_fraud_risk"),
                 (fraud_recent > 0, "card_recent_fraud"),
                 (declined > 0, "declined")]
        return [name for on, name in flags if on][:self.n_reasons]


class ApplicationScorer(_Scorer):
    """Credit applications: identity velocity (SSN, device, IP, e-mail domain, address over
    1 h / 1 day / 30 days), amount against income, employment consistency
    (``agents/fraud_identity.py``)."""

    model_version = "app-hst-lr-v1"
    reason_of = APP_REASON_OF
    # the e-mail domain's known fraud rate in [0, 1] and the identity's known fraud (log1p of
    # a decayed count), as the transaction scorer's merchant and card priors
    label_feedback_priors: ClassVar[dict[str, float]] = {
        "email_risk": 6.0, "identity_known_fraud": 2.0}

    _detector_keys = ApplicationFeatures.DETECTOR_KEYS

    def __init__(self, *, max_identities: int = 2_000_000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_identities = max_identities
        self._features = ApplicationFeatures(max_keys=max_identities)
        self._names = (*self._features.names, DETECTOR_FEATURE)
        self._packer = struct.Struct(f"<qd{len(self._names)}{_VALUE_FORMAT}")
        self._compute = self._features.compute
        self._detector_view = self._features.detector_view
        self._context = self._features.context

    def _learn_context(self, context: tuple, event_time: int, label: int,
                       known_at: int, score: float) -> None:
        self._features.learn_label(context, label, known_at)

    def _cold_reasons(self, v: list[float]) -> list[str]:
        return self._features.cold_reasons(dict(zip(self._names, v)))[:self.n_reasons]


__all__ = ["DAY_MS", "STATE_VERSION", "ApplicationScorer", "TransactionScorer"]
