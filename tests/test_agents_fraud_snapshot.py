"""Fraud scorer snapshots: restore + continue gives the same scores as never stopping."""

from __future__ import annotations

import random

import pytest

from agents.fraud import STATE_VERSION, ApplicationScorer, TransactionScorer
from agents.snapshot import SnapshotIncompatible, SnapshotStore

T0 = 1_790_000_000_000  # a fixed event time (ms), 2026-09


def transactions(n: int, seed: int = 7) -> list[dict]:
    """``n`` card transactions over ~5 days, ~3 % fraud (labelled by the ``fraud`` field)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        fraud = rng.random() < 0.03
        out.append({
            "event_id": f"t{i}", "event_time": T0 + i * 150_000 + rng.randrange(60_000),
            "card_id": f"c{rng.randrange(300)}", "account_id": "a",
            "merchant_id": f"m{rng.randrange(5) if fraud else rng.randrange(80)}", "mcc": "5411",
            "amount": round(rng.lognormvariate(5.5 if fraud else 3.5, 1.0), 2),
            "currency": "EUR", "channel": rng.choice(("pos", "ecom")),
            "country": "US" if fraud and rng.random() < 0.5 else "FR", "status": "approved",
            "device_id": f"d{rng.randrange(3)}", "ip": None, "fraud": fraud})
    return out


def applications(n: int, seed: int = 8) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        fraud = rng.random() < 0.05
        k = rng.randrange(20) if fraud else i
        out.append({
            "event_id": f"a{i}", "event_time": T0 + i * 200_000, "applicant_id": f"p{i}",
            "ssn_hash": f"ssn{k}", "name_hash": f"name{i}", "address_hash": f"addr{k % 50}",
            "income": 60_000.0 * rng.random(), "requested_amount": 5_000.0,
            "employment": "employed", "age_years": 40, "device_id": f"d{k}",
            "ip": f"10.0.0.{k % 250}", "email_domain": "example.com",
            "product": "credit_card", "fraud": fraud})
    return out


def run(scorer, events: list[dict], labels: dict[int, list[dict]], start: int, stop: int
        ) -> list[float]:
    """Score events[start:stop]; labels[i] are learned after event i (a delayed label)."""
    scores = []
    for i in range(start, stop):
        scores.append(scorer.score_one(events[i])[0])
        for e in labels.get(i, ()):
            scorer.learn_label(e["event_id"], int(e["fraud"]), events[i]["event_time"])
    return scores


def delayed_labels(events: list[dict], delay: int, seed: int = 3) -> dict[int, list[dict]]:
    """Frauds and a third of genuine events are labelled ``delay`` events later."""
    rng = random.Random(seed)
    out: dict[int, list[dict]] = {}
    for i, e in enumerate(events):
        if e["fraud"] or rng.random() < 0.3:
            out.setdefault(i + delay, []).append(e)
    return out


@pytest.mark.parametrize("make, factory", [
    (lambda: TransactionScorer(min_labels=50, label_ttl_s=86_400), transactions),
    (lambda: ApplicationScorer(min_labels=50, label_ttl_s=86_400), applications),
])
def test_restore_and_continue_scores_as_never_stopped(tmp_path, make, factory):
    events = factory(3000)
    labels = delayed_labels(events, delay=150)
    reference = make()
    expected = run(reference, events, labels, 0, len(events))

    first = make()
    before = run(first, events, labels, 0, 1700)
    # the interesting case: a trained classifier, detector past its first window, events
    # pending their labels, some expired as genuine
    assert first.n_labels > 50 and first.n_pending > 100 and first.stats()["expired_as_genuine"]
    # ... and young: replaying its buffer, some label-fed features still on their priors
    assert first._replay and first._cold()
    store = SnapshotStore(tmp_path)
    store.save("transactions-model", first.to_state(), model=type(first).__name__,
               state_version=STATE_VERSION, feature_schema=first.feature_schema,
               offsets={"transactions:0": 1699})
    del first

    restored = make()
    snap = store.load("transactions-model", model=type(restored).__name__,
                      state_version=STATE_VERSION, feature_schema=restored.feature_schema)
    restored.load_state(snap.state)
    after = run(restored, events, labels, 1700, len(events))
    assert before + after == expected  # exactly: floats survive JSON
    assert restored.stats() == reference.stats()


def test_a_state_from_before_the_cold_start_loads_as_a_grown_model():
    """A version-3 state has no ``cold`` or ``replay``: the features that varied are the
    classifier's own, the others wait on their priors; nothing is replayed."""
    events = transactions(2000)
    labels = delayed_labels(events, delay=150)
    first = TransactionScorer(min_labels=50)
    run(first, events, labels, 0, 1500)
    state = first.to_state()
    del state["cold"], state["replay"]
    state["scaler"]["vars"]["card_known_fraud"] = 0.0  # as if no card fraud had been learned
    restored = TransactionScorer(min_labels=50)
    restored.load_state(state)
    variances = restored._standardizer().vars.tolist()
    names = set(TransactionScorer.label_feedback_priors)
    waiting = {restored.feature_names[i] for i in restored._cold()}
    assert waiting == {n for n in names if variances[restored.feature_names.index(n)] == 0.0}
    assert restored._replay == [] and restored._active == {}
    assert waiting == {"card_known_fraud"}
    run(restored, events, labels, 1500, 2000)  # and it goes on


