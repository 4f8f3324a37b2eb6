"""Small helpers shared by the scorers: bounded per-key state and value scaling."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(OrderedDict, Generic[K, V]):
    """A dict that forgets its least recently written keys beyond ``max_keys``.

    Per-card and per-series state must have bounded memory: a worker sees millions of cards.
    """

    def __init__(self, max_keys: int) -> None:
        super().__init__()
        self.max_keys = max_keys

    def __setitem__(self, key: K, value: V) -> None:
        if key in self:
            self.move_to_end(key)
        super().__setitem__(key, value)
        if len(self) > self.max_keys:
            self.popitem(last=False)


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
