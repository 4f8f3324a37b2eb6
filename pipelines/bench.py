"""``riskstream bench``: the pipeline's speed against the raw ceilings, measured in one run.

1. produce N pre-generated mixed events (the simulator's: transactions, applications, metrics,
   labels, ~1 % malformed and ~1 % duplicates);
2. the ceiling: a confluent-kafka batch ``consume()`` loop that only reads them;
3. a Faust agent that only deserialises and counts them (Faust's per-message limit);
4. the full pipeline (worker: validate, dedup, features, score, learn, windows, outputs; sink:
   Parquet) working off the same backlog;
then the latency from event time to scored output and to the lake at a fixed offered load of
half of (4)'s rate, CPU seconds per 1,000 events and peak RSS of each process; and
then the same latency on a fresh embedded broker (``fresh_broker_latency``: the embedded
broker's cost per fetch grows with what it holds, a Kafka cluster's does not); and
5. the scoring path alone, in process (``pipelines/bench_scoring.py``): the same events through
   the worker's ``Pipeline`` without broker or Faust, events per CPU second: the most one
   worker can score, which (4) approaches as the rest of the worker's costs shrink.

Figures are printed and written as JSON, never asserted: machines are noisy, compare the
ratios measured in the same run, and medians of several runs (``--repeat N``: ``run_benches``).
Against a real Kafka (``RISKSTREAM_KAFKA_BOOTSTRAP``) use a cluster or namespace of its own:
the bench writes to the pipeline's topics.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer

from pipelines import interpreter, placement
from pipelines.broker import EmbeddedBroker, ensure_topics, free_port
from pipelines.errors import ConfigError
from pipelines.kafka import producer_config
from pipelines.settings import Settings
from pipelines.simulator import SimConfig, Simulator
from pipelines.topics import (
    APPLICATIONS,
    INPUT_TOPICS,
    METRIC_SAMPLES,
    SCORED_APPLICATIONS,
    SCORED_TRANSACTIONS,
    SYSTEM_METRICS,
    TRANSACTIONS,
    VALIDATED,
)
from pipelines.up import GATEWAY, Child, children, scrape, total
from schemas.common import parse_event_time

SCORED_TOPICS = (SCORED_TRANSACTIONS, SCORED_APPLICATIONS, METRIC_SAMPLES)
SCORED_INPUTS = (TRANSACTIONS, APPLICATIONS, SYSTEM_METRICS)  # the inputs of SCORED_TOPICS
FORWARDED_TOPICS = tuple(VALIDATED[stream] for stream in SCORED_INPUTS)  # the gateway's outputs
# The load's publishers batch for 50 ms, as publishers to the embedded broker should: Tansu's
# in-memory storage lists a partition's stored batches on every fetch (pipelines/broker.py),
# so small batches cost the broker more with every second of the run. Measured at 8,000
# events/s, 40 s: Tansu 0.69 -> 1.13 of a core and scored p99 1.1 -> 3.5 s with 10 ms;
# 0.43 -> 0.80 and p99 ~0.2-0.4 s with 50 ms. The linger counts in the latency measured.
LOAD_LINGER_MS = 50
WARM_UP_S = 5.0  # of load offered to a new worker before its latency is measured


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _proc_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and of its children that have exited (the worker's snapshot
    writers, ``agents.snapshot.ForkedWriter``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "n": 0}
    values = sorted(values)

    def pct(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 1)

    return {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "n": len(values)}


def generate(n: int, *, seed: int = 1, start_ms: int | None = None,
             rate_eps: float = 5_000.0) -> list[tuple[str, bytes, bytes, int]]:
    """N simulator messages as (topic, key, value, event_time_ms)."""
    start = start_ms if start_ms is not None else int(time.time() * 1000 - n / rate_eps * 1000)
    sim = Simulator(SimConfig(seed=seed, rate_eps=rate_eps), start)
    out = []
    for msg in sim.messages():
        out.append((msg.topic, msg.key, msg.value, msg.event_time_ms))
        if len(out) == n:
            return out
    return out


def produce(bootstrap: str, messages: list[tuple[str, bytes, bytes, int]]) -> float:
    producer = Producer(producer_config(bootstrap, **{"linger.ms": 20, "batch.num.messages": 10000}))
    t0 = time.perf_counter()
    for topic, key, value, _ in messages:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
    return len(messages) / (time.perf_counter() - t0)


def ceiling(bootstrap: str, n: int) -> float:
    """Events/s of a confluent-kafka batch consume loop that only reads."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-ceiling-{time.time()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "session.timeout.ms": 6000})
    c.subscribe(list(INPUT_TOPICS))
    got, first = 0, None
    deadline = time.monotonic() + 120
    while got < n and time.monotonic() < deadline:
        batch = c.consume(10_000, timeout=1.0)
        if batch and first is None:
            first = time.perf_counter()
        got += sum(1 for m in batch if not m.error())
    elapsed = time.perf_counter() - (first or time.perf_counter())
    c.close()
    return got / elapsed if elapsed > 0 else float("nan")


