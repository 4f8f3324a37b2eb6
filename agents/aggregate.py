"""Tumbling event-time windows aggregated in memory, emitted when the watermark passes them.

The watermark is the largest event time seen minus the grace period: an event for a window
that is already closed is late, counted, and left out of the aggregate (its raw row is still
in the lake). State is a plain dict of incremental aggregates (count, sum, min, max, score
sum/max, flagged) per (group key, window start), never a list of events, and it serialises to
JSON so the Faust agent can checkpoint it to a table now and then, not once per event.

Windows are kept per input partition (that is what a worker owns and checkpoints), so a group
whose events are spread over partitions (a merchant's transactions, keyed by card) has one row
per partition and window: ``aggregate_id`` names the partition, and readers sum the rows of a
group and window (``sum(count)``, ``sum(sum)``, ``max(max)``, ...).
"""

from __future__ import annotations

import orjson


class WindowAggregator:
    def __init__(self, stream: str, *, partition: int = 0, window_size_ms: int = 60_000,
                 grace_ms: int = 10_000, flag_threshold: float = 0.9) -> None:
        self.stream = stream
        self.partition = partition
        self.window_size_ms = window_size_ms
        self.grace_ms = grace_ms
        self.flag_threshold = flag_threshold
        # window_start -> group_key -> [count, sum, min, max, score_sum, score_max, flagged]:
        # by start first, so closing windows looks at a few starts, not at every group.
        self._windows: dict[int, dict[str, list[float]]] = {}
        self._max_event_ms = 0
        self.late = 0

    @property
    def max_event_ms(self) -> int:
        """The largest event time seen: the event-time clock of this partition."""
        return self._max_event_ms

    @property
    def watermark_ms(self) -> int:
        return self._max_event_ms - self.grace_ms

    def add(self, group_key: str, event_ms: int, value: float, score: float) -> bool:
        """Add one event; False when it is late (its window already closed)."""
        # (per event: conditionals, not min/max calls; the watermark property inlined)
        size = self.window_size_ms
        start = event_ms - event_ms % size
        clock = self._max_event_ms
        if start + size <= clock - self.grace_ms:
            self.late += 1
            return False
        if event_ms > clock:
            self._max_event_ms = event_ms
        groups = self._windows.get(start)
        if groups is None:
            groups = self._windows[start] = {}
        w = groups.get(group_key)
        flagged = 1.0 if score >= self.flag_threshold else 0.0
        if w is None:
            groups[group_key] = [1, value, value, value, score, score, flagged]
        else:
            w[0] += 1
            w[1] += value
            if value < w[2]:
                w[2] = value
            if value > w[3]:
                w[3] = value
            w[4] += score
            if score > w[5]:
                w[5] = score
            w[6] += flagged
        return True

    def pop_closed(self, emitted_at_ms: int, *, everything: bool = False,
                   limit: int | None = None) -> list[dict]:
        """Remove and return the windows that end at or before the watermark: at most
        ``limit`` group windows, the oldest first (the rest stay in the state, closed: the
        next call returns them)."""
        closed = sorted(s for s in self._windows
                        if everything or s + self.window_size_ms <= self.watermark_ms)
        out: list[dict] = []
        for start in closed:
            if limit is not None and len(out) >= limit:
                break
            groups = self._windows[start]
            keys = sorted(groups)
            if limit is not None:
                keys = keys[:limit - len(out)]
            for group_key in keys:
                count, total, lo, hi, score_sum, score_max, flagged = groups.pop(group_key)
                out.append({
                    "aggregate_id": f"{self.stream}:{group_key}:{start}:p{self.partition}",
                    "stream": self.stream,
                    "group_key": group_key, "window_start": start,
                    "window_end": start + self.window_size_ms, "count": int(count), "sum": total,
                    "min": lo, "max": hi, "mean": total / count, "score_mean": score_sum / count,
                    "score_max": score_max, "flagged": int(flagged), "emitted_at": emitted_at_ms,
                })
            if not groups:
                del self._windows[start]
        return out

    def json_state(self) -> bytes:
        """The state as JSON: the windows serialised as they are, ``{start: {group:
        aggregate}}``, not copied into a row per window first (the worker's checkpoint takes
        every partition's state on the event loop)."""
        return orjson.dumps({"max_event_ms": self._max_event_ms, "late": self.late,
                             "by_start": self._windows}, option=orjson.OPT_NON_STR_KEYS)

    def load_state(self, state: dict) -> None:
        """Restore ``json_state`` (or the rows ``[group, start, *aggregate]`` of checkpoints
        written before ``by_start``)."""
        self._max_event_ms = state["max_event_ms"]
        self.late = state["late"]
        if "by_start" in state:
            self._windows = {int(start): groups for start, groups in state["by_start"].items()}
            return
        self._windows = {}
        for row in state["windows"]:
            self._windows.setdefault(row[1], {})[row[0]] = list(row[2:])
