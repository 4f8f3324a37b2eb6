"""The scoring path alone, in process, for ``riskstream bench`` (5): the worker's ceiling.

Run as ``python -m pipelines.bench_scoring N``: the bench's N messages (``bench.generate``, the
same seed), validated as the gateway does, in the gateway's batches per input stream, through
the worker's ``Pipeline`` (features, scores, learning from labels, windows, alert rules), its
outputs serialised as the worker's producer does but not sent. Prints one JSON line: events
scored, and events/s of CPU time. No broker, no Faust: the full pipeline's rate over this one is
the share of the worker's main thread left to scoring.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

from agents.aggregate import WindowAggregator
from agents.validate import Deduplicator
from pipelines import placement
from pipelines.app import Pipeline
from pipelines.bench import generate
from pipelines.settings import Settings
from pipelines.topics import LABELS
from schemas.validation import Rejection, Validator


class SerialisingOutputs:
    """The worker's ``Outputs`` without a broker: each record serialised, then dropped."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, topic: str, key: str | None, record: dict) -> None:
        orjson.dumps(record)
        self.sent += 1

    def flush(self) -> None:
        pass


def batches(n: int, settings: Settings, start_ms: int | None = None
            ) -> list[tuple[str, bytes]]:
    """The bench's messages as the gateway forwards them: per stream, JSON arrays of up to
    ``batch_events`` valid events, without the duplicates (the simulator's ~1 %), in the
    order they arrive (the first at ``start_ms``, default ``bench.generate``'s)."""
    validator = Validator(settings.validation, settings.pii)
    dedup = Deduplicator(int(settings.validation.dedup_ttl_s * 1000))
    size = settings.validation.batch_events
    out: list[tuple[str, bytes]] = []
    pending: dict[str, list[dict]] = {}
    for topic, _key, value, event_time_ms in generate(n, start_ms=start_ms):
        event = validator.validate(topic, value, now_ms=event_time_ms)
        # (a duplicate has its first's key, so its input partition: one per stream here)
        if isinstance(event, Rejection) or dedup.seen((topic, 0), event["event_id"],
                                                      event["event_time"]):
            continue
        events = pending.setdefault(topic, [])
        events.append(event)
        if len(events) == size:
            out.append((topic, orjson.dumps(events)))
            pending[topic] = []
    out += [(topic, orjson.dumps(events)) for topic, events in pending.items() if events]
    return out


def main(n: int) -> dict:
    logging.disable(logging.WARNING)  # the development PII key's warning, once per process
    settings = Settings()
    work = Path(tempfile.mkdtemp(prefix="riskstream-bench-scoring-"))
    settings.__dict__["model"] = settings.model.model_copy(
        update={"snapshot_dir": work, "snapshot_interval_s": 10**9})
    forwarded = batches(n, settings)
    outputs = SerialisingOutputs()
    pipeline = Pipeline(settings, outputs)
    windows: dict[str, WindowAggregator] = {}
    scored = 0
    cpu = time.process_time()
    for topic, raw in forwarded:
        events = orjson.loads(raw)
        if topic == LABELS:
            pipeline.learn_labels(events)
            continue
        pipeline.alert_slice(f"{topic}:0", lambda: None)
        agg = windows.get(topic) or windows.setdefault(topic, WindowAggregator(topic))
        pipeline.score_batch(topic, events, agg)
        scored += len(events)
    cpu = time.process_time() - cpu
    return {"events": scored, "cpu_s": cpu, "scoring_eps": scored / cpu, "outputs": outputs.sent}


if __name__ == "__main__":
    placement.pin(os.environ.get("RISKSTREAM_CPUS"))  # as the bench's worker (bench.py)
    print(orjson.dumps(main(int(sys.argv[1]))).decode())