def faust_count(bootstrap: str, n: int, pin: dict[str, str], timeout_s: float = 300) -> float:
    # Faust's worker redirects print() into its logger, which writes to stderr: read both.
    # Placed as the pipeline's worker is (``pin``): the two rates are compared.
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.bench_faust", bootstrap, str(n)],
                            env={**os.environ, **pin},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    result: dict = {}

    def read() -> None:
        for line in proc.stdout:
            # Faust's worker redirects stdout into its log format: find the JSON in the line.
            if '{"n":' in line:
                result.update(json.loads(line[line.index('{"n":'):].strip()))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    return result.get("eps", float("nan"))


def stage(command: str, env: dict[str, str], log_dir: Path) -> Child:
    """A worker or sink process of the bench: `riskstream up`'s child, never restarted."""
    port = free_port()
    child = Child(command, [command], {**env, "RISKSTREAM_METRICS_PORT": str(port)}, port,
                  log_dir / f"{command}.log", restart=False)
    child.start()
    return child


def pipeline(bootstrap: str, n: int, env: dict[str, str], pin: dict[str, str], log_dir: Path,
             load_s: float, load_eps: float | None = None, broker_pid: int | None = None
             ) -> dict:
    worker = stage("worker", {**env, **pin}, log_dir)
    sink = stage("sink", env, log_dir)
    try:
        # (4) the backlog: from the first event the gateway reads to the last one scored.
        first = done = None
        cpu0: dict[int, float] = {}
        deadline, said_at = time.monotonic() + 600, 0.0
        while time.monotonic() < deadline:
            w = scrape(worker.metrics_port)
            read = total(w, "riskstream_events_in_total")
            if read and first is None:
                first = time.perf_counter()
                pids = {"worker": [worker.process.pid], "sink": [sink.process.pid],
                        "gateway": children(worker.process.pid, GATEWAY),
                        "broker": [broker_pid] if broker_pid else []}
                cpu0 = _cpu_of(pids)
            handled = (total(w, "riskstream_scored_total") + total(w, "riskstream_rejected_total")
                       + total(w, "riskstream_validated_total", stream="labels"))
            if first and read >= n and handled >= n:
                done = time.perf_counter()
                break
            if first and time.monotonic() >= said_at + 1.0:  # progress once a second
                said_at = time.monotonic()
                _say(f"  pipeline: {read:,}/{n:,} read, {handled:,} handled")
            # Polled often before the first event so that the start is not missed by much.
            time.sleep(0.2 if first else 0.05)
        if done is None:
            raise RuntimeError(f"the pipeline did not finish the backlog; logs in {log_dir}")
        eps = n / (done - first)
        if done - first < 2.0:
            _say(f"  warning: the backlog took {done - first:.2f} s, too short to time: "
                 "pass more --events")
        # per 1,000 events, by process; the total is the pipeline's own (the broker apart)
        cpu = {name: (s - cpu0[name]) / n * 1000 for name, s in _cpu_of(pids).items()}
        cpu_per_1000 = sum(cpu.get(name, 0.0) for name in ("worker", "gateway", "sink"))

        # Latency at half load (or the load asked for), events timestamped when produced.
        rate = load_eps or eps / 2
        _say(f"  latency at {rate:,.0f} events/s for {load_s:.0f} s")
        lat = latency(bootstrap, rate, load_s, Path(env["RISKSTREAM_LAKE_PATH"]), pids)
        rss = {"worker": _proc_peak_rss_mb(worker.process.pid),
               # the spawned gateway: not a snapshot writer forked for a few seconds
               "gateway": sum(_proc_peak_rss_mb(c)
                              for c in children(worker.process.pid, GATEWAY)),
               "sink": _proc_peak_rss_mb(sink.process.pid)}
        return {"pipeline_eps": eps, "cpu_s_per_1000_events": cpu_per_1000,
                "cpu_s_per_1000_by_process": cpu,
                **_latency_figures(lat),
                "load_send_lag_ms": _percentiles(lat["send_lag"]), "load_offered": lat["offered"],
                "offered_load_eps": rate, "rss_mb": rss}
    finally:
        worker.stop()
        sink.stop()


