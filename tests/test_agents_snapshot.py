"""Model snapshots: versioned files with a manifest; a restored worker scores as if it never
stopped; an incompatible snapshot is refused with instructions."""

from __future__ import annotations

import logging
import os
import random
import time

import pytest

from agents.aggregate import WindowAggregator
from agents.snapshot import (
    KEEP,
    ROLES_FILE,
    ForkedWriter,
    NothingToPromote,
    SnapshotIncompatible,
    SnapshotStore,
)
from pipelines.app import Pipeline
from pipelines.settings import ModelSettings, Settings
from pipelines.topics import SYSTEM_METRICS

T0 = 1_790_000_000_000


class CollectingOutputs:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def send(self, topic: str, key: str | None, record: dict) -> None:
        self.sent.append((topic, record))

    def flush(self) -> None:
        pass


def _settings(tmp_path) -> Settings:
    settings = Settings()
    settings.__dict__["model"] = ModelSettings(snapshot_dir=tmp_path / "models",
                                               snapshot_interval_s=3600)
    return settings


def _metrics(start: int, n: int, seed: int = 3) -> list[dict]:
    rng = random.Random(seed + start)
    return [{"event_id": f"m{i}", "event_time": T0 + i * 10_000, "host": "web-1",
             "service": "api", "metric": "cpu", "value": 40 + 10 * rng.random(), "stream": SYSTEM_METRICS}
            for i in range(start, start + n)]


def test_store_round_trip_prunes_and_refuses_incompatible(tmp_path):
    store = SnapshotStore(tmp_path)
    for i in range(KEEP + 2):
        store.save("m-p0", {"i": i}, model="M", state_version=1, feature_schema="f",
                   offsets={"s:0": i})
    assert len(store.manifests("m-p0")) == KEEP
    snap = store.load("m-p0", model="M", state_version=1, feature_schema="f")
    assert snap.state == {"i": KEEP + 1} and snap.manifest["offsets"] == {"s:0": KEEP + 1}
    assert snap.manifest["libraries"]["river"]
    assert store.load("other", model="M", state_version=1, feature_schema="f") is None
    with pytest.raises(SnapshotIncompatible, match="state_version is 1, this version needs 2.*Delete"):
        store.load("m-p0", model="M", state_version=2, feature_schema="f")


def test_a_restored_worker_scores_like_one_that_never_stopped(tmp_path):
    first = Pipeline(_settings(tmp_path), CollectingOutputs())
    agg = WindowAggregator(SYSTEM_METRICS)
    history, after = _metrics(0, 400), _metrics(400, 60)
    first.score_batch(SYSTEM_METRICS, [dict(e) for e in history], agg, partition=2)
    first.maybe_snapshot(SYSTEM_METRICS, 2, offset=41, force=True)
    first.close()

    restored = Pipeline(_settings(tmp_path), CollectingOutputs())
    assert restored.learned_offset(SYSTEM_METRICS, 2) == 41
    for pipeline in (first, restored):
        pipeline.outputs.sent.clear()
        pipeline.score_batch(SYSTEM_METRICS, [dict(e) for e in after],
                             WindowAggregator(SYSTEM_METRICS), partition=2)
    scores = [[r["score"] for t, r in p.outputs.sent if t == "metric-samples"]
              for p in (first, restored)]
    assert len(scores[0]) == 60 and scores[0] == scores[1]
    # A fresh detector would still be warming up: the restored one is not.
    fresh = Pipeline(_settings(tmp_path / "empty"), CollectingOutputs())
    fresh.score_batch(SYSTEM_METRICS, [dict(e) for e in after], WindowAggregator(SYSTEM_METRICS),
                      partition=2)
    assert fresh.learned_offset(SYSTEM_METRICS, 2) == -1


def test_a_silent_series_raises_its_own_anomaly(tmp_path):
    pipeline = Pipeline(_settings(tmp_path), CollectingOutputs())
    agg = WindowAggregator(SYSTEM_METRICS)
    pipeline.score_batch(SYSTEM_METRICS, _metrics(0, 300), agg, partition=0)
    # web-1/cpu stops; another series of the partition moves event time on by an hour
    other = [{**e, "host": "web-2", "event_time": e["event_time"] + 3_600_000,
              "event_id": "x" + e["event_id"]} for e in _metrics(300, 20)]
    pipeline.score_batch(SYSTEM_METRICS, other, agg, partition=0)
    silent = [r for t, r in pipeline.outputs.sent
              if t == "metric-anomalies" and r["reason"] == "silent"]
    assert [(r["host"], r["metric"]) for r in silent] == [("web-1", "cpu")]


