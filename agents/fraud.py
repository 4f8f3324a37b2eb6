"""Online fraud and application-risk scorers: plain Python over dicts, no Faust, no broker.

A first model per stream (the foundation; the scoring issue deepens it):

- an unsupervised River ``HalfSpaceTrees`` over features scaled to [0, 1] scores from the first
  event;
- a supervised River logistic regression learns from the delayed ``labels`` stream: the
  features of every scored event wait (bounded, by event id) until its label arrives.

The detector's raw scores are not probabilities: they are turned into their rank among recent
scores, calibrated so that the top ``alert_share`` of traffic scores at least ``decline_at``
(cold start: about 0.5 % of events reach review/decline, not 10 %). Once ``min_labels`` labels
were learned, the score is the mean of that and the classifier's probability, which also sees
the detector's rank as a feature.
"""

from __future__ import annotations

from river import anomaly, linear_model, optim, preprocessing

from agents.features import BoundedDict, RollingRank, calibrated, decision_of, log_scale

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


class _Scorer:
    """Shared mechanics: detector + classifier + pending features awaiting their label."""

    model_version = "v0"

    def __init__(self, *, seed: int = 42, min_labels: int = 50, max_pending: int = 200_000,
                 review_at: float = 0.7, decline_at: float = 0.9, alert_share: float = 0.005
                 ) -> None:
        self.seed = seed
        self.min_labels = min_labels
        self.max_pending = max_pending
        self.review_at = review_at
        self.decline_at = decline_at
        self.alert_share = alert_share
        self._rank = RollingRank(2000)
        # HalfSpaceTrees wants features in [0, 1]; window_size is the reference window in events.
        self._detector = anomaly.HalfSpaceTrees(n_trees=10, height=8, window_size=250, seed=seed)
        self._classifier = preprocessing.StandardScaler() | linear_model.LogisticRegression(
            optimizer=optim.SGD(0.05))
        self._pending: BoundedDict[str, dict] = BoundedDict(max_pending)
        self._n_labels = 0

    def features(self, event: dict) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def reasons(self, x: dict[str, float]) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def score_one(self, event: dict) -> tuple[float, dict[str, float]]:
        """Score an event, learn it into the unsupervised detector, keep it for its label."""
        x = self.features(event)
        rank = self._rank.update(self._detector.score_one(x))
        self._detector.learn_one(x)
        score = calibrated(rank, share=self.alert_share, at=self.decline_at)
        x = {**x, "detector_rank": rank}
        if self._n_labels >= self.min_labels:
            p = self._classifier.predict_proba_one(x).get(True, 0.0)
            score = 0.5 * score + 0.5 * p
        self._pending[event["event_id"]] = x
        return min(1.0, max(0.0, score)), x

    def learn_label(self, target_event_id: str, label: int) -> bool:
        """Learn a delayed label; False when the event's features are no longer held."""
        x = self._pending.pop(target_event_id, None)
        if x is None:
            return False
        self._classifier.learn_one(x, bool(label))
        self._n_labels += 1
        return True

    def score_record(self, event: dict, scored_at_ms: int) -> dict:
        score, x = self.score_one(event)
        return {**event, "score": score,
                "decision": decision_of(score, self.review_at, self.decline_at),
                "reasons": self.reasons(x), "model_version": self.model_version,
                "scored_at": scored_at_ms}


class TransactionScorer(_Scorer):
    """Per-card behaviour: amount against the card's own history, new device, new country,
    bursts (time since the previous transaction), channel and hour."""

    model_version = "txn-hst-lr-v0"

    def __init__(self, *, max_cards: int = 1_000_000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_cards = max_cards
        # card_id -> [n, mean amount, last event ms, countries, devices]
        self._cards: BoundedDict[str, list] = BoundedDict(max_cards)

    def features(self, event: dict) -> dict[str, float]:
        t = event["event_time"]
        amount = float(event["amount"])
        card = self._cards.get(event["card_id"])
        if card is None:
            card = [0, 0.0, None, set(), set()]
        n, mean, last_ms, countries, devices = card
        gap_s = (t - last_ms) / 1000 if last_ms is not None else 86_400.0
        x = {
            "amount": log_scale(amount, 20_000),
            "amount_vs_card": min(1.0, amount / (mean * 5)) if n and mean > 0 else 0.5,
            "burst": 1.0 - log_scale(max(gap_s, 0.0), 86_400),
            "new_country": float(n > 0 and event["country"] not in countries),
            "new_device": float(n > 0 and event.get("device_id") is not None
                                and event["device_id"] not in devices),
            "ecom": float(event["channel"] in ("ecom", "moto")),
            "night": float(((t % DAY_MS) // HOUR_MS) < 6),
            "declined": float(event.get("status", "approved") != "approved"),
        }
        countries.add(event["country"])
        if event.get("device_id") is not None:
            devices.add(event["device_id"])
        # Bounded per card: the sets keep at most a handful of usual countries and devices.
        if len(countries) > 8:
            countries.pop()
        if len(devices) > 8:
            devices.pop()
        self._cards[event["card_id"]] = [n + 1, mean + (amount - mean) / (n + 1), t,
                                         countries, devices]
        return x

    _REASON_OF = {
        "amount_vs_card": "amount_unusual_for_card", "burst": "rapid_repeat",
        "new_country": "new_country", "new_device": "new_device", "declined": "declined",
        "amount": "high_amount", "night": "night_time",
    }

    def reasons(self, x: dict[str, float]) -> list[str]:
        flags = [(x["new_country"], "new_country"), (x["new_device"], "new_device"),
                 (x["burst"] > 0.8 and 1.0 or 0.0, "rapid_repeat"),
                 (x["amount_vs_card"] >= 0.99 and 1.0 or 0.0, "amount_unusual_for_card"),
                 (x["amount"] > 0.8 and 1.0 or 0.0, "high_amount"),
                 (x["declined"], "declined")]
        return [name for on, name in flags if on][:3]


class ApplicationScorer(_Scorer):
    """Identity reuse (same SSN hash, device, e-mail domain), amount against income, age."""

    model_version = "app-hst-lr-v0"

    def __init__(self, *, max_identities: int = 1_000_000, **kwargs) -> None:
        super().__init__(**kwargs)
        self._seen: BoundedDict[str, int] = BoundedDict(max_identities)

    def _count(self, key: str | None) -> int:
        if key is None:
            return 0
        n = self._seen.get(key, 0)
        self._seen[key] = n + 1
        return n

    def features(self, event: dict) -> dict[str, float]:
        income = float(event["income"])
        requested = float(event["requested_amount"])
        ratio = requested / income if income > 0 else 10.0
        return {
            "ssn_reuse": min(1.0, self._count("ssn:" + str(event.get("ssn_hash"))) / 3),
            "device_reuse": min(1.0, self._count(
                "dev:" + event["device_id"] if event.get("device_id") else None) / 5),
            "amount_vs_income": min(1.0, ratio / 2),
            "no_income": float(income <= 0),
            "young": float(event.get("age_years", 40) < 21),
            "unemployed": float(event["employment"] in ("unemployed", "student")),
            "log_amount": log_scale(requested, 100_000),
        }

    def reasons(self, x: dict[str, float]) -> list[str]:
        flags = [(x["ssn_reuse"] > 0, "identity_reuse"), (x["device_reuse"] > 0.2, "device_reuse"),
                 (x["amount_vs_income"] >= 0.5, "amount_high_vs_income"),
                 (x["no_income"] > 0, "no_income"), (x["young"] > 0, "young_applicant")]
        return [name for on, name in flags if on][:3]

