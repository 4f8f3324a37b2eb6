"""Unit tests of the fraud scorers and their online features: no Faust, no broker."""

from __future__ import annotations

import base64
import math
import random
import struct

import orjson
import pytest

from agents.fraud import ApplicationScorer, TransactionScorer
from agents.fraud_features import (
    BAND_COLS,
    C_LAST_FRAUD,
    C_N,
    CARD_SLOTS,
    DAY_MS,
    DENSE,
    EPISODE_COLS,
    EPISODE_RATE,
    EPISODE_RATE_COLS,
    HOUR_MS,
    MINUTE_MS,
    CardTable,
    TransactionFeatures,
    expand,
)
from agents.fraud_identity import ApplicationFeatures

T0 = 1_790_000_000_000  # a fixed event time (ms), 2026-09


def txn(i: int, t: int | None = None, **overrides) -> dict:
    event = {"event_id": f"t{i}", "event_time": T0 + i * 60_000 if t is None else t,
             "card_id": "c1", "account_id": "a1", "merchant_id": "m1", "mcc": "5411",
             "amount": 20.0, "currency": "EUR", "channel": "pos", "country": "FR",
             "status": "approved", "device_id": None, "ip": None}
    return {**event, **overrides}


def app(i: int, **overrides) -> dict:
    event = {"event_id": f"a{i}", "event_time": T0 + i * 60_000, "applicant_id": f"p{i}",
             "ssn_hash": f"ssn{i}", "name_hash": f"name{i}", "address_hash": f"addr{i}",
             "income": 50_000.0, "requested_amount": 5_000.0, "employment": "employed",
             "age_years": 40, "device_id": f"d{i}", "ip": f"10.0.{i // 250}.{i % 250}",
             "email_domain": "example.com", "product": "credit_card"}
    return {**event, **overrides}


def features(f: TransactionFeatures, event: dict) -> dict[str, float]:
    return dict(zip(f.names, f.compute(event)))


# --------------------------------------------------------------------- transaction features

def test_spending_windows_decay_in_event_time():
    f = TransactionFeatures()
    features(f, txn(0, t=T0, amount=10.0))
    # one day later the 1-day window holds e^-1 of the first event, the 30-day one ~all of it
    x = features(f, txn(1, t=T0 + DAY_MS, amount=10.0))
    assert x["card_n_1d"] == pytest.approx(math.log1p(math.exp(-1)))
    assert x["card_n_30d"] == pytest.approx(math.log1p(math.exp(-1 / 30)))
    assert x["card_n_10m"] == pytest.approx(0.0, abs=1e-12)
    assert x["card_mean_7d"] == pytest.approx(math.log1p(10.0))  # a mean is not decayed
    assert x["gap_log"] == pytest.approx(math.log1p(86_400))
    # a burst: 3 events within minutes
    features(f, txn(2, t=T0 + DAY_MS + MINUTE_MS))
    x = features(f, txn(3, t=T0 + DAY_MS + 2 * MINUTE_MS))
    assert x["card_n_10m"] > math.log1p(1.5)
    assert x["gap_log"] == pytest.approx(math.log1p(60))


def test_amount_against_the_cards_own_history():
    f = TransactionFeatures()
    rng = random.Random(1)
    for i in range(40):
        features(f, txn(i, amount=round(rng.uniform(18, 25), 2)))
    usual = features(f, txn(40, amount=21.0))
    odd = features(f, txn(41, amount=400.0))
    assert abs(usual["amount_z"]) < 2 and odd["amount_z"] > 5
    assert odd["amount_vs_30d"] > 2.5  # log(400 / ~21)
    assert odd["amount_band_5.5"] == 1.0 and usual["amount_band_4.0"] == 0.0
    # the unusual amount stays on the card's record for a while
    assert features(f, txn(42, amount=21.0))["card_anomaly_7d"] > 1.0


def test_new_device_new_country_and_distinct_merchants_of_the_last_hour():
    f = TransactionFeatures()
    for i in range(5):
        features(f, txn(i, device_id="d1", merchant_id=f"m{i % 2}"))
    x = features(f, txn(5, device_id="d1", merchant_id="m0"))
    assert (x["new_device"], x["new_country"], x["merchants_1h"]) == (0.0, 0.0, 2.0)
    x = features(f, txn(6, device_id="d9", country="BR", merchant_id="m7"))
    assert (x["new_device"], x["new_country"], x["merchants_1h"]) == (1.0, 1.0, 3.0)
    # two hours later the earlier merchants are out of the hour
    x = features(f, txn(7, t=T0 + 3 * HOUR_MS, merchant_id="m0"))
    assert x["merchants_1h"] == 1.0


