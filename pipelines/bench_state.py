"""State memory of ``riskstream bench --state``: a worker's scorers holding N cards and M series.

Run as ``python -m pipelines.bench_state CARDS SERIES``: feeds one transaction per distinct card
to a ``TransactionScorer`` and ``SAMPLES`` samples per series to a ``MetricScorer`` (enough to
fill their profiles), then prints one JSON line with the process's peak RSS in MiB, the
RSS attributable to each part, and how long a snapshot of the cards holds the worker's loop
(``snapshot_pause``).
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import orjson

from agents.anomaly import MetricScorer
from agents.fraud import TransactionScorer
from agents.snapshot import ForkedWriter

SAMPLES = 300  # a series' warm-up: its profiles are allocated by then
T0 = 1_790_000_000_000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(cards: int, series: int) -> dict:
    gc.collect()
    base = rss_mb()
    txn = TransactionScorer(seed=1)
    t = time.perf_counter()
    for i in range(cards):
        txn.score_record({
            "event_id": f"t{i}", "event_time": T0 + i, "card_id": f"card-{i}",
            "account_id": f"acct-{i}", "merchant_id": f"m-{i % 5000}", "mcc": "5411",
            "amount": 10.0 + i % 300, "currency": "USD", "channel": "ecom", "country": "US",
            "status": "approved", "device_id": f"d-{i}", "ip": None}, 0)
        if i % 200_000 == 0 and i:
            print(f"  cards: {i:,} ({i / (time.perf_counter() - t):,.0f}/s)", file=sys.stderr,
                  flush=True)
    gc.collect()
    after_cards = rss_mb()
    metric = MetricScorer(max_series=max(series, 1))
    for step in range(SAMPLES):
        for s in range(series):
            metric.score_record({"event_id": "x", "event_time": T0 + step * 300_000,
                                 "host": f"h{s // 6}", "service": "api",
                                 "metric": f"m{s % 6}", "value": 50.0 + (step * 7 + s) % 11}, 0)
    gc.collect()
    after_series = rss_mb()
    out = {"cards": cards, "series": series, "rss_mb": after_series,
           "peak_rss_mb": peak_rss_mb(), "baseline_mb": base,
           "cards_mb": after_cards - base, "series_mb": after_series - after_cards}
    return {**out, **snapshot_pause(txn)}


def snapshot_pause(txn: TransactionScorer) -> dict:
    """How long a snapshot of the fraud scorer holds the worker's loop: the fork of the
    worker's ``ForkedWriter`` (the child builds the state), against building the state in the
    worker as before (and the memory that took). Measured after the RSS figures above."""
    writer = ForkedWriter()
    t = time.perf_counter()
    writer.submit("bench", txn.to_state)
    fork_ms = (time.perf_counter() - t) * 1000
    writer.wait()
    before = rss_mb()
    t = time.perf_counter()
    state = txn.to_state()
    build_s = time.perf_counter() - t
    extra_mb = rss_mb() - before
    del state
    return {"snapshot_fork_pause_ms": fork_ms, "snapshot_build_s": build_s,
            "snapshot_build_extra_mb": extra_mb}


if __name__ == "__main__":
    print(orjson.dumps(main(int(sys.argv[1]), int(sys.argv[2]))).decode(), flush=True)
