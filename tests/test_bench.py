"""``riskstream bench`` runs end to end on the embedded broker and reports what issue 8 asks.

The figures themselves are never asserted (machines are noisy); the test checks that every
phase ran on real events and that the JSON holds the documented keys.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from pipelines.bench import _shift, offer


def test_shift_moves_an_iso_event_time_too() -> None:
    value = orjson.dumps({"event_id": "t-1", "event_time": "2026-11-24T10:00:00Z", "amount": 5.0})
    [(_, _, moved, t)] = _shift([("transactions", b"k", value, 1_795_514_400_000)], 250)
    assert t == 1_795_514_400_250
    assert orjson.loads(moved) == {"event_id": "t-1", "event_time": 1_795_514_400_250,
                                   "amount": 5.0}
    [(_, _, same, _)] = _shift([("transactions", b"k", b"{not json", 1)], 250)
    assert same == b"{not json"


def test_shift_moves_only_the_event_time() -> None:
    value = orjson.dumps({"event_id": "l-1", "event_time": 1_790_000_000_123,
                          "labelled_event_time": 1_790_000_000_123, "amount": 5.0})
    [(topic, key, moved, t)] = _shift([("labels", b"k", value, 1_790_000_000_123)], 1_000)
    assert (topic, key, t) == ("labels", b"k", 1_790_000_001_123)
    assert orjson.loads(moved) == {"event_id": "l-1", "event_time": 1_790_000_001_123,
                                   "labelled_event_time": 1_790_000_000_123, "amount": 5.0}


def test_the_load_is_sent_on_its_moved_times_and_never_early() -> None:
    """Each message goes out when the clock reaches its event time moved to the start, with
    that time in its payload; the lag is measured against the moved time."""
    load = [("transactions", b"k%d" % i, orjson.dumps({"event_id": f"t-{i}", "event_time": t}),
             t) for i, t in enumerate((5_000, 5_000, 5_250, 7_000))]
    now = [1_000.0]  # seconds
    sent: list[tuple[float, str, bytes, int]] = []

    def sleep(s: float) -> None:
        now[0] += s

    def send(topic: str, key: bytes, value: bytes) -> None:
        sent.append((now[0] * 1000, topic, key, orjson.loads(value)["event_time"]))
        now[0] += 0.0005  # sending takes 0.5 ms

    lag = offer(load, 1_000_100, send, clock=lambda: now[0], sleep=sleep)
    assert [(key, t) for _, _, key, t in sent] == [
        (b"k0", 1_000_100), (b"k1", 1_000_100), (b"k2", 1_000_350), (b"k3", 1_002_100)]
    assert all(at >= t - 1 for at, _, _, t in sent)  # never more than 1 ms early
    assert lag == pytest.approx([0.5, 1.0, 0.5, 0.5])
    assert offer([], 0, send) == []


def test_moving_the_load_does_not_delay_its_start() -> None:
    """Moving a message takes time (~270 ms for a bench's 150,000): done as each is sent, the
    load starts on time; done for all before the first (as the bench did), the first ones
    went out late, together."""
    now = [1_000.0]  # seconds

    class SlowToMove(list):  # each message read for moving takes 5 ms of the clock
        def __iter__(self):
            for message in super().__iter__():
                now[0] += 0.005
                yield message

    # 30 messages 10 ms apart: moving them all takes 150 ms, the start is 100 ms ahead
    load = SlowToMove(("transactions", b"k", b'{"event_time":%d}' % t, t)
                      for t in range(0, 300, 10))

    def sleep(s: float) -> None:
        now[0] += s

    lag = offer(load, 1_000_100, lambda *_: None, clock=lambda: now[0], sleep=sleep)
    assert len(lag) == 30
    assert max(lag) < 1.0  # none late: each moved in the 10 ms before it is due


@pytest.mark.integration
def test_bench_runs_every_phase_and_writes_the_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKSTREAM_")}
    run = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "bench", "--events", "4000",
         "--load-seconds", "2", "--load-eps", "400", "--json", str(out)],
        cwd=tmp_path, env={**env, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(out.read_text())
    for key in ("ceiling_eps", "faust_count_eps", "pipeline_eps", "produce_eps", "scoring_eps",
                "ratio_pipeline_to_faust", "ratio_pipeline_to_ceiling",
                "ratio_pipeline_to_scoring"):
        assert r[key] > 0, key
    assert r["cpu_s_per_1000_events"] >= 0  # a 4,000-event backlog may pass between two reads
    by_process = r["cpu_s_per_1000_by_process"]
    assert set(by_process) == {"worker", "gateway", "sink", "broker"}  # embedded: Tansu too
    assert r["cpu_s_per_1000_events"] == pytest.approx(
        by_process["worker"] + by_process["gateway"] + by_process["sink"])
    assert r["events"] == 4000 and r["bootstrap"] == "embedded"
    assert r["partitions"] == 2 and "embedded broker, 2 partitions per topic" in run.stdout
    # which build of Python it measured: figures from two builds are not comparable
    base = os.path.realpath(sys._base_executable)  # the interpreter, not the venv's link
    assert r["python"]["executable"] == base
    assert f"Python {r['python']['version']} ({base})" in run.stdout
    # Events offered at load reached the scored outputs and were timed.
    assert r["latency_ms"]["n"] > 0
    assert {"p50", "p95", "p99"} <= set(r["latency_ms"])
    assert r["load_send_lag_ms"]["n"] == 800
    assert 0 < r["latency_ms"]["n"] <= r["load_offered"] <= 800
    # Where the time went: each event is forwarded, then scored, then read, so each stage's
    # percentiles are at most the next one's.
    stages = r["latency_stages_ms"]
    assert stages["worker_produced"]["n"] == r["latency_ms"]["n"]
    assert stages["gateway_produced"]["n"] >= r["latency_ms"]["n"]
    for q in ("p50", "p99"):
        assert stages["gateway_produced"][q] <= stages["worker_produced"][q] <= r["latency_ms"][q]
    # the same load again on a fresh embedded broker, with a new worker: measured too
    fresh = r["fresh_broker"]
    assert 0 < fresh["latency_ms"]["n"] <= r["load_offered"]
    assert fresh["latency_stages_ms"]["worker_produced"]["n"] == fresh["latency_ms"]["n"]
    assert fresh["latency_to_lake_ms"]["n"] > 0
    assert "on a fresh embedded broker" in run.stdout
    # CPU while the load was offered, per process, this one (the load and its reader) too
    for cpu in (r["load_cpu_pct"], fresh["load_cpu_pct"]):
        assert set(cpu) == {"worker", "gateway", "sink", "broker", "bench"}
        assert cpu["worker"] > 0 and cpu["bench"] > 0
    assert run.stdout.count("CPU while the load was offered, % of a core: worker") == 2
    assert set(r["rss_mb"]) == {"worker", "gateway", "sink"}
    assert all(mb > 0 for mb in r["rss_mb"].values())
    assert "(4)/(3)" in run.stdout and "latency at 400 events/s" in run.stdout
    assert "(4)/(5)" in run.stdout
    # The Faust count-only agent keeps its data directory out of the cwd.
    assert not list(tmp_path.glob("bench-count-*"))


def test_the_scoring_bench_scores_every_valid_event_of_the_benchs_messages() -> None:
    from pipelines.bench import generate
    from pipelines.bench_scoring import main
    from pipelines.topics import LABELS

    r = main(3_000)
    # every scored-stream message but the ~1 % malformed ones, duplicates included (the
    # gateway's dedup is not part of the scoring path)
    scored_inputs = sum(1 for topic, *_ in generate(3_000) if topic != LABELS)
    assert 0.95 * scored_inputs <= r["events"] <= scored_inputs
    assert r["outputs"] >= r["events"] and r["scoring_eps"] > 0


def test_the_state_bench_reports_memory_and_the_snapshot_pause() -> None:
    from pipelines.bench_state import main

    r = main(2_000, 6)
    assert (r["cards"], r["series"]) == (2_000, 6)
    assert r["cards_mb"] >= 0 and r["peak_rss_mb"] >= r["rss_mb"] > 0
    # the fork and the in-worker build were both timed (the figures are the bench's to print)
    assert r["snapshot_fork_pause_ms"] > 0 and r["snapshot_build_s"] > 0


def _run(eps: float, p99: float, fresh_p99: float | None = None) -> dict:
    """The parts of one run's result that ``--repeat`` summarises."""
    run = {"events": 1000, "ceiling_eps": 10 * eps, "faust_count_eps": eps / 2,
           "pipeline_eps": eps, "ratio_pipeline_to_faust": 2.0,
           "latency_ms": {"p50": p99 / 2, "p95": p99 * 0.9, "p99": p99, "n": 10},
           "rss_mb": {"worker": 400.0, "gateway": 150.0, "sink": 300.0}}
    if fresh_p99 is not None:
        run["fresh_broker"] = {"latency_ms": {"p99": fresh_p99}}
    return run


def test_repeated_runs_are_summarised_by_their_medians_and_ranges() -> None:
    from pipelines.bench import summarise, summary_report

    runs = [_run(20_000, 300.0, 200.0), _run(25_000, 250.0), _run(23_000, 280.0, 220.0),
            _run(21_000, float("nan"), 210.0)]  # a latency phase that timed nothing
    s = summarise(runs)
    assert s["pipeline_eps"] == {"median": 22_000, "min": 20_000, "max": 25_000, "n": 4}
    assert s["latency_ms.p99"] == {"median": 280.0, "min": 250.0, "max": 300.0, "n": 3}
    # the fresh-broker latency of the runs that measured it (embedded broker only)
    assert s["fresh_broker.latency_ms.p99"]["median"] == 210.0
    assert s["fresh_broker.latency_ms.p99"]["n"] == 3
    assert "scoring_eps" not in s  # in no run: not summarised
    text = summary_report(s, 4)
    assert "medians of 4 runs" in text
    assert "22,000" in text and "(20,000 - 25,000)" in text


def test_repeat_runs_the_bench_again_and_writes_the_medians_with_every_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from pipelines import bench
    from pipelines.settings import Settings

    results = iter([_run(20_000, 300.0, 200.0), _run(25_000, 250.0, 190.0),
                    _run(23_000, 280.0, 220.0)])
    calls = []

    def one_run(settings, **kwargs):  # the measurement itself is the end-to-end test's
        calls.append(kwargs)
        return next(results)

    monkeypatch.setattr(bench, "run_bench", one_run)
    monkeypatch.delenv("RISKSTREAM_KAFKA_BOOTSTRAP", raising=False)
    out = tmp_path / "bench.json"
    bench.run_benches(Settings(), repeat=3, json_out=out, events=1000, load_s=2.0)
    assert len(calls) == 3 and all(c["json_out"] is None and c["events"] == 1000 for c in calls)
    r = json.loads(out.read_text())
    assert r["repeat"] == 3 and len(r["runs"]) == 3
    # the keys the issue asks for hold the medians
    assert r["pipeline_eps"] == 23_000 and r["faust_count_eps"] == 11_500
    assert r["ceiling_eps"] == 230_000
    assert r["latency_ms"] == {"p50": 140.0, "p95": 252.0, "p99": 280.0}
    assert r["rss_mb"] == {"worker": 400.0, "gateway": 150.0, "sink": 300.0}
    assert r["summary"]["fresh_broker.latency_ms.p99"]["median"] == 200.0
    assert "medians of 3 runs" in capsys.readouterr().out


def test_repeat_is_refused_where_runs_would_share_topics(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.bench import run_benches
    from pipelines.errors import ConfigError
    from pipelines.settings import Settings

    monkeypatch.setenv("RISKSTREAM_KAFKA_BOOTSTRAP", "kafka.example:9092")
    with pytest.raises(ConfigError, match="topics of its own"):
        run_benches(Settings(), repeat=2, json_out=None, events=1000)
    with pytest.raises(ConfigError, match=">= 1"):
        run_benches(Settings(), repeat=0, json_out=None, events=1000)