def test_merchant_risk_uses_only_labels_already_known():
    f = TransactionFeatures()
    for i in range(10):
        features(f, txn(i, card_id=f"c{i}", merchant_id="m1"))
    # the frauds at m1 are not known yet: no risk
    x = features(f, txn(10, card_id="c99", merchant_id="m1"))
    assert x["merchant_risk_1d"] == 0.0 and x["merchant_fraud_7d"] == 0.0
    known_at = T0 + 7 * DAY_MS
    for i in range(10):
        f.learn_label(f"c{i}", "m1", T0 + i * 60_000, 20.0, 1, known_at)
    x = features(f, txn(11, t=known_at + HOUR_MS, card_id="c98", merchant_id="m1"))
    assert x["merchant_risk_1d"] > 0.8 and x["merchant_risk_7d"] > 0.8
    assert x["merchant_episode_7d"] == 1.0  # the episode began 7 days ago
    assert features(f, txn(12, t=known_at + HOUR_MS, merchant_id="m2"))["merchant_risk_7d"] == 0
    # the card of a known fraud carries it
    assert features(f, txn(13, t=known_at + HOUR_MS, card_id="c3"))["card_fraud_recent"] == 1.0


def test_per_key_state_is_bounded():
    f = TransactionFeatures(max_cards=100, max_merchants=50)
    for i in range(1_000):
        f.compute(txn(i, card_id=f"c{i}", merchant_id=f"m{i}", device_id=f"d{i}"))
    assert len(f) == 100 and len(f._merchants) == 50
    assert f.card("c899") is None and f.card("c900") is not None  # the least recent forgotten
    f = TransactionFeatures()
    for i in range(200):  # one card, many devices, countries and merchants within the hour
        f.compute(txn(i, t=T0 + i * 1000, device_id=f"d{i}", merchant_id=f"m{i}",
                      country=("FR", "DE", "IT", "ES", "BE", "NL", "PT", "AT", "PL", "SE")[i % 10]))
    card = f.card("c1")
    assert len(card.devices) <= 8 and len(card.countries) <= 8 and len(card.recent[::2]) <= 32


# ----------------------------------------------------------------------------- the scorer

def _labelled_txns(n: int, seed: int = 3):
    """``n`` transactions of 30 cards at 7 merchants and whether each is fraud (~10 %: a
    900.0 amount; genuine ones 10-40)."""
    rng = random.Random(seed)
    for i in range(n):
        fraud = rng.random() < 0.1
        yield txn(i, card_id=f"c{i % 30}", merchant_id=f"m{i % 7}",
                  amount=900.0 if fraud else rng.uniform(10, 40)), fraud


def test_score_is_the_river_pipelines_probability_corrected_for_negative_sampling():
    # without the cold start's priors (they stand in for weights River does not have yet)
    scorer = TransactionScorer(seed=3, min_labels=20, prior_strength=0.0)
    for e, fraud in _labelled_txns(600):
        scorer.score_record(e, T0)
        assert scorer.learn_label(e["event_id"], int(fraud))
    scorer.sync()  # scoring refolds the weights every few learned examples; now, exactly
    score, v, reasons = scorer.score_one(txn(600, card_id="c1", amount=700.0))
    x = dict(zip(scorer.feature_names, v))
    p = scorer._classifier.predict_proba_one(scorer._scaler.transform_one(x))[True]
    r = scorer.negative_rate
    assert score == pytest.approx(p * r / (p * r + 1 - p), rel=1e-9)
    assert "high_amount" in reasons or "amount_unusual_for_card" in reasons
    contributions = scorer.explain(v)
    assert set(contributions) == set(scorer.feature_names)


def test_the_array_learner_learns_as_rivers_logistic_regression():
    """Scaler + classifier learned through the scorer's arrays, and a River pipeline fed the
    same examples as dicts: the same weights, intercept and Adam moments (to rounding)."""
    from river import linear_model, optim, preprocessing

    scorer = TransactionScorer(seed=3, min_labels=20, negative_rate=1.0, prior_strength=0.0,
                               replay=0)
    scaler = preprocessing.StandardScaler()
    river = linear_model.LogisticRegression(optimizer=optim.Adam(scorer.learning_rate),
                                            intercept_lr=scorer.learning_rate)
    for e, fraud in _labelled_txns(1_500):
        scorer.score_record(e, T0)
        x = dict(zip(scorer.feature_names, scorer._values_of(scorer._pending[e["event_id"]])))
        assert scorer.learn_label(e["event_id"], int(fraud))
        scaler.learn_one(x)
        river.learn_one(scaler.transform_one(x), fraud)
    scorer.sync()
    mine = scorer._classifier
    assert mine.intercept == pytest.approx(river.intercept, rel=1e-9)
    assert mine.optimizer.n_iterations == river.optimizer.n_iterations == 1_500
    for name in scorer.feature_names:
        assert mine.weights[name] == pytest.approx(river.weights.get(name, 0.0), rel=1e-9,
                                                   abs=1e-12), name
    lr = scorer._learner()
    m = lr.named(mine.optimizer.m)
    for name, value in river.optimizer.m.to_dict().items():
        assert m[name] == pytest.approx(value, rel=1e-9, abs=1e-15), name