def fresh_broker_latency(partitions: int, rate: float, load_s: float, env: dict[str, str],
                         pin: dict[str, str],
                         work: Path) -> dict:
    """The latency phase again on a new embedded broker, with a new worker and sink.

    Tansu's cost per fetch grows with every batch it holds (pipelines/broker.py): after the
    backlog it took 55-80 % of a core at half load here, and the scored p99 at 6,300 events/s
    was 877 ms after 200,000 events against 255 ms after 20,000. A Kafka cluster's fetch does
    not grow so; this figure is the pipeline's, the first one the embedded broker's too. The
    new worker is warmed up first (a few seconds of the load, until it has scored them)."""
    fresh = work / "fresh-broker"
    fresh.mkdir()
    with EmbeddedBroker(log_path=fresh / "broker.log") as broker:
        ensure_topics(broker.bootstrap, partitions=partitions)
        env = {**env, "RISKSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
               "RISKSTREAM_LAKE_PATH": str(fresh / "lake"),
               "RISKSTREAM_STATE_DIR": str(fresh / "state")}
        worker = stage("worker", {**env, **pin}, fresh)
        sink = stage("sink", env, fresh)
        try:
            # The reader of the warm-up stops after 3 s without news, which a worker still
            # starting also gives: wait until the worker has scored and then gone quiet.
            latency(broker.bootstrap, rate, WARM_UP_S, fresh / "lake")
            deadline, last = time.monotonic() + 120, -1.0
            while time.monotonic() < deadline:
                scored = total(scrape(worker.metrics_port), "riskstream_scored_total")
                if scored > 0 and scored == last:
                    break
                last = scored
                time.sleep(2.0)
            lat = latency(broker.bootstrap, rate, load_s, fresh / "lake", {
                "worker": [worker.process.pid], "sink": [sink.process.pid],
                "gateway": children(worker.process.pid, GATEWAY), "broker": [broker.pid]})
        finally:
            worker.stop()
            sink.stop()
    return _latency_figures(lat)


def _latency_figures(lat: dict) -> dict:
    """The percentiles of what ``latency`` measured, as the JSON holds them."""
    return {"latency_ms": _percentiles(lat["scored"]),
            "latency_to_lake_ms": _percentiles(lat["lake"]),
            "load_cpu_pct": lat["cpu_pct"],
            "latency_stages_ms": {k: _percentiles(v) for k, v in lat["stages"].items()}}


