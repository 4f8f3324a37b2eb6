"""What the worker does when its own code raises (pipelines/app.py): one event or label it
cannot handle goes to dead-letter and the batch goes on; a fault outside one event stops the
worker (tests/test_worker_checkpoint.py runs that one on a real worker)."""

from __future__ import annotations

import orjson
import pytest
from factories import make_transaction
from prometheus_client import REGISTRY
from test_agents_snapshot import CollectingOutputs

from agents.aggregate import WindowAggregator
from pipelines.app import Pipeline
from pipelines.settings import ModelSettings, Settings
from pipelines.topics import DEAD_LETTER, LABELS, SCORED_TRANSACTIONS, TRANSACTIONS, VALIDATED

T0 = 1_767_225_600_000


@pytest.fixture
def pipeline(tmp_path) -> Pipeline:
    settings = Settings()
    settings.__dict__["model"] = ModelSettings(snapshot_dir=tmp_path / "models")
    return Pipeline(settings, CollectingOutputs())


def sent(pipeline: Pipeline, topic: str) -> list[dict]:
    return [record for t, record in pipeline.outputs.sent if t == topic]


def fail_features_of(pipeline: Pipeline, event_ids: set[str] | None) -> None:
    """The transaction champion's features raise for ``event_ids`` (None: for every event),
    as a bug in them would, in whichever path scores the batch."""
    champion = pipeline.transactions.champion
    compute = champion._features.compute

    def compute_but(event: dict) -> list[float]:
        if event_ids is None or event["event_id"] in event_ids:
            raise ValueError("cannot score this one")
        return compute(event)

    champion._compute = compute_but


@pytest.mark.parametrize("n", [5, 40])  # one at a time, and as a batch (_HalfSpace.BATCH_MIN)
def test_an_event_that_cannot_be_scored_goes_to_dead_letter_and_the_batch_goes_on(pipeline, n):
    from agents.fraud import _HalfSpace

    assert (n >= _HalfSpace.BATCH_MIN) == (n == 40)
    events = [{**make_transaction(now_ms=T0 + i, event_id=f"e{i}", card_id=f"card-{i}",
                                  merchant_id="m-1", amount=10.0), "stream": TRANSACTIONS}
              for i in range(n)]
    fail_features_of(pipeline, {"e2"})
    agg = WindowAggregator(TRANSACTIONS)
    pipeline.score_batch(TRANSACTIONS, events, agg, partition=3, offset=41)

    assert [r["event_id"] for r in sent(pipeline, SCORED_TRANSACTIONS)] == \
        [f"e{i}" for i in range(n) if i != 2]
    [dead] = sent(pipeline, DEAD_LETTER)
    assert dead["kind"] == "scoring" and dead["event_id"] == "e2"
    assert dead["key"] == "card-2"  # the event's partition key, as producers keyed it
    assert "ValueError('cannot score this one')" in dead["reason"]
    assert (dead["source_topic"], dead["source_partition"], dead["source_offset"]) == (
        VALIDATED[TRANSACTIONS], 3, 41)
    assert orjson.loads(dead["original"])["event_id"] == "e2"
    # the window counts the scored events, not the one in dead-letter
    [groups] = orjson.loads(agg.json_state())["by_start"].values()
    assert groups["m-1"][0] == n - 1
    assert pipeline.transactions.champion.n_pending == n - 1


def test_a_batch_whose_scoring_fails_as_a_whole_goes_to_dead_letter_event_by_event(pipeline):
    """A fault of the batch's scoring as a whole (not of one event's) sends each event to
    dead-letter with it, as one event's fault would; the worker goes on (until batches fail
    whole in a row: the next test)."""
    events = [{**make_transaction(now_ms=T0 + i, event_id=f"e{i}"), "stream": TRANSACTIONS}
              for i in range(3)]

    def broken(events: list[dict], now: int) -> list:
        raise FloatingPointError("the batch walk")

    pipeline.transactions.score_records = broken
    pipeline.score_batch(TRANSACTIONS, events, WindowAggregator(TRANSACTIONS))

    dead = sent(pipeline, DEAD_LETTER)
    assert [d["event_id"] for d in dead] == ["e0", "e1", "e2"]
    assert all("FloatingPointError('the batch walk')" in d["reason"] for d in dead)
    assert sent(pipeline, SCORED_TRANSACTIONS) == []


def test_a_stream_whose_batches_fail_whole_stops_the_worker_and_one_poison_event_does_not(
        pipeline):
    """Three batches of a stream in a row with no event scored: the code, not the events, so
    ``score_batch`` raises (the agent stops the worker). A batch with one event scored starts
    the count again, and so does another stream's."""
    from pipelines.app import UNSCORED_BATCHES_TO_STOP

    def batch(i: int) -> list[dict]:
        return [{**make_transaction(now_ms=T0 + i, event_id=f"e{i}"), "stream": TRANSACTIONS}]

    agg = WindowAggregator(TRANSACTIONS)
    fail_features_of(pipeline, None)
    for i in range(UNSCORED_BATCHES_TO_STOP - 1):
        pipeline.score_batch(TRANSACTIONS, batch(i), agg)
    fail_features_of(pipeline, set())
    pipeline.score_batch(TRANSACTIONS, batch(10), agg)  # scored: the count starts again
    fail_features_of(pipeline, None)
    for i in range(UNSCORED_BATCHES_TO_STOP - 1):
        pipeline.score_batch(TRANSACTIONS, batch(20 + i), agg)
    with pytest.raises(RuntimeError, match="no event of the last 3 transactions batches"):
        pipeline.score_batch(TRANSACTIONS, batch(30), agg)
    assert len(sent(pipeline, DEAD_LETTER)) == 2 * (UNSCORED_BATCHES_TO_STOP - 1) + 1