def test_records_carry_score_decision_reasons_and_version():
    scorer = TransactionScorer(seed=1, review_at=0.3, decline_at=0.6)
    records = [scorer.score_record(txn(i, card_id=f"c{i % 9}"), T0 + 5) for i in range(300)]
    for r in records:
        assert 0.0 <= r["score"] <= 1.0
        expected = "decline" if r["score"] >= 0.6 else "review" if r["score"] >= 0.3 \
            else "approve"
        assert r["decision"] == expected
        assert isinstance(r["reasons"], list)
        assert r["model_version"] == scorer.model_version and r["scored_at"] == T0 + 5
        assert r["card_id"].startswith("c") and r["event_id"].startswith("t")  # event kept


def test_unlabelled_events_are_learned_as_genuine_after_the_ttl():
    scorer = TransactionScorer(seed=1, label_ttl_s=3_600)
    scorer.score_record(txn(0, t=T0), T0)
    scorer.score_record(txn(1, t=T0 + 30 * MINUTE_MS), T0)
    assert scorer.stats()["pending"] == 2
    scorer.score_record(txn(2, t=T0 + 61 * MINUTE_MS), T0)  # t0's hour has passed
    assert scorer.stats() == {"labels": 1, "fraud_labels": 0, "expired_as_genuine": 1,
                              "pending": 2}
    assert not scorer.learn_label("t0", 1)   # too late: reported, not learned
    assert scorer.learn_label("t1", 1)       # in time
    assert scorer.stats()["fraud_labels"] == 1


def test_pending_events_are_bounded():
    scorer = TransactionScorer(seed=1, max_pending=100)
    for i in range(1_000):
        scorer.score_record(txn(i, card_id=f"c{i % 50}"), T0)
    assert scorer.n_pending == 100 and scorer.stats()["expired_as_genuine"] == 900


def test_learns_a_compromised_merchant_from_delayed_labels():
    """Frauds at one merchant become known a day late; then its transactions score high."""
    scorer = TransactionScorer(seed=5, min_labels=50)
    rng = random.Random(5)
    delay = DAY_MS
    queue: list[tuple[int, str, int]] = []
    bad_from = T0 + 5 * DAY_MS
    last = {}
    for i in range(6_000):
        t = T0 + i * 150_000  # 10 days
        while queue and queue[0][0] <= t:
            known_at, event_id, label = queue.pop(0)
            scorer.learn_label(event_id, label, known_at)
        merchant = f"m{rng.randrange(40)}"
        fraud = int(merchant == "m7" and t >= bad_from)
        e = txn(i, t=t, card_id=f"c{rng.randrange(300)}", merchant_id=merchant,
                amount=round(rng.uniform(5, 80), 2))
        last[merchant] = scorer.score_record(e, t)
        queue.append((t + delay, e["event_id"], fraud))
    compromised = last["m7"]
    others = [r["score"] for m, r in last.items() if m != "m7"]
    assert compromised["score"] > max(others)
    assert "merchant_fraud_risk" in compromised["reasons"] or \
        "merchant_fraud_episode" in compromised["reasons"]


def _train_genuine(scorer: TransactionScorer, n: int, start: int = 0) -> None:
    """``n`` genuine transactions at merchants m0-m9, each labelled at once."""
    for i in range(start, start + n):
        e = txn(i, card_id=f"c{i % 40}", merchant_id=f"m{i % 10}", amount=20.0 + i % 13)
        scorer.score_record(e, T0)
        scorer.learn_label(e["event_id"], 0)


def test_a_label_fed_feature_weighs_its_prior_until_the_classifier_has_learned_it():
    # no replay, every genuine label learned: the examples are counted exactly
    scorer = TransactionScorer(seed=4, min_labels=20, negative_rate=1.0, replay=0,
                               prior_examples=30)
    risk = scorer.feature_names.index("merchant_risk_7d")
    prior = TransactionScorer.label_feedback_priors["merchant_risk_7d"]
    _train_genuine(scorer, 200)
    # a fraud at m1 becomes known: m1's next transactions carry merchant risk, a feature no
    # learned example has shown yet (its standard deviation is 0: River alone gives it 0)
    fraud = txn(200, card_id="c0", merchant_id="m1")
    scorer.score_record(fraud, T0)
    scorer.learn_label(fraud["event_id"], 1)
    _, v, _ = scorer.score_one(txn(201, card_id="c5", merchant_id="m1"))
    assert v[risk] > 0
    contribution = scorer.explain(v)["merchant_risk_7d"]
    assert contribution == pytest.approx(prior * (v[risk] - scorer._means[risk]))
    # the same transaction at a merchant without known fraud scores lower
    at_m1 = scorer.score_one(txn(202, card_id="c6", merchant_id="m1"))[0]
    at_m2 = scorer.score_one(txn(203, card_id="c6", merchant_id="m2"))[0]
    assert at_m1 > at_m2
    # learned examples with the feature non-zero: at the 30th the classifier takes over,
    # starting from the prior (the folded coefficient is the prior, not a jump to 0)
    for i in range(204, 260):
        e = txn(i, card_id=f"c{i % 40}", merchant_id="m1")
        scorer.score_record(e, T0)
        scorer.learn_label(e["event_id"], 0)
        if i == 220:
            assert risk in scorer._cold()  # 17 examples so far: still the prior
    scorer.sync()
    assert risk not in scorer._cold()
    var = scorer._standardizer().vars[risk]
    assert var > 0 and scorer._classifier.weights["merchant_risk_7d"] != 0.0
    # without priors the feature stays silent until the classifier learns it
    plain = TransactionScorer(seed=4, min_labels=20, negative_rate=1.0, replay=0,
                              prior_strength=0.0)
    _train_genuine(plain, 200)
    plain.score_record(fraud, T0)
    plain.learn_label(fraud["event_id"], 1)
    _, v, _ = plain.score_one(txn(201, card_id="c5", merchant_id="m1"))
    assert v[risk] > 0 and plain.explain(v)["merchant_risk_7d"] == 0.0