def test_roles_default_then_promote_swaps_them_with_a_timestamped_history(tmp_path):
    store = SnapshotStore(tmp_path)
    defaults = {"champion": "transactions-model", "challenger": "transactions-challenger"}
    assert store.roles() == {} and store.slots("transactions") == defaults
    with pytest.raises(NothingToPromote, match="no snapshot"):
        store.promote("transactions")
    assert not (tmp_path / ROLES_FILE).exists()
    for name in defaults.values():
        store.save(name, {"name": name}, model="M", state_version=1, feature_schema="f",
                   offsets={"transactions:0": 5})
    entry = store.promote("transactions", now_ms=T0)
    assert store.slots("transactions") == {"champion": "transactions-challenger",
                                           "challenger": "transactions-model"}
    assert entry["promoted_ms"] == T0 and entry["history"] == [
        {"at_ms": T0, "champion": "transactions-challenger", "challenger": "transactions-model"}]
    # a second promote swaps back; other streams keep their defaults
    store.promote("transactions", now_ms=T0 + 1)
    assert store.slots("transactions") == defaults
    assert [h["at_ms"] for h in store.roles()["transactions"]["history"]] == [T0, T0 + 1]
    assert store.slots("applications")["champion"] == "applications-model"
    # written by rename: no temporary file left; roles.json is not a snapshot name
    assert not list(tmp_path.glob("*.tmp")) and ROLES_FILE not in store.names()
    snap = store.load(store.slots("transactions")["champion"], model="M", state_version=1,
                      feature_schema="f")
    assert snap.state == {"name": "transactions-model"}


# -- the forked writer ----------------------------------------------------------------------


def _wait_for(path, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_a_forked_writer_writes_the_state_as_it_was_when_submitted(tmp_path):
    """The job runs in another process, on the state at the fork: the caller goes on changing
    it at once (the worker scores on) without changing what is written."""
    state = {"n": 1}
    out = tmp_path / "out"
    writer = ForkedWriter()
    assert writer.submit("m", lambda: out.write_text(f"{os.getpid()} {state['n']}"))
    state["n"] = 2  # the next batch, scored while the child writes
    writer.wait()
    pid, n = out.read_text().split()
    assert int(pid) != os.getpid() and n == "1"
    assert writer.writing == set()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to choose from")
def test_a_forked_writer_runs_off_a_pinned_workers_core(tmp_path, monkeypatch):
    """A worker pinned to its core (``placement.pin``) leaves where its helpers run in the
    environment; the snapshot writer it forks runs there, not on the worker's core."""
    from pipelines import placement

    helper_cpus = sorted(os.sched_getaffinity(0))[:1]
    monkeypatch.setenv(placement.HELPER_ENV, placement.format_cpus(frozenset(helper_cpus)))
    out = tmp_path / "out"
    writer = ForkedWriter()
    assert writer.submit("m", lambda: out.write_text(str(sorted(os.sched_getaffinity(0)))))
    writer.wait()
    assert out.read_text() == str(helper_cpus)


def test_a_forked_writer_skips_a_key_still_being_written_and_logs_a_failed_one(tmp_path, caplog):
    go = tmp_path / "go"
    writer = ForkedWriter()

    def slow() -> None:
        _wait_for(go)

    assert writer.submit("m", slow)
    with caplog.at_level(logging.WARNING, logger="agents.snapshot"):
        assert not writer.submit("m", slow)  # the previous one still writes: skipped, logged
        assert "still being written" in caplog.text
        assert writer.submit("other", lambda: None)  # other keys are not held up
        go.touch()
        writer.wait()
        assert writer.submit("m", lambda: None)
        writer.wait()

        def broken() -> None:
            raise OSError("disk full")

        assert writer.submit("m", broken)
        writer.wait()  # the caller never sees the exception: the last snapshot stands
    assert "its writer process exited with 1" in caplog.text
    assert writer.writing == set()


def test_a_forced_snapshot_waits_for_the_one_being_written(tmp_path):
    go, done = tmp_path / "go", tmp_path / "done"
    writer = ForkedWriter()
    assert writer.submit("m", lambda: (_wait_for(go), done.write_text("first")))
    go.touch()
    assert writer.submit("m", lambda: done.write_text(done.read_text() + " second"), wait=True)
    writer.wait()
    assert done.read_text() == "first second"
