"""`riskstream models list|rollback` as an operator runs it."""

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