def test_the_seeded_weight_keeps_the_priors_coefficient():
    scorer = TransactionScorer(seed=4, min_labels=20, negative_rate=1.0, replay=0,
                               prior_examples=5)
    risk = scorer.feature_names.index("merchant_risk_7d")
    _train_genuine(scorer, 100)
    for i in range(100, 140):  # frauds at m1, each known at once
        e = txn(i, card_id=f"c{i % 40}", merchant_id="m1")
        scorer.score_record(e, T0)
        scorer.learn_label(e["event_id"], 1 if i < 103 else 0)
        if scorer._active.get("merchant_risk_7d", 0) >= 5:
            break
    assert risk in scorer._cold()
    scorer.sync()
    # seeded by the refresh that found 5 examples: the weight is prior x sd, the folded
    # coefficient the prior itself
    assert risk not in scorer._cold()
    sd = math.sqrt(scorer._standardizer().vars[risk])
    prior = TransactionScorer.label_feedback_priors["merchant_risk_7d"]
    assert scorer._coef[risk] == pytest.approx(prior)
    assert scorer._classifier.weights["merchant_risk_7d"] == pytest.approx(prior * sd)


def test_a_young_model_replays_its_buffer_then_stops():
    scorer = TransactionScorer(seed=6, min_labels=20, negative_rate=1.0, replay=2,
                               replay_until=300, replay_size=50)
    steps = scorer._classifier.optimizer
    _train_genuine(scorer, 300)
    # young: each learned example and two drawn from the buffer (bounded at 50)
    assert steps.n_iterations == 3 * 300 and len(scorer._replay) == 50
    _train_genuine(scorer, 100, start=300)
    # grown up: one step a label, the buffer dropped
    assert steps.n_iterations == 3 * 300 + 100 and scorer._replay == []


@pytest.mark.parametrize("name, value", [("replay", -1), ("prior_strength", -0.5),
                                         ("replay_until", -3)])
def test_cold_start_settings_must_not_be_negative(name, value):
    with pytest.raises(ValueError, match=name):
        TransactionScorer(**{name: value})


def test_same_seed_same_scores():
    def run() -> list[float]:
        scorer = TransactionScorer(seed=9, min_labels=10)
        out = []
        for i in range(200):
            e = txn(i, card_id=f"c{i % 11}", amount=10.0 + i % 17)
            out.append(scorer.score_record(e, T0)["score"])
            scorer.learn_label(e["event_id"], int(i % 13 == 0))
        return out
    assert run() == run()


# ----------------------------------------------------------------------------- applications

def test_identity_velocity_and_reuse_of_an_ssn_under_other_names():
    f = ApplicationFeatures()
    x0 = dict(zip(f.names, f.compute(app(0))))
    assert x0["ssn_n_1h"] == 0.0 and x0["ssn_names"] == 0.0
    # the same SSN 10 minutes later, another name, the same device, a drop address
    x1 = dict(zip(f.names, f.compute(app(1, ssn_hash="ssn0", name_hash="other",
                                         device_id="d0", address_hash="addr0",
                                         income=150_000.0))))
    assert x1["ssn_n_1h"] > 0.5 and x1["device_n_1h"] > 0.5 and x1["address_n_1d"] > 0.5
    assert x1["ssn_names"] == 1.0 and x1["address_ssns"] == 0.0
    assert x1["income_change"] == pytest.approx(math.log1p(150_000) - math.log1p(50_000))
    x2 = dict(zip(f.names, f.compute(app(2, address_hash="addr0"))))
    assert x2["address_ssns"] == 1.0  # a second SSN at that address


def test_application_labels_mark_the_identity_attributes():
    scorer = ApplicationScorer(seed=1, min_labels=5)
    for i in range(20):
        scorer.score_record(app(i, email_domain="yopmail.com" if i % 2 else "example.com"), T0)
    for i in range(20):
        assert scorer.learn_label(f"a{i}", i % 2, T0 + 30 * MINUTE_MS)
    # a new application from a device that was used for fraud
    x = scorer.features(app(30, device_id="d1"))
    assert x["identity_known_fraud"] > 0.5
    assert scorer.features(app(31, email_domain="yopmail.com"))["email_risk"] > \
        scorer.features(app(32, email_domain="example.com"))["email_risk"]