def latency(bootstrap: str, rate_eps: float, load_s: float, lake: Path,
            processes: dict[str, list[int]] | None = None) -> dict:
    """Offer ``rate_eps`` for ``load_s``; return event-to-scored and event-to-lake latencies
    (``scored``, ``lake``), how late the generator sent each event (``send_lag``), how many
    events were offered on the streams that are scored (``offered``: malformed and duplicate
    ones among them are rejected, not scored) and where the time goes (``stages``): from the
    event time to the gateway's producing it validated, and to the worker's producing its
    scored record (the producers' message timestamps), the rest being the output's linger,
    the broker and the reader's fetch. ``processes``: the CPU each named group of pids used
    while the load was offered, in % of a core (``cpu_pct``), with this process's own (the
    load generator and the reader, ``bench``): on two cores the broker, the gateway, the sink
    and this process share one, and their sum shows how near it is to full.

    Each event is sent when the wall clock reaches its event time, after the measuring
    consumer has joined: the latency is from the moment an event exists to the moment its
    scored record (or its lake file) does.
    """
    # The load is generated before it is offered (the simulator makes ~22,000 events/s on a
    # core: generating while offering would take ~40 % of a core from the pipeline at 8,000/s
    # and send events late), then moved to start now as it is sent (``offer``): only
    # "event_time" changes.
    load = generate(int(rate_eps * load_s), seed=2, rate_eps=rate_eps)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-lat-{time.time()}",
                         "auto.offset.reset": "latest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000, "fetch.wait.max.ms": 10})
    consumer.subscribe([*SCORED_TOPICS, *FORWARDED_TOPICS])
    while not consumer.assignment():  # join before producing: "latest" means from now
        consumer.poll(0.2)
    producer = Producer(producer_config(bootstrap, **{"linger.ms": LOAD_LINGER_MS}))
    producer.list_topics(timeout=10)  # connected before the load's clock starts
    load_start_ms = int(time.time() * 1000) + 100
    scored: list[float] = []
    forwarded: list[float] = []  # event time -> the gateway produced it validated
    produced: list[float] = []  # event time -> the worker produced its scored record
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            # A short timeout: consume() waits for the whole batch or the timeout, and the
            # arrival time is taken when it returns.
            for m in consumer.consume(5000, timeout=0.005):
                if m.error():
                    continue
                now = time.time() * 1000
                sent = m.timestamp()[1]  # CreateTime: set when its producer was called
                if m.topic() in FORWARDED_TOPICS:  # a batch of validated events
                    forwarded.extend(sent - e["event_time"] for e in orjson.loads(m.value())
                                     if e["event_time"] >= load_start_ms)
                    continue
                t = orjson.loads(m.value())["event_time"]
                if t >= load_start_ms:
                    scored.append(now - t)
                    produced.append(sent - t)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()

    def send(topic: str, key: bytes, value: bytes) -> None:
        producer.produce(topic, key=key, value=value)
        producer.poll(0)

    cpu0 = _cpu_s(processes or {})
    started = time.monotonic()
    send_lag = offer(load, load_start_ms, send)
    producer.flush(30)
    cpu_pct = {name: round((s - cpu0[name]) / (time.monotonic() - started) * 100, 1)
               for name, s in _cpu_s(processes or {}).items()}
    # The tail of the load: read until nothing new arrives for 3 s (at most 120 s), so the
    # slowest events are measured rather than left out.
    deadline, seen, quiet_since = time.monotonic() + 120, -1, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - quiet_since < 3.0:
        if len(scored) != seen:
            seen, quiet_since = len(scored), time.monotonic()
        time.sleep(0.1)
    stop.set()
    reader.join(5)
    consumer.close()
    offered = sum(1 for topic, *_ in load if topic in SCORED_INPUTS)
    return {"scored": scored, "lake": _lake_latencies(lake, load_start_ms),
            "send_lag": send_lag, "offered": offered, "cpu_pct": cpu_pct,
            "stages": {"gateway_produced": forwarded, "worker_produced": produced}}


