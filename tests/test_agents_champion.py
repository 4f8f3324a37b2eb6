"""Champion and challenger: the champion decides, the challenger scores in shadow (or decides
a deterministic share), both learn every label and are measured on it; both roles snapshot
to their slots and come back."""

from __future__ import annotations

import logging

import pytest
from test_agents_fraud_snapshot import delayed_labels, transactions

from agents.champion import (
    CHALLENGER_TAG,
    ChallengerParamsInvalid,
    ChampionChallenger,
    share_bucket,
)
from agents.fraud import TransactionScorer
from agents.snapshot import SnapshotStore
from pipelines.settings import ModelSettings

# The challenger learns 3x faster and leaves the cold start sooner: it scores differently.
PARAMS = {"learning_rate": 0.003, "min_labels": 30}


def _scorer(**params) -> TransactionScorer:
    return TransactionScorer(**{"min_labels": 50, "label_ttl_s": 86_400, **params})


def feed(models, events: list[dict], labels: dict[int, list[dict]], start: int = 0,
         stop: int | None = None) -> list[dict]:
    """Score events[start:stop] as output records; labels[i] arrive after event i."""
    out = []
    for i in range(start, len(events) if stop is None else stop):
        out.append(models.score_record(dict(events[i]), 0))
        for e in labels.get(i, ()):
            models.learn_label(e["event_id"], int(e["fraud"]), events[i]["event_time"])
    return out


def _settings(**model) -> ModelSettings:
    return ModelSettings(**{"label_ttl_s": 86_400, **model})


def _save(store: SnapshotStore, models: ChampionChallenger, offset: int) -> None:
    for name, state, kwargs in models.snapshot_jobs({"transactions:0": offset}):
        store.save(name, state, **kwargs)


# ----------------------------------------------------------------------------- scoring

def test_shadow_scoring_leaves_the_champions_output_unchanged():
    events = transactions(2500)
    labels = delayed_labels(events, delay=150)
    alone = feed(_scorer(), events, labels)
    models = ChampionChallenger(_scorer(), _scorer(**PARAMS))
    with_shadow = feed(models, events, labels)
    assert with_shadow == alone                        # records, field by field
    # the challenger really scored every event, and differently
    shadow = feed(_scorer(**PARAMS), events, labels)
    assert [r["score"] for r in shadow] != [r["score"] for r in alone]
    assert models.challenger.n_labels == models.champion.n_labels > 50
    assert sum(models.disagreements.values()) > 0 and not models.decided
    assert all(r["model_version"] == "txn-hst-lr-v1" for r in with_shadow)


def test_both_roles_are_measured_on_the_labels_with_their_own_scores():
    events = transactions(2500)
    labels = delayed_labels(events, delay=150)
    models = ChampionChallenger(_scorer(), _scorer(**PARAMS))
    feed(models, events, labels)
    champion_alone, challenger_alone = _scorer(), _scorer(**PARAMS)
    feed(champion_alone, events, labels)
    feed(challenger_alone, events, labels)
    roles = models.roles()
    assert set(roles) == {"champion", "challenger"}
    n_labelled = sum(len(v) for v in labels.values())
    champion, challenger = (roles[r].quality.summary() for r in ("champion", "challenger"))
    # every label (and every expiry as genuine) reached both roles' windows
    assert champion["n"] == challenger["n"] >= n_labelled
    assert champion["positives"] == challenger["positives"] > 0
    # each window holds its own role's scores: the same as the model scoring alone
    assert champion == champion_alone.quality.summary()
    assert challenger == challenger_alone.quality.summary()
    assert champion["roc_auc"] != challenger["roc_auc"]
    assert models.quality is models.champion.quality   # what the worker reads as champion


def test_share_routing_is_deterministic_and_close_to_the_share():
    events = transactions(3000)
    labels = delayed_labels(events, delay=150)
    runs = []
    for _ in range(2):
        models = ChampionChallenger(_scorer(), _scorer(**PARAMS), share=0.2)
        runs.append(feed(models, events, labels))
    assert runs[0] == runs[1]                          # same ids, same role, same records
    by_challenger = [r for r in runs[0] if r["model_version"].endswith(CHALLENGER_TAG)]
    assert abs(len(by_challenger) / len(events) - 0.2) < 0.03
    assert models.decided == {"challenger": len(by_challenger),
                              "champion": len(events) - len(by_challenger)}
    # the role follows the event id alone
    assert {r["event_id"] for r in by_challenger} == {
        e["event_id"] for e in events if share_bucket(e["event_id"]) < 0.2}
    # each record is exactly what its role scoring alone gives (both score every event)
    champion = feed(_scorer(), events, labels)
    challenger = feed(_scorer(**PARAMS), events, labels)
    for record, c, x in zip(runs[0], champion, challenger):
        if record["model_version"].endswith(CHALLENGER_TAG):
            assert record == {**x, "model_version": x["model_version"] + CHALLENGER_TAG}
        else:
            assert record == c