def test_application_records_and_amount_against_income():
    scorer = ApplicationScorer(seed=1)
    r = scorer.score_record(app(0, income=0.0, requested_amount=20_000.0,
                                employment="unemployed"), T0)
    assert 0.0 <= r["score"] <= 1.0 and r["decision"] in {"approve", "review", "decline"}
    assert {"amount_high_vs_income", "no_income"} & set(r["reasons"])
    x = scorer.features(app(1, income=90_000.0, employment="student", age_years=22))
    assert x["employment_inconsistent"] == 1.0


# ------------------------------------------------------------------- episode rate, detector

def test_a_merchant_episode_counts_its_unexplained_frauds():
    """Frauds nothing else explained (scored low) make a compromised merchant; frauds the
    model caught anyway (a stolen card, a fraudulent amount) say little about it."""
    f = TransactionFeatures()
    for m in ("m1", "m2"):
        for i in range(4):
            f.compute(txn(i, card_id=f"c{m}{i}", merchant_id=m))
    known_at = T0 + 7 * DAY_MS
    for i in range(4):  # the same labels, scored 0.05 at m1 and 0.95 at m2
        f.learn_label(f"cm1{i}", "m1", T0 + i * 60_000, 20.0, 1, known_at, 0.05)
        f.learn_label(f"cm2{i}", "m2", T0 + i * 60_000, 20.0, 1, known_at, 0.95)
    x1 = features(f, txn(10, t=known_at + HOUR_MS, card_id="c50", merchant_id="m1"))
    x2 = features(f, txn(11, t=known_at + HOUR_MS, card_id="c51", merchant_id="m2"))
    assert x1["merchant_episode_rate"] == pytest.approx(4 * 0.95 / 5)
    assert x2["merchant_episode_rate"] == pytest.approx(4 * 0.05 / 5)
    # the rate sits in the slot of the episode's age (7 days), the others are 0
    assert x1["merchant_episode_rate_7d"] == x1["merchant_episode_rate"]
    assert x1["merchant_episode_rate_0d"] == 0.0
    # a genuine label in the episode dilutes it
    f.learn_label("c50", "m1", known_at + HOUR_MS, 20.0, 0, known_at + DAY_MS, 0.0)
    x = features(f, txn(12, t=known_at + 2 * DAY_MS, card_id="c52", merchant_id="m1"))
    assert x["merchant_episode_rate"] == pytest.approx(4 * 0.95 / 6)


@pytest.mark.parametrize("as_sequence", [False, True])
def test_one_walk_scores_and_learns_like_rivers_half_space_trees(as_sequence):
    from river import anomaly

    from agents.fraud import _HalfSpace

    keys = ("a", "b", "c")
    ours = _HalfSpace(anomaly.HalfSpaceTrees(n_trees=3, height=6, window_size=50, seed=4),
                      keys if as_sequence else None)
    river = anomaly.HalfSpaceTrees(n_trees=3, height=6, window_size=50, seed=4)
    rng = random.Random(4)
    scores = []
    for i in range(400):
        x = {k: rng.random() ** (3 if k == "a" else 1) for k in keys}
        expected = river.score_one(x)
        if i % 2:
            river.learn_one(x)
        scores.append(expected)
        assert ours.score_learn(tuple(x.values()) if as_sequence else x, i % 2) == expected
    assert len(set(scores)) > 50  # past the first window: scores that differ
    ours.sync()  # the masses, written back into River's nodes
    for mine, theirs in zip(ours.det._tree_nodes, river._tree_nodes):
        assert [(n.l_mass, n.r_mass) for n in mine] == [(n.l_mass, n.r_mass) for n in theirs]
    assert ours.det.counter == river.counter


@pytest.mark.parametrize("size", [1, 31, 32, 77, 500, 1200])
def test_a_batch_walk_scores_and_learns_as_one_walk_per_view(size, monkeypatch):
    """``score_learn_many`` over batches of ``size`` gives ``score_learn`` of each view in
    turn: the scores (the first window's 0 an int as River's), the masses and the window
    counter, across window ends inside a batch (window_size 50, every other view learned).
    From ``BATCH_MIN`` views on, as arrays: one at a time only the first batch (the trees
    are built by the first view) and a shorter one."""
    from river import anomaly

    from agents.fraud import _HalfSpace

    keys = ("a", "b", "c")
    one, many = (_HalfSpace(anomaly.HalfSpaceTrees(n_trees=3, height=6, window_size=50,
                                                   seed=4), keys) for _ in range(2))
    rng = random.Random(4)
    views = [tuple(rng.random() ** (3 if k == "a" else 1) for k in keys) for _ in range(3000)]
    learns = [(i + 1) & 1 for i in range(len(views))]
    expected = list(map(one.score_learn, views, learns))
    walk_one = _HalfSpace.score_learn
    one_at_a_time = []
    monkeypatch.setattr(_HalfSpace, "score_learn", lambda self, x, learn: one_at_a_time.append(
        x) or walk_one(self, x, learn))
    got = []
    for start in range(0, len(views), size):
        got += many.score_learn_many(views[start:start + size], learns[start:start + size])
    assert got == expected and [type(x) for x in got] == [type(x) for x in expected]
    # the first batch, and a last one under BATCH_MIN (3,000 in batches of 32 leave 24)
    tail = len(views) % size
    assert len(one_at_a_time) == (
        size + (tail if tail < _HalfSpace.BATCH_MIN else 0)
        if size >= _HalfSpace.BATCH_MIN else len(views))
    assert got[0] == 0 and len(set(got)) > 100
    assert many.trees == one.trees and many.det.counter == one.det.counter