def _cpu_of(processes: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each named group of pids (groups without a pid left out)."""
    return {name: sum(map(_proc_cpu_s, pids)) for name, pids in processes.items() if pids}


def _cpu_s(processes: dict[str, list[int]]) -> dict[str, float]:
    """``_cpu_of``, and this process's own (``bench``)."""
    return {**_cpu_of(processes), "bench": time.process_time()}


def offer(load: list[tuple[str, bytes, bytes, int]], start_ms: int,
          send: Callable[[str, bytes, bytes], None], *,
          clock: Callable[[], float] = time.time,
          sleep: Callable[[float], None] = time.sleep) -> list[float]:
    """Send each message of ``load`` when the wall clock (``clock``, seconds) reaches its event
    time moved so that the first is at ``start_ms``; return how late each was sent (ms).

    Each message is moved as it is sent, not all before: moving ~150,000 took ~270 ms in the
    bench, after the start (100 ms ahead) was fixed, and the load's first ~2,000 events went
    out up to ~170 ms late, at once: ~1.4 % of the events, the p99 of every latency measured
    (runs of 2026-12-05)."""
    send_lag: list[float] = []
    if not load:
        return send_lag
    for topic, key, value, t in _shift(load, start_ms - load[0][3]):
        while (delay_ms := t - clock() * 1000) > 1:
            sleep(min(delay_ms, 1000) / 1000)
        send(topic, key, value)
        send_lag.append(clock() * 1000 - t)
    return send_lag


def _shift(messages: list[tuple[str, bytes, bytes, int]], delta_ms: int
           ) -> Iterator[tuple[str, bytes, bytes, int]]:
    """The messages with their event time moved by ``delta_ms``: a byte edit of an integer
    time; a message whose time is an ISO-8601 string (the simulator sends some) is decoded and
    encoded again with the moved time in ms; a malformed one is left as it is."""
    for topic, key, value, t in messages:
        moved = value.replace(b'"event_time":%d' % t, b'"event_time":%d' % (t + delta_ms), 1)
        if moved is value or moved == value:
            try:
                event = orjson.loads(value)
                event["event_time"] = parse_event_time(event["event_time"]) + delta_ms
                moved = orjson.dumps(event)
            except (ValueError, TypeError, KeyError):  # malformed on purpose: rejected anyway
                moved = value
        yield topic, key, moved, t + delta_ms


def _lake_latencies(lake: Path, since_ms: int) -> list[float]:
    """Per row: the time its Parquet file appeared minus the row's event time."""
    import pyarrow.parquet as pq

    out: list[float] = []
    for table in ("scored_transactions", "scored_applications", "metric_samples"):
        for path in (lake / table).rglob("*.parquet"):
            written_ms = path.stat().st_mtime * 1000
            if written_ms < since_ms:
                continue
            times = pq.read_table(path, columns=["event_time"]).column(0).cast("int64").to_pylist()
            out += [written_ms - t for t in times if t >= since_ms]
    return out


def scoring_path(n: int, pin: dict[str, str]) -> dict:
    """(5): the scoring path alone, in a process of its own (``pipelines.bench_scoring``),
    placed as the pipeline's worker (``pin``)."""
    out = subprocess.run([sys.executable, "-m", "pipelines.bench_scoring", str(n)],
                         env={**os.environ, **pin}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def state_memory(cards: int, series: int) -> dict:
    """Peak RSS of a process whose scorers hold ``cards`` cards and ``series`` series."""
    out = subprocess.run([sys.executable, "-m", "pipelines.bench_state", str(cards), str(series)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_bench(settings: Settings, *, events: int, json_out: Path | None,
              load_s: float = 15.0, state: tuple[int, int] | None = None,
              load_eps: float | None = None) -> dict:
    broker = None
    bootstrap = settings.kafka.bootstrap
    work = Path(tempfile.mkdtemp(prefix="riskstream-bench-"))
    # Placed as `riskstream up` places its processes (pipelines/placement.py): the workers
    # (and Faust's agent, and (5)) on a core of their own, this process, so the embedded
    # broker, the load and the reader, the gateway and the sink on the others.
    cpus = placement.plan(1, enabled=settings.service.pin_workers)
    unplaced = placement.take_shared(cpus) if cpus else None
    pin = cpus.worker_env(0) if cpus else {}
    partitions = settings.kafka.partitions
    try:
        if not bootstrap:
            broker = EmbeddedBroker(log_path=work / "broker.log").start()
            bootstrap = broker.bootstrap
            partitions = settings.kafka.embedded_partitions()  # as `riskstream up` has them
        ensure_topics(bootstrap, partitions=partitions)
        _say(f"bench: {events:,} events on {bootstrap}; work dir {work}; "
             f"{cpus.describe() if cpus else 'processes not pinned'}")
        _say("1/5 generating and producing ...")
        messages = generate(events)
        produce_eps = produce(bootstrap, messages)
        del messages
        _say("2/5 Faust count-only agent ...")
        faust_eps = faust_count(bootstrap, events, pin)
        _say("3/5 ceiling: confluent-kafka batch consume ...")
        ceiling_eps = ceiling(bootstrap, events)
        _say("4/5 full pipeline: worker + sink ...")
        env = {**os.environ, "RISKSTREAM_KAFKA_BOOTSTRAP": bootstrap,
               "RISKSTREAM_KAFKA_PARTITIONS": str(partitions),
               "RISKSTREAM_LAKE_PATH": str(work / "lake"),
               "RISKSTREAM_STATE_DIR": str(work / "state"),
               "RISKSTREAM_LAKE_FLUSH_INTERVAL_S": "1", "RISKSTREAM_LOG_LEVEL": "WARNING"}
        result = {"events": events, "bootstrap": "embedded" if broker else "external",
                  "partitions": partitions,
                  "cpus": cpus.describe() if cpus else None,
                  # every stage runs on this interpreter: two builds of 3.11 differ by ~13 %
                  "python": interpreter.describe(),
                  "produce_eps": produce_eps, "ceiling_eps": ceiling_eps,
                  "faust_count_eps": faust_eps,
                  **pipeline(bootstrap, events, env, pin, work, load_s, load_eps,
                             broker.pid if broker else None)}
        if broker is not None:
            _say("   latency again on a fresh embedded broker (new worker and sink) ...")
            result["fresh_broker"] = fresh_broker_latency(
                partitions, result["offered_load_eps"], load_s, env, pin, work)
        _say("5/5 the scoring path alone, in process ...")
        result["scoring_eps"] = scoring_path(events, pin)["scoring_eps"]
        if state:
            _say(f"state memory: {state[0]:,} cards, {state[1]:,} metric series ...")
            result["state_memory"] = state_memory(*state)
        result["ratio_pipeline_to_faust"] = result["pipeline_eps"] / faust_eps
        result["ratio_pipeline_to_ceiling"] = result["pipeline_eps"] / ceiling_eps
        result["ratio_pipeline_to_scoring"] = result["pipeline_eps"] / result["scoring_eps"]
        print(report(result))
        if json_out:
            Path(json_out).write_text(json.dumps(result, indent=2))
        return result
    finally:
        if broker is not None:
            broker.stop()
        if unplaced is not None:
            placement.restore(unplaced)


def report(r: dict) -> str:
    lat, lake, stages = r["latency_ms"], r["latency_to_lake_ms"], r["latency_stages_ms"]
    return "\n".join([
        f"riskstream bench: {r['events']:,} mixed events ({r['bootstrap']} broker, "
        f"{r['partitions']} partitions per topic; "
        f"{r['cpus'] or 'processes not pinned'})",
        f"  Python {r['python']['version']} ({r['python']['executable']})",
        f"  produce                         {r['produce_eps']:>12,.0f} events/s",
        f"  (2) ceiling: batch consume       {r['ceiling_eps']:>12,.0f} events/s",
        f"  (3) Faust count-only agent       {r['faust_count_eps']:>12,.0f} events/s",
        f"  (4) full pipeline                {r['pipeline_eps']:>12,.0f} events/s",
        (f"      (4)/(3) = {r['ratio_pipeline_to_faust']:.2f}x   "
        f"(4)/(2) = {r['ratio_pipeline_to_ceiling']:.3f}"),
        (f"  (5) scoring path alone, in process {r['scoring_eps']:>10,.0f} events per CPU "
         f"second   (4)/(5) = {r['ratio_pipeline_to_scoring']:.2f}"),
        f"  CPU: {r['cpu_s_per_1000_events']:.3f} s per 1,000 events (worker, its gateway, sink): "
        + ", ".join(f"{name} {s:.3f}" for name, s in r["cpu_s_per_1000_by_process"].items()),
        (f"  latency at {r['offered_load_eps']:,.0f} events/s after the backlog, event time to "
         f"scored output: "
        f"p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms (n={lat['n']:,} of "
        f"{r['load_offered']:,} offered)"),
        (f"    of which: the gateway produced it validated by p50 "
         f"{stages['gateway_produced']['p50']} / p99 {stages['gateway_produced']['p99']} ms, "
         f"the worker its scored record by p50 "
         f"{stages['worker_produced']['p50']} / p99 {stages['worker_produced']['p99']} ms"),
        _cpu_line(r["load_cpu_pct"]),
        f"  latency to the lake: p50 {lake['p50']} ms, p95 {lake['p95']} ms, p99 {lake['p99']} ms",
        *([(f"  the same load on a fresh embedded broker (Tansu's cost per fetch grows with what "
            f"it holds; a Kafka cluster's does not): to scored p50 {fresh['latency_ms']['p50']} "
            f"/ p95 {fresh['latency_ms']['p95']} / p99 {fresh['latency_ms']['p99']} ms "
            f"(n={fresh['latency_ms']['n']:,}), the worker's producing it p99 "
            f"{fresh['latency_stages_ms']['worker_produced']['p99']} ms, to the lake p99 "
            f"{fresh['latency_to_lake_ms']['p99']} ms"), _cpu_line(fresh["load_cpu_pct"])]
          if (fresh := r.get("fresh_broker")) else []),
        (f"  (the load generator sent events late by p50 {r['load_send_lag_ms']['p50']} ms, "
        f"p99 {r['load_send_lag_ms']['p99']} ms: part of the latencies above)"),
        (f"  peak RSS: worker {r['rss_mb']['worker']:.0f} MiB, its gateway "
         f"{r['rss_mb']['gateway']:.0f} MiB, sink {r['rss_mb']['sink']:.0f} MiB"),
        *([(f"  state: {r['state_memory']['cards']:,} cards + {r['state_memory']['series']:,} "
           f"series -> RSS {r['state_memory']['rss_mb']:.0f} MiB (cards "
           f"{r['state_memory']['cards_mb']:.0f}, series {r['state_memory']['series_mb']:.0f})"),
          (f"  snapshot of the cards: the worker pauses "
           f"{r['state_memory']['snapshot_fork_pause_ms']:.0f} ms to fork its writer (building "
           f"it in the worker: {r['state_memory']['snapshot_build_s']:.1f} s, "
           f"{r['state_memory']['snapshot_build_extra_mb']:.0f} MiB more)")]
          if "state_memory" in r else []),
    ])


def _cpu_line(pct: dict[str, float]) -> str:
    """CPU while the load was offered. Pinned, every process but the worker shares one core:
    their sum near 100 % is that core full, and every hop through it waits."""
    others = sum(v for name, v in pct.items() if name != "worker")
    return ("    CPU while the load was offered, % of a core: "
            + ", ".join(f"{'this process (load, reader)' if name == 'bench' else name} {v:.0f}"
                        for name, v in pct.items())
            + f"; all but the worker {others:.0f}")


# What ``--repeat`` summarises: (label, path into a run's result, format). Machines are noisy
# (one run's backlog rate can differ from the next's by a fifth here): quote medians.
SUMMARY: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("(2) ceiling: batch consume, events/s", ("ceiling_eps",), "{:,.0f}"),
    ("(3) Faust count-only agent, events/s", ("faust_count_eps",), "{:,.0f}"),
    ("(4) full pipeline, events/s", ("pipeline_eps",), "{:,.0f}"),
    ("(4)/(3)", ("ratio_pipeline_to_faust",), "{:.2f}x"),
    ("(5) scoring path alone, events per CPU second", ("scoring_eps",), "{:,.0f}"),
    ("(4)/(5)", ("ratio_pipeline_to_scoring",), "{:.2f}"),
    ("CPU s per 1,000 events (worker, gateway, sink)", ("cpu_s_per_1000_events",), "{:.3f}"),
    ("offered load of the latency phase, events/s", ("offered_load_eps",), "{:,.0f}"),
    ("scored p50 after the backlog, ms", ("latency_ms", "p50"), "{:.0f}"),
    ("scored p95 after the backlog, ms", ("latency_ms", "p95"), "{:.0f}"),
    ("scored p99 after the backlog, ms", ("latency_ms", "p99"), "{:.0f}"),
    ("scored p99 on a fresh broker, ms", ("fresh_broker", "latency_ms", "p99"), "{:.0f}"),
    ("lake p99 after the backlog, ms", ("latency_to_lake_ms", "p99"), "{:.0f}"),
    ("worker peak RSS, MiB", ("rss_mb", "worker"), "{:.0f}"),
    ("gateway peak RSS, MiB", ("rss_mb", "gateway"), "{:.0f}"),
    ("sink peak RSS, MiB", ("rss_mb", "sink"), "{:.0f}"),
    ("RSS of scorers holding --state, MiB", ("state_memory", "rss_mb"), "{:.0f}"),
)


def _at(result: dict, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def summarise(runs: list[dict]) -> dict:
    """Per measure of ``SUMMARY`` found in the runs: ``{"median", "min", "max", "n"}`` (the
    median of an even count is the mean of the middle two), keyed by its path joined by
    dots. The fresh-broker latency is in runs on the embedded broker only."""
    out: dict[str, dict[str, float]] = {}
    for _, path, _ in SUMMARY:
        values = sorted(v for r in runs
                        if (v := _at(r, path)) is not None and not math.isnan(v))
        if values:
            out[".".join(path)] = {"median": statistics.median(values), "min": values[0],
                                   "max": values[-1], "n": len(values)}
    return out


def summary_report(summary: dict, repeat: int) -> str:
    lines = [f"riskstream bench: medians of {repeat} runs (lowest - highest)"]
    for label, path, fmt in SUMMARY:
        m = summary.get(".".join(path))
        if m is not None:
            lines.append(f"  {label:<48} {fmt.format(m['median']):>10}   "
                         f"({fmt.format(m['min'])} - {fmt.format(m['max'])})")
    return "\n".join(lines)


def run_benches(settings: Settings, *, repeat: int, json_out: Path | None, **kwargs) -> dict:
    """``run_bench`` ``repeat`` times, each on a new embedded broker, then the medians. With
    one run, its result as it is; with more, the medians of the figures issue 8 asks for at
    the top (``ceiling_eps``, ``faust_count_eps``, ``pipeline_eps``, ``latency_ms``,
    ``rss_mb``; None where no run measured one), ``summary`` and every run's result."""
    if repeat < 1:
        raise ConfigError(f"--repeat: must be >= 1, got {repeat!r}")
    if repeat > 1 and settings.kafka.bootstrap:
        # each run produces its events into the pipeline's topics, and the next run's worker
        # and readers would meet the last run's there
        raise ConfigError("--repeat: each run needs topics of its own; against "
                         "RISKSTREAM_KAFKA_BOOTSTRAP run the bench once per fresh cluster")
    if repeat == 1:
        return run_bench(settings, json_out=json_out, **kwargs)
    runs = []
    for i in range(repeat):
        _say(f"run {i + 1}/{repeat}")
        runs.append(run_bench(settings, json_out=None, **kwargs))
    summary = summarise(runs)

    def median(*path: str) -> float | None:
        return summary.get(".".join(path), {}).get("median")

    result = {"repeat": repeat, "events": runs[0]["events"],
              "ceiling_eps": median("ceiling_eps"), "faust_count_eps": median("faust_count_eps"),
              "pipeline_eps": median("pipeline_eps"),
              "latency_ms": {q: median("latency_ms", q) for q in ("p50", "p95", "p99")},
              "rss_mb": {p: median("rss_mb", p) for p in ("worker", "gateway", "sink")},
              "summary": summary, "runs": runs}
    print(summary_report(summary, repeat))
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2))
    return result


def register(sub) -> None:
    bench = sub.add_parser("bench", help="throughput and latency against the raw ceilings")
    bench.add_argument("--events", type=int, default=200_000)
    bench.add_argument("--load-seconds", type=float, default=15.0,
                       help="duration of the half-load latency phase")
    bench.add_argument("--load-eps", type=float, default=None,
                       help="offered load of the latency phase (default: half the pipeline's "
                            "measured rate)")
    bench.add_argument("--json", dest="json_out", default=None)
    bench.add_argument("--state", default=None, metavar="CARDS,SERIES",
                       help="also measure the RSS of scorers holding this many cards and metric "
                            "series, e.g. 1000000,10000")
    bench.add_argument("--repeat", type=int, default=1, metavar="N",
                       help="run the whole bench N times and print the medians (and ranges) "
                            "of its figures; the JSON then holds the medians and every run")
    bench.set_defaults(func=lambda args, settings: run_benches(
        settings, repeat=args.repeat, events=args.events, json_out=args.json_out,
        load_s=args.load_seconds,
        load_eps=args.load_eps,
        state=tuple(int(x) for x in args.state.split(",")) if args.state else None) and 0)