@pytest.mark.parametrize("share", [0.0, 0.2])
def test_a_batch_is_decided_as_its_events_one_at_a_time(share):
    """``score_records`` (each role scoring the batch at once) gives the records, the
    disagreements and the routing counts of ``score_record`` event by event; an event one
    role raises on is that error, the others go on."""
    events = transactions(2000)
    labels = delayed_labels(events, delay=150)
    one = ChampionChallenger(_scorer(), _scorer(**PARAMS), share=share)
    batched = ChampionChallenger(_scorer(), _scorer(**PARAMS), share=share)
    bad = {events[700]["event_id"]: batched.champion, events[1300]["event_id"]: batched.challenger}
    for role in (batched.champion, batched.challenger):
        def compute(event: dict, role=role, compute=role._compute) -> list[float]:
            if bad.get(event["event_id"]) is role:
                raise ValueError(f"{event['event_id']}: features")
            return compute(event)
        role._compute = compute
    got: list = []
    for start in range(0, len(events), 400):  # labels between batches, as the worker learns
        batch = [dict(e) for e in events[start:start + 400]]
        got += batched.score_records(batch, 0)
        for i in range(start, start + 400):
            for e in labels.get(i, ()):
                batched.learn_label(e["event_id"], int(e["fraud"]), events[i]["event_time"])
    errors = {i: r for i, r in enumerate(got) if isinstance(r, Exception)}
    assert sorted(errors) == [700, 1300]
    assert "features" in str(errors[700]) and "features" in str(errors[1300])
    # event by event, with the same labels at the same places, skipping the two failed
    expected = []
    for start in range(0, len(events), 400):
        for i in range(start, start + 400):
            if i in errors:
                expected.append(errors[i])
                # what the batch did for them: the other role scored the event
                other = one.challenger if i == 700 else one.champion
                other.score_one(dict(events[i]))
            else:
                expected.append(one.score_record(dict(events[i]), 0))
        for i in range(start, start + 400):
            for e in labels.get(i, ()):
                one.learn_label(e["event_id"], int(e["fraud"]), events[i]["event_time"])
    assert got == expected
    assert one.disagreements == batched.disagreements and sum(one.disagreements.values()) > 0
    assert one.decided == batched.decided
    assert (batched.decided["challenger"] > 0) == (share > 0)


def test_the_share_bounds_and_the_hash():
    ids = [f"e{i}" for i in range(20_000)]
    buckets = [share_bucket(i) for i in ids]
    assert all(0.0 <= b < 1.0 for b in buckets)
    assert abs(sum(b < 0.5 for b in buckets) / len(ids) - 0.5) < 0.02
    event = transactions(1)[0]
    for share, tag in ((1.0, True), (0.0, False)):
        record = ChampionChallenger(_scorer(), _scorer(), share=share).score_record(event, 0)
        assert record["model_version"].endswith(CHALLENGER_TAG) is tag
    with pytest.raises(ValueError, match="share"):
        ChampionChallenger(_scorer(), share=1.5)


def test_no_challenger_is_the_champion_itself():
    champion = _scorer()
    models = ChampionChallenger(champion)
    # the champion's own bound methods: no wrapper call per event
    assert models.score_record == champion.score_record
    assert models.score_records == champion.score_records
    assert models.score_one == champion.score_one
    assert models.learn_label == champion.learn_label
    assert list(models.roles()) == ["champion"]
    from_settings = ChampionChallenger.from_settings("transactions", _settings())
    assert from_settings.challenger is None


def test_challenger_settings_and_invalid_params():
    models = ChampionChallenger.from_settings("transactions", _settings(
        challenger_enabled=True, challenger_share=0.1, challenger_params=PARAMS))
    assert models.share == 0.1
    assert models.challenger.learning_rate == 0.003 and models.challenger.min_labels == 30
    assert models.challenger.seed == models.champion.seed + 1       # seed differs by default
    assert models.challenger.label_ttl_s == models.champion.label_ttl_s == 86_400
    # the cold start's settings reach both roles; a challenger may change them
    models = ChampionChallenger.from_settings("transactions", _settings(
        replay=0, prior_strength=0.5, challenger_enabled=True,
        challenger_params={"replay": 1}))
    assert models.champion.replay == 0 and models.champion.prior_strength == 0.5
    assert models.challenger.replay == 1 and models.challenger.prior_strength == 0.5
    with pytest.raises(ChallengerParamsInvalid, match="label_ttl_s cannot differ.*allowed: "):
        ChampionChallenger.from_settings("transactions", _settings(
            challenger_enabled=True, challenger_params={"label_ttl_s": 5}))


