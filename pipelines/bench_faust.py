"""The Faust count-only agent of ``riskstream bench``: Faust's per-message ceiling.

Run as ``python -m pipelines.bench_faust BOOTSTRAP N``: an agent that only deserialises
(``orjson.loads``) and counts the messages of the input topics; prints one JSON line with the
events/s from its first to its N-th message; the caller then stops it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import faust
import orjson

from pipelines import placement
from pipelines.topics import INPUT_TOPICS


def main(bootstrap: str, expected: int) -> None:
    # Faust writes a data directory even with an in-memory store: keep it out of the cwd.
    datadir = tempfile.mkdtemp(prefix="riskstream-bench-count-")
    app = faust.App(f"bench-count-{int(time.time())}", broker=f"kafka://{bootstrap}",
                    store="memory://", datadir=datadir, value_serializer="raw", key_serializer="raw",
                    broker_session_timeout=8, consumer_auto_offset_reset="earliest",
                    topic_allow_declare=False, web_enabled=False)
    topics = app.topic(*INPUT_TOPICS, value_serializer="raw", key_serializer="raw")
    state = {"first": 0.0, "done": False}
    # Distinct (topic, partition, offset): a rebalance on a busy machine re-delivers messages.
    seen: set[tuple[str, int, int]] = set()

    @app.agent(topics)
    async def count(stream: faust.StreamT) -> None:
        async for event in stream.events():
            if not seen:
                state["first"] = time.perf_counter()
            try:
                orjson.loads(event.value)
            except orjson.JSONDecodeError:
                pass
            m = event.message
            seen.add((m.topic, m.partition, m.offset))
            if len(seen) >= expected and not state["done"]:
                state["done"] = True
                elapsed = time.perf_counter() - state["first"]
                # The parent reads this line and stops the process.
                print(orjson.dumps({"n": expected, "seconds": elapsed,
                                    "eps": expected / elapsed}).decode(), flush=True)

    sys.argv = ["bench-count", "worker", "--without-web", "-l", "warn"]
    try:
        app.main()
    finally:
        shutil.rmtree(datadir, ignore_errors=True)


if __name__ == "__main__":
    placement.pin(os.environ.get("RISKSTREAM_CPUS"))  # as the bench's worker (bench.py)
    main(sys.argv[1], int(sys.argv[2]))