def test_a_snapshot_of_other_features_is_refused(tmp_path):
    scorer = TransactionScorer()
    store = SnapshotStore(tmp_path)
    store.save("transactions-model", scorer.to_state(), model="TransactionScorer",
               state_version=STATE_VERSION, feature_schema="0123456789abcdef", offsets={})
    with pytest.raises(SnapshotIncompatible, match="Delete"):
        store.load("transactions-model", model="TransactionScorer",
                   state_version=STATE_VERSION, feature_schema=scorer.feature_schema)
    with pytest.raises(ValueError, match="retrain"):
        ApplicationScorer().load_state(scorer.to_state())


# ------------------------------------------------------------------ the worker's wiring

def _pipeline(tmp_path, **model):
    from test_agents_snapshot import CollectingOutputs

    from pipelines.app import Pipeline
    from pipelines.settings import ModelSettings, Settings

    settings = Settings()
    settings.__dict__["model"] = ModelSettings(snapshot_dir=tmp_path / "models",
                                               snapshot_interval_s=3600, **model)
    return Pipeline(settings, CollectingOutputs())


def _batch(pipeline, events: list[dict], partition: int = 0) -> list[float]:
    from agents.aggregate import WindowAggregator

    agg = WindowAggregator("transactions", window_size_ms=60_000, grace_ms=10_000,
                           flag_threshold=0.9)
    sent = len(pipeline.outputs.sent)
    pipeline.score_batch("transactions", [{**e, "stream": "transactions"} for e in events],
                         agg, partition)
    return [r["score"] for t, r in pipeline.outputs.sent[sent:] if t == "scored-transactions"]


def _labels(events: list[dict]) -> list[dict]:
    return [{"target_stream": "transactions", "target_event_id": e["event_id"],
             "label": int(e["fraud"]), "event_time": e["event_time"] + 1} for e in events]


def test_the_worker_restores_its_fraud_scorer_and_relearns_the_replayed_batches(tmp_path):
    events = [{k: v for k, v in e.items()} for e in transactions(1200)]
    batches = [events[i:i + 100] for i in range(0, 1200, 100)]

    def feed(pipeline, start, stop, *, snapshot_at=None):
        scores = []
        for offset in range(start, stop):
            scores += _batch(pipeline, batches[offset])
            pipeline.maybe_snapshot("transactions", 0, offset, force=offset == snapshot_at)
            pipeline.learn_labels(_labels(batches[offset - 2]) if offset >= 2 else [])
        return scores

    reference = _pipeline(tmp_path / "ref")
    expected = feed(reference, 0, 12)

    first = _pipeline(tmp_path)
    feed(first, 0, 8, snapshot_at=5)   # snapshot after batch 5; the worker dies after batch 7
    first.wait_snapshots()  # written by a forked child: the worker went on to batch 7
    manifest = first.snapshots.manifests("transactions-model")[-1]
    assert manifest["offsets"] == {"transactions:0": 5} and manifest["labels"] > 0

    restored = _pipeline(tmp_path)
    assert restored.learned_offset("transactions", 0) == 5
    # batches 6 and 7 are replayed: already in the outputs, learned into the model again
    # (with their labels, which arrive again as the labels topic is replayed from its own
    # committed offset: here the labels learned after the snapshot, those of batch 3 first)
    restored.learn_labels(_labels(batches[3]))
    for offset in (6, 7):
        restored.relearn("transactions", 0, batches[offset], offset)
        restored.learn_labels(_labels(batches[offset - 2]))
    assert feed(restored, 8, 12) == expected[800:]


def test_an_incompatible_fraud_snapshot_starts_the_worker_cold(tmp_path, caplog):
    store = SnapshotStore(tmp_path / "models")
    store.save("transactions-model", {}, model="TransactionScorer",
               state_version=STATE_VERSION + 1, feature_schema="x", offsets={"transactions:0": 9})
    pipeline = _pipeline(tmp_path)
    assert pipeline.transactions.n_labels == 0
    assert pipeline.learned_offset("transactions", 0) == -1
    assert "starts cold" in caplog.text and "Delete" in caplog.text