def test_the_array_scaler_has_rivers_numbers_bit_for_bit():
    from river import preprocessing

    from agents.fraud import _Standardizer

    names = ("dense", "indicator", "constant", "big")
    ours, river = _Standardizer(len(names)), preprocessing.StandardScaler()
    rng = random.Random(5)
    for _ in range(500):
        values = [rng.gauss(0.3, 2.0), float(rng.random() < 0.05), 1.0,
                  rng.lognormvariate(8.0, 3.0)]
        ours.learn(values)
        river.learn_one(dict(zip(names, values)))
        expected = list(river.transform_one(dict(zip(names, values))).values())
        assert ours.transform(values).tolist() == expected
    assert ours.means.tolist() == [river.means[k] for k in names]
    assert ours.vars.tolist() == [river.vars[k] for k in names] and ours.vars[2] == 0.0
    written = preprocessing.StandardScaler()
    ours.to_river(written, names)  # the scaler's state as River's, counts as ints
    assert (dict(written.counts), dict(written.means), dict(written.vars)) == (
        dict(river.counts), dict(river.means), dict(river.vars))
    assert all(type(c) is int for c in written.counts.values())
    back = _Standardizer.from_river(written, names)
    assert back.counts.tolist() == ours.counts.tolist() and back.vars.tolist() == ours.vars.tolist()


def test_a_pending_event_is_one_packed_blob_and_its_label_context():
    scorer = TransactionScorer(seed=1, label_ttl_s=3_600)
    vectors = [scorer.score_one(txn(i, t=T0 + i * 1000, amount=60.0 + 200 * i,
                                    channel="ecom"))[1] for i in range(5)]
    entry = scorer._pending["t3"]
    # event time and score (16 bytes), the dense features and the detector's rank as
    # float16, the 0/1 features as the bits of 2 bytes, then the label context (amount, the
    # card id's length, the ids): one bytes object, no per-value objects
    assert isinstance(entry, bytes)
    assert len(entry) == 16 + 2 * (len(DENSE) + 1) + 2 + 12 + len("c1m1")
    assert scorer._context_of(entry) == ("c1", "m1", 660.0)
    assert scorer.pending_time("t3") == T0 + 3000
    # the full vector comes back, as float16: amount bands and indicators exactly
    n = len(vectors[3])
    assert scorer._values_of(entry) == list(struct.unpack(f"<{n}e",
                                                          struct.pack(f"<{n}e", *vectors[3])))
    x = dict(zip(scorer.feature_names, scorer._values_of(entry)))
    assert x["ecom"] == 1.0 and x["amount_band_6.25"] == 1.0 and x["declined"] == 0.0
    assert list(scorer._expiry) == [(T0 + i * 1000, f"t{i}") for i in range(5)]
    scorer.score_record(txn(9, t=T0 + 2 * HOUR_MS), T0)  # the TTL passes: all 5 learned
    assert len(scorer._expiry) == 1 and scorer.stats()["expired_as_genuine"] == 5


def test_pending_values_keep_merchant_episodes_and_survive_a_snapshot_exactly():
    f = TransactionFeatures()
    x = [0.0] * len(f.names)
    for col in (*BAND_COLS[:4], EPISODE_COLS[2]):
        x[col] = 1.0
    x[EPISODE_RATE] = x[EPISODE_RATE_COLS[2]] = 0.375
    dense = [x[i] for i in DENSE]
    assert expand(dense, 4 | 3 << 4) == x
    # a vector the flags cannot say (an indicator that is not 0/1) is refused at load
    scorer = TransactionScorer(seed=1)
    for i in range(3):
        scorer.score_record(txn(i), T0)
    state = scorer.to_state()
    restored = TransactionScorer(seed=1)
    restored.load_state(orjson.loads(orjson.dumps(state)))
    assert restored._pending == scorer._pending
    width = len(scorer.feature_names)
    values = bytearray(base64.b64decode(state["pending"]["values"]))
    struct.pack_into("<e", values, 2 * (width + BAND_COLS[0]), 0.5)
    state["pending"]["values"] = base64.b64encode(bytes(values)).decode()
    with pytest.raises(ValueError, match="pending features"):
        TransactionScorer(seed=1).load_state(state)