def test_a_label_that_cannot_be_learned_goes_to_dead_letter_and_the_others_are_learned(
        pipeline):
    labels = [{"event_id": f"l{i}", "event_time": T0, "target_stream": TRANSACTIONS,
               "target_event_id": f"e{i}", "key": f"card-{i}", "label": 1, "stream": LABELS}
              for i in range(3)]
    learned: list[str] = []

    def learn_but_e1(event_id: str, label: int, event_time: int) -> bool:
        if event_id == "e1":
            raise KeyError("broken")
        learned.append(event_id)
        return True

    pipeline.transactions.learn_label = learn_but_e1
    pipeline.learn_labels(labels, partition=1, offset=7)

    assert learned == ["e0", "e2"]
    [dead] = sent(pipeline, DEAD_LETTER)
    assert (dead["kind"], dead["event_id"], dead["source_topic"], dead["key"]) == (
        "learning", "l1", VALIDATED[LABELS], "card-1")


def test_a_replayed_event_that_cannot_be_relearned_is_skipped_not_a_crash_loop(pipeline,
                                                                                caplog):
    """After a restart the worker replays batches its model snapshot does not cover into the
    models only (``relearn``). An event that raises there went out in the first pass (scored,
    or to dead-letter): skipped and logged, the others learned, nothing sent again. Raising
    would stop the worker at every restart."""
    events = [{**make_transaction(now_ms=T0 + i, event_id=f"e{i}"), "stream": TRANSACTIONS}
              for i in range(4)]
    score = pipeline.transactions.score_one
    learned: list[str] = []

    def score_but_e1(event: dict):
        if event["event_id"] == "e1":
            raise ValueError("cannot score this one")
        learned.append(event["event_id"])
        return score(event)

    pipeline.transactions.score_one = score_but_e1
    def failed() -> float:
        return REGISTRY.get_sample_value("riskstream_relearn_failed_total",
                                         {"stream": TRANSACTIONS}) or 0.0

    before = failed()
    pipeline.relearn(TRANSACTIONS, 2, events, offset=9)

    assert learned == ["e0", "e2", "e3"]
    assert pipeline.learned_offset(TRANSACTIONS, 2) == 9
    assert pipeline.outputs.sent == []
    assert "relearning event e1 failed; skipped" in caplog.text
    assert failed() == before + 1


def test_a_window_closing_for_many_merchants_is_emitted_over_the_next_batches(pipeline):
    """When the watermark passes a window's end, every merchant's window of the partition
    closes in the same batch; the worker sends at most ``AGGREGATES_PER_BATCH`` of them with
    that batch and the rest with the batches after it, each exactly once."""
    from pipelines.app import AGGREGATES_PER_BATCH
    from pipelines.topics import AGGREGATES

    n = 2 * AGGREGATES_PER_BATCH + 100
    base = T0 - T0 % 60_000
    events = [{**make_transaction(now_ms=base + i, event_id=f"e{i}", card_id=f"card-{i}",
                                  merchant_id=f"m-{i}"), "stream": TRANSACTIONS}
              for i in range(n)]
    agg = WindowAggregator(TRANSACTIONS)
    pipeline.score_batch(TRANSACTIONS, events, agg)
    emitted = []
    for k in range(4):  # the next minute, past the grace: the first window closes
        later = {**make_transaction(now_ms=base + 71_000 + k, event_id=f"later-{k}",
                                    merchant_id="m-0"), "stream": TRANSACTIONS}
        pipeline.outputs.sent.clear()
        pipeline.score_batch(TRANSACTIONS, [later], agg)
        emitted.append(sent(pipeline, AGGREGATES))
    assert [len(e) for e in emitted] == [AGGREGATES_PER_BATCH, AGGREGATES_PER_BATCH, 100, 0]
    windows = [w for e in emitted for w in e]
    assert sorted(w["group_key"] for w in windows) == sorted(f"m-{i}" for i in range(n))
    assert {w["window_start"] for w in windows} == {base}
    # a batch larger than that emits as many as it has events (each can open a group window:
    # the closed ones never pile up)
    big = [{**make_transaction(now_ms=base + 150_000 + i, event_id=f"big-{i}",
                               card_id=f"card-{i}", merchant_id=f"m-{i}"), "stream": TRANSACTIONS}
           for i in range(n)]
    pipeline.outputs.sent.clear()
    pipeline.score_batch(TRANSACTIONS, big, agg)  # closes the minute of the four "later"
    assert len(sent(pipeline, AGGREGATES)) == 1
    pipeline.outputs.sent.clear()
    pipeline.score_batch(TRANSACTIONS, [{**e, "event_id": e["event_id"] + "-next",
                                         "event_time": e["event_time"] + 60_000} for e in big],
                         agg)  # closes the n windows of the batch before
    assert len(sent(pipeline, AGGREGATES)) == n
