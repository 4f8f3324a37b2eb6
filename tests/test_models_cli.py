"""`riskstream models list|promote|rollback` as an operator runs it."""

from __future__ import annotations

import orjson
import pytest

from agents.snapshot import SnapshotStore
from pipelines.cli import main
from pipelines.models_cli import NothingToRollBack, rollback


def _save(store: SnapshotStore, i: int) -> None:
    store.save("transactions-model", {"i": i}, model="TransactionScorer", state_version=1,
               feature_schema="f", offsets={"transactions:0": i}, extra={"labels": 10 * i})


def test_rollback_makes_the_previous_snapshot_the_latest(tmp_path, capsys):
    store = SnapshotStore(tmp_path)
    for i in (1, 2, 3):
        _save(store, i)
    assert main(["models", "rollback", "--model", "transactions-model",
                 "--snapshot-dir", str(tmp_path)]) == 0
    assert "#2 is the latest again" in capsys.readouterr().out
    snap = store.load("transactions-model", model="TransactionScorer", state_version=1,
                      feature_schema="f")
    assert snap.state == {"i": 2} and snap.manifest["rolled_back_from"] == 3
    assert snap.manifest["offsets"] == {"transactions:0": 2} and snap.manifest["labels"] == 20
    # a second rollback would go before #2: pruned (KEEP = 3), so it is refused
    with pytest.raises(NothingToRollBack, match="older than #2"):
        rollback(store, "transactions-model")


def test_list_shows_snapshots_and_says_when_no_quality_is_readable(tmp_path, capsys):
    _save(SnapshotStore(tmp_path / "models"), 1)
    assert main(["models", "list", "--snapshot-dir", str(tmp_path / "models"),
                 "--lake", str(tmp_path / "lake"), "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    (m,) = doc["snapshots"]["transactions-model"]
    assert m["seq"] == 1 and m["offsets"] == {"transactions:0": 1}
    assert isinstance(doc["quality"], list)


# ------------------------------------------------------------------ champion and challenger

def _trained_roles(tmp_path):
    """A worker's two roles after 1,500 events and their labels, snapshotted; the store."""
    from test_agents_champion import PARAMS, _save, _settings, feed
    from test_agents_fraud_snapshot import delayed_labels, transactions

    from agents.champion import ChampionChallenger

    events = transactions(1600)
    labels = delayed_labels(events, delay=150)
    models = ChampionChallenger.from_settings("transactions", _settings(
        challenger_enabled=True, challenger_params=PARAMS))
    feed(models, events, labels, 0, 1500)
    store = SnapshotStore(tmp_path)
    _save(store, models, 1499)
    return models, store, events


def test_promote_swaps_roles_and_a_restarted_worker_scores_with_the_new_champion(
        tmp_path, capsys):
    from test_agents_champion import _settings

    from agents.champion import ChampionChallenger

    before, store, events = _trained_roles(tmp_path)
    assert main(["models", "promote", "--stream", "transactions",
                 "--snapshot-dir", str(tmp_path)]) == 0
    assert "champion is now transactions-challenger" in capsys.readouterr().out
    assert store.slots("transactions") == {"champion": "transactions-challenger",
                                           "challenger": "transactions-model"}
    # the worker's start: roles read now; each slot's model comes back with its own
    # parameters (the settings' challenger_params only shape a challenger with no snapshot)
    worker = ChampionChallenger.from_settings("transactions", _settings(
        challenger_enabled=True, challenger_params={"learning_rate": 0.5}))
    assert worker.restore(store) == {"transactions:0": 1499}
    assert worker.champion.to_state() == before.challenger.to_state()
    assert worker.challenger.to_state() == before.champion.to_state()
    assert worker.champion.learning_rate == 0.003 and worker.challenger.learning_rate == 0.001
    # what goes out now is what the former challenger would have scored
    nxt = [dict(e) for e in events[1500:]]
    assert [worker.score_record(e, 0) for e in nxt] == \
        [before.challenger.score_record(dict(e), 0) for e in nxt]
    # its next snapshots go to the slots of the new roles
    (champion_job, challenger_job) = worker.snapshot_jobs({"transactions:0": 1599})
    assert (champion_job[0], champion_job[2]["extra"]["role"]) == (
        "transactions-challenger", "champion")
    assert challenger_job[0] == "transactions-model"
    # a worker without a challenger after the promote: the new champion alone
    alone = ChampionChallenger.from_settings("transactions", _settings())
    alone.restore(store)
    assert alone.challenger is None and alone.champion.learning_rate == 0.003


def test_promote_refuses_a_stream_without_a_challenger_snapshot(tmp_path, capsys):
    _save(SnapshotStore(tmp_path), 1)
    assert main(["models", "promote", "--stream", "transactions",
                 "--snapshot-dir", str(tmp_path)]) == 2
    assert "'transactions-challenger' has no snapshot" in capsys.readouterr().err
    assert SnapshotStore(tmp_path).slots("transactions")["champion"] == "transactions-model"


def test_list_shows_roles_with_the_quality_of_each_and_rollback_by_role(tmp_path, capsys):
    from lake_fixtures import make_record

    from pipelines.topics import MODEL_QUALITY
    from sinks.lake import LakeWriter

    _, store, _ = _trained_roles(tmp_path / "models")
    store.promote("transactions", now_ms=1_790_000_000_000)
    rows = [make_record(MODEL_QUALITY, i, role=role, roc_auc=auc, time_ms=1_790_000_000_000 + i)
            for i, (role, auc) in enumerate([("champion", 0.81), ("challenger", 0.86),
                                             ("champion", 0.82)])]
    with LakeWriter(tmp_path / "lake") as writer:
        writer.write(MODEL_QUALITY, rows, {0: (0, len(rows) - 1)})
    assert main(["models", "list", "--snapshot-dir", str(tmp_path / "models"),
                 "--lake", str(tmp_path / "lake"), "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    txn = doc["roles"]["transactions"]
    assert txn["promoted_ms"] == 1_790_000_000_000
    assert txn["champion"]["snapshot"] == "transactions-challenger"
    assert txn["champion"]["latest"]["params"]["learning_rate"] == 0.003
    assert (txn["champion"]["quality"]["roc_auc"], txn["challenger"]["quality"]["roc_auc"]) \
        == (0.82, 0.86)                                   # the latest row of each role
    assert doc["roles"]["applications"]["champion"]["latest"] is None
    assert main(["models", "list", "--snapshot-dir", str(tmp_path / "models"),
                 "--lake", str(tmp_path / "lake")]) == 0
    text = capsys.readouterr().out
    assert "champion   transactions-challenger" in text and "roc_auc=0.86" in text
    # rollback by role: the slot the champion role names now
    store.save("transactions-challenger", {"i": 2}, model="TransactionScorer",
               state_version=1, feature_schema="f", offsets={})
    assert main(["models", "rollback", "--stream", "transactions",
                 "--snapshot-dir", str(tmp_path / "models")]) == 0
    assert "transactions-challenger: snapshot #1 is the latest again" in capsys.readouterr().out
    assert store.manifests("transactions-challenger")[-1]["params"]["learning_rate"] == 0.003