# --------------------------------------------------------------------------- snapshots

def test_both_roles_snapshot_and_restore_as_never_stopped(tmp_path):
    events = transactions(3000)
    labels = delayed_labels(events, delay=150)
    settings = _settings(challenger_enabled=True, challenger_params=PARAMS)
    reference = ChampionChallenger.from_settings("transactions", settings)
    feed(reference, events, labels)

    first = ChampionChallenger.from_settings("transactions", settings)
    feed(first, events, labels, 0, 1700)
    store = SnapshotStore(tmp_path)
    _save(store, first, 1699)
    champion, challenger = (store.manifests(s)[-1] for s in ("transactions-model",
                                                            "transactions-challenger"))
    assert champion["role"] == "champion" and champion["params"] == {}
    assert challenger["role"] == "challenger" and challenger["params"]["learning_rate"] == 0.003
    del first

    restored = ChampionChallenger.from_settings("transactions", settings)
    assert restored.restore(store) == {"transactions:0": 1699}
    feed(restored, events, labels, 1700)
    for role in ("champion", "challenger"):
        assert restored.roles()[role].to_state() == reference.roles()[role].to_state()


def test_a_new_challenger_starts_as_a_copy_of_the_champion_or_cold(tmp_path, caplog):
    events = transactions(1500)
    labels = delayed_labels(events, delay=150)
    store = SnapshotStore(tmp_path)
    champion_only = ChampionChallenger.from_settings("transactions", _settings())
    feed(champion_only, events, labels, 0, 1000)
    _save(store, champion_only, 999)                # no challenger slot yet

    copy = ChampionChallenger.from_settings("transactions", _settings(
        challenger_enabled=True, challenger_params=PARAMS))
    copy.restore(store)
    assert copy.challenger.n_labels == copy.champion.n_labels > 0
    # the same state: the same record for the next event (the parameters act from now on)
    assert copy.challenger.score_record(dict(events[1000]), 0) == \
        copy.champion.score_record(dict(events[1000]), 0)

    cold = ChampionChallenger.from_settings("transactions", _settings(
        challenger_enabled=True, challenger_params=PARAMS, challenger_start="cold"))
    cold.restore(store)
    assert cold.champion.n_labels > 0 and cold.challenger.n_labels == 0

    with caplog.at_level(logging.WARNING, logger="agents.champion"):
        ChampionChallenger.from_settings("transactions", _settings(
            challenger_enabled=True)).restore(store)
    assert "scores like it" in caplog.text


def test_an_incompatible_challenger_snapshot_starts_that_role_cold(tmp_path, caplog):
    store = SnapshotStore(tmp_path)
    store.save("transactions-challenger", {}, model="TransactionScorer", state_version=999,
               feature_schema="x", offsets={"transactions:0": 9})
    models = ChampionChallenger.from_settings("transactions", _settings(
        challenger_enabled=True, challenger_start="cold"))
    assert models.restore(store) == {}
    assert models.challenger is not None and models.challenger.n_labels == 0
    assert "transactions-challenger (challenger): not restored" in caplog.text
    assert "Delete" in caplog.text


# ----------------------------------------------------------- the worker, once integrated

def test_the_worker_publishes_quality_per_role_and_snapshots_both(tmp_path):
    from test_agents_fraud_snapshot import _batch, _labels, _pipeline

    pipeline = _pipeline(tmp_path, challenger_enabled=True, challenger_params=PARAMS,
                         quality_interval_s=3600)
    if not isinstance(pipeline.transactions, ChampionChallenger):
        pytest.skip("pipelines/app.py does not use agents/champion.py yet "
                    "(the integration patch is not applied)")
    events = transactions(600)
    alone = feed(_scorer(label_ttl_s=30 * 86_400, quality_window=5_000), events, {}, 0, 600)
    assert _batch(pipeline, events) == [r["score"] for r in alone]   # the champion decides
    pipeline.learn_labels(_labels(events[:500]))
    records = pipeline.maybe_publish_quality(force=True)
    assert sorted((r["stream"], r["role"], r["n"]) for r in records) == [
        ("transactions", "challenger", 500), ("transactions", "champion", 500)]
    pipeline.maybe_snapshot("transactions", 0, 7, force=True)
    pipeline.close()
    store = pipeline.snapshots
    assert store.manifests("transactions-challenger")[-1]["offsets"] == {"transactions:0": 7}
    store.promote("transactions")
    restarted = _pipeline(tmp_path, challenger_enabled=True, challenger_params=PARAMS)
    assert restarted.transactions.champion.to_state() == pipeline.transactions.challenger.to_state()
    assert restarted.learned_offset("transactions", 0) == 7