def test_cards_of_one_country_share_its_tuple():
    f = TransactionFeatures()
    for i in range(3):
        f.compute(txn(i, card_id=f"c{i}", country="PT"))
    c0, c1 = f.card("c0"), f.card("c1")
    assert c0.countries == ("PT",) and c0.countries is c1.countries
    f.compute(txn(9, card_id="c0", country="ES"))  # a second country: the card's own tuple
    assert f.card("c0").countries == ("PT", "ES") and f.card("c1").countries == ("PT",)


def test_an_applications_label_context_is_the_keys_its_features_used():
    f = ApplicationFeatures()
    event = app(0, ip="")  # no IP: not a key
    f.compute(event)
    expected = ("ssn:ssn0", "dev:d0", "addr:addr0", "mail:example.com")
    assert f.context(event) == expected
    assert f.context(dict(event)) == expected  # another event object: built again


def test_an_evicted_identity_forgets_its_names():
    f = ApplicationFeatures(max_keys=6)
    f.compute(app(0))
    f.compute(app(1, ssn_hash="ssn0", name_hash="other"))  # ssn0 now has 2 names
    assert f._seen["ssn:ssn0"] == ("name0", "other")
    for i in range(2, 4):  # new identities push ssn0 out
        f.compute(app(i))
    assert "ssn:ssn0" not in f._keys and "ssn:ssn0" not in f._seen
    x = dict(zip(f.names, f.compute(app(9, ssn_hash="ssn0", name_hash="third"))))
    assert x["ssn_names"] == 0.0 and x["ssn_n_30d"] == 0.0  # as a new SSN


def test_the_card_table_forgets_the_least_recently_seen_card_and_reuses_its_row():
    f = TransactionFeatures(max_cards=3)
    for i, card in enumerate(("c0", "c1", "c2", "c0", "c3")):  # c0 seen again: c1 goes
        f.compute(txn(i, card_id=card, device_id=f"d{card}"))
    table = f._cards
    assert [table.keys[r] for r in table.rows()] == ["c2", "c0", "c3"]
    assert f.card("c1") is None and len(table.x) == 3 * CARD_SLOTS  # c3 took c1's row
    assert table.index["c3"] == 1
    c3 = f.card("c3")  # a card new in a reused row: nothing of the forgotten card
    assert c3.devices == ("dc3",) and c3.recent == ("m1", T0 + 4 * 60_000)
    assert c3.x[C_N] == 1.0 and c3.x[C_LAST_FRAUD] == -1.0
    # one device / one recent merchant are held as the string itself, more as a tuple
    f.compute(txn(5, card_id="c3", device_id="dx", merchant_id="m2"))
    c3 = f.card("c3")
    assert c3.devices == ("dc3", "dx") and c3.recent == ("m1", T0 + 4 * 60_000, "m2",
                                                          T0 + 5 * 60_000)
    # a snapshot restores the order, the rows and the values; eviction resumes as it would have
    g = TransactionFeatures(max_cards=3)
    g.load_state(orjson.loads(orjson.dumps(f.to_state())))
    assert g.to_state() == f.to_state()
    for h in (f, g):
        h.compute(txn(6, card_id="c9"))
    assert f.card("c2") is None and g.card("c2") is None and g.to_state() == f.to_state()
    assert f.compute(txn(7, card_id="c3")) == g.compute(txn(7, card_id="c3"))


def test_a_large_card_table_forgets_its_least_recently_seen_cards_in_bulk():
    table = CardTable(300)  # forgets 1 % at a time: 3 cards
    assert table.evict_n == 3
    for i in range(300):
        table.add(f"c{i}", i)
    for key in ("c0", "c2", "c4"):  # seen again: c1, c3, c5 are now the least recently seen
        table.touch(table.index[key])
    rows = table.rows()
    assert [table.keys[r] for r in rows[:4]] == ["c1", "c3", "c5", "c6"]
    assert [table.keys[r] for r in rows[-3:]] == ["c0", "c2", "c4"]
    table.add("new0", 300)  # full: c1, c3 and c5 go at once, their rows are reused
    assert {"c1", "c3", "c5"}.isdisjoint(table.index) and len(table) == 298
    assert table.index["new0"] == 1  # the lowest free row first
    table.add("new1", 301)
    table.add("new2", 302)  # two more new cards take the two other rows: none forgotten
    assert len(table) == 300 and len(table.keys) == 300 and {"c6", "c0"} <= set(table.index)
    assert sorted(table.index[k] for k in ("new0", "new1", "new2")) == [1, 3, 5]
    assert [table.keys[r] for r in table.rows()[-4:]] == ["c4", "new0", "new1", "new2"]
    table.add("new3", 303)  # full again: the next three least recently seen go
    assert {"c6", "c7", "c8"}.isdisjoint(table.index) and "c9" in table.index


