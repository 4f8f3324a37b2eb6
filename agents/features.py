"""Small helpers shared by the scorers: bounded per-key state and value scaling."""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(OrderedDict, Generic[K, V]):
    """A dict that forgets its least recently written keys beyond ``max_keys``.

    Per-card and per-series state must have bounded memory: a worker sees millions of cards.
    """

    def __init__(self, max_keys: int, on_evict: Callable[[K], object] | None = None) -> None:
        super().__init__()
        self.max_keys = max_keys
        self.on_evict = on_evict  # called with each key forgotten

    def __setitem__(self, key: K, value: V) -> None:
        if key in self:
            self.move_to_end(key)
        super().__setitem__(key, value)
        if len(self) > self.max_keys:
            old, _ = self.popitem(last=False)
            if self.on_evict is not None:
                self.on_evict(old)


def log_scale(x: float, top: float) -> float:
    """Map ``x >= 0`` to [0, 1] on a log scale saturating at ``top``."""
    return min(1.0, math.log1p(max(x, 0.0)) / math.log1p(top))


def decision_of(score: float, review_at: float, decline_at: float) -> str:
    """approve / review / decline from a score in [0, 1] and two thresholds."""
    if score >= decline_at:
        return "decline"
    if score >= review_at:
        return "review"
    return "approve"


class RollingRank:
    """The rank of a value among the last ``window`` values seen, in [0, 1] (values that are
    ordered: no NaN).

    Turns an uncalibrated detector score into a quantile: ``rank ** k`` then puts a chosen
    share of traffic above a threshold (``calibrated``).

    Examples
    --------
    >>> r = RollingRank(window=4)
    >>> [r.update(x) for x in (1.0, 2.0, 3.0, 0.5)]
    [0.5, 0.75, 0.8333333333333334, 0.125]
    """

    def __init__(self, window: int = 2000) -> None:
        self.window = window
        self._sorted: list[float] = []
        self._fifo: deque[float] = deque()

    def update(self, x: float) -> float:
        s, fifo = self._sorted, self._fifo
        below = bisect.bisect_left(s, x)
        # (values are ordered: no NaN) equal values follow ``below``, most often none
        equal = bisect.bisect_right(s, x, below) - below if below < len(s) and s[below] == x \
            else 0
        # mid-rank of x among the window including itself
        rank = (below + 0.5 * (equal + 1)) / (len(s) + 1)
        s.insert(below, x)  # (before its equals: the same values in the same order)
        fifo.append(x)
        if len(fifo) > self.window:
            del s[bisect.bisect_left(s, fifo.popleft())]
        return rank


def calibrated(rank: float, *, share: float, at: float) -> float:
    """Map a rank in [0, 1] so that the top ``share`` of ranks score at least ``at``."""
    return rank ** (math.log(at) / math.log(1.0 - share))