def test_a_cards_amount_profile_is_the_profile_function_folded_event_by_event():
    # compute() has the profile update inlined: it must stay _profile(..., weight 1.0)
    from agents.fraud_features import C_P_T, C_Q_VAR, _profile

    f = TransactionFeatures()
    rng = random.Random(6)
    t = T0
    f.compute(txn(0, t=t, amount=20.0))
    profile = tuple(f.card("c1").x[C_P_T:C_Q_VAR + 1])
    for i in range(1, 300):  # bursts, long gaps, outliers (clipped once the profile has weight)
        t += rng.choice((1_000, 60_000, DAY_MS, 20 * DAY_MS))
        amount = rng.choice((rng.uniform(5, 60), rng.uniform(500, 5_000)))
        f.compute(txn(i, t=t, amount=amount))
        profile = _profile(*profile, t, math.log1p(amount), amount, 1.0)
        assert tuple(f.card("c1").x[C_P_T:C_Q_VAR + 1]) == profile


def test_a_merchant_id_is_one_string_however_many_cards_remember_it():
    f = TransactionFeatures()
    for i in range(3):
        f.compute(txn(i, card_id=f"c{i}", merchant_id=f"m{i - i + 7}"))  # new strings
    assert f.card("c1").recent[0] is f.card("c2").recent[0]


@pytest.fixture(scope="module")
def forwarded() -> list[tuple[str, list[dict]]]:
    """The bench's first 15,000 messages as the gateway forwards them (validated,
    deduplicated, in batches per stream), decoded: ~8,800 transactions, ~1,400
    applications."""
    from pipelines.bench_scoring import batches
    from pipelines.settings import Settings

    return [(topic, orjson.loads(raw))
            for topic, raw in batches(15_000, Settings(), start_ms=T0)]


@pytest.mark.parametrize("params", [{}, {"label_ttl_s": 0.5}, {"max_pending": 700}],
                         ids=["default", "ttl-expiries", "store-full"])
@pytest.mark.parametrize("scorer_cls, stream", [(TransactionScorer, "transactions"),
                                                (ApplicationScorer, "applications")])
def test_a_batch_is_scored_as_its_events_one_at_a_time(forwarded, params, scorer_cls, stream,
                                                       monkeypatch):
    """``score_records`` (the detector walking the batch at once) gives what
    ``score_record`` of each event in turn gives, records and state (``to_state``): with
    labels learned between batches, pending events expiring within them (a short label TTL;
    a store over ``max_pending``), events scored again (already pending, twice in a batch)
    and events whose features raise."""
    from agents.fraud import _HalfSpace

    forwarded = [(topic, [dict(e) for e in events]) for topic, events in forwarded]
    walked: list[int] = []
    walk = _HalfSpace.score_learn_many
    monkeypatch.setattr(_HalfSpace, "score_learn_many",
                        lambda self, views, learns: walked.append(len(views))
                        or walk(self, views, learns))
    one, batched = (scorer_cls(min_labels=5, **params) for _ in range(2))
    bad: set[str] = set()
    for scorer in (one, batched):
        compute = scorer._compute

        def compute_but(event: dict, compute=compute) -> list[float]:
            if event["event_id"] in bad:
                raise ValueError("features")
            return compute(event)

        scorer._compute = compute_but
    rng = random.Random(7)
    last: list[dict] = []
    labelled: list[list[dict]] = [[], [], []]  # per batch, the last three
    n_batches = 0
    for topic, events in forwarded:
        if topic != stream:
            continue
        n_batches += 1
        # labels between batches, of events of the last one (the bench's come later)
        labelled.append(rng.sample(last, min(len(last), 30)))
        for i, event in enumerate(labelled[-1]):
            args = (event["event_id"], int(i < 4), event["event_time"] + 1)
            assert one.learn_label(*args) == batched.learn_label(*args)
        bad.add(events[len(events) // 2]["event_id"])
        # scored again: three of this batch (twice in it), two of the last (pending), and
        # labelled ones of one and three batches ago (what expires next may be their first
        # scoring's place in the expiry order), the latter with this batch's event time
        again = rng.sample(events, 3) + last[:2] + labelled[-1][-2:] + [
            {**event, "event_time": events[0]["event_time"]} for event in labelled[-3][-2:]]
        for event in again:
            events.insert(rng.randrange(len(events) + 1), dict(event))
        last = events
        expected = []
        for event in events:
            try:
                expected.append(one.score_record(event, 0))
            except ValueError as exc:
                expected.append(repr(exc))
        got = [repr(r) if isinstance(r, Exception) else r
               for r in batched.score_records(events, 0)]
        assert got == expected
    assert n_batches >= 3 and max(walked) > 4 * _HalfSpace.BATCH_MIN  # walked as batches
    assert sum(1 for r in expected if isinstance(r, str)) == 1
    assert orjson.dumps(batched.to_state(), option=orjson.OPT_SORT_KEYS) == \
        orjson.dumps(one.to_state(), option=orjson.OPT_SORT_KEYS)
    stats = batched.stats()
    assert stats == one.stats() and stats["labels"] > 5
    assert (stats["expired_as_genuine"] > 0) == bool(params)
