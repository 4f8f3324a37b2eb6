"""Rolling model quality over the last labelled events: exact ROC AUC, AP, precision/recall.

The scorers record ``(score, label)`` when they learn a label (``_Scorer.quality``): the score
is the one the event got when it was scored, before its label was known, so this is the
quality the business saw. The worker publishes ``summary()`` on the ``model-quality`` topic
and as Prometheus gauges (``pipelines/app.py``).

Limits: events learned as genuine because their label never came (after ``label_ttl_s``)
count as genuine here too, but only once their TTL passed: until then the window holds
mostly explicitly labelled events, which are richer in fraud than traffic, so precision is
optimistic and recall is about the labelled frauds only. Metrics that need both classes are
None (null) while the window has only one.

Examples
--------
>>> q = RollingQuality(window=4, review_at=0.5)
>>> for score, label in [(0.9, 1), (0.2, 0), (0.6, 0), (0.1, 0), (0.8, 1)]:
...     q.update(score, label)
>>> s = q.summary()
>>> (s["n"], s["positives"], s["roc_auc"], s["precision_at_review"], s["recall_at_review"])
(4, 1, 1.0, 0.5, 1.0)
"""

from __future__ import annotations

from collections import deque

from pipelines.metrics_exact import average_precision, roc_auc


class RollingQuality:
    """The last ``window`` (score, label) pairs and their exact quality metrics.

    Parameters
    ----------
    window
        Labelled events kept (the oldest is dropped past it).
    review_at
        The review threshold: precision and recall count a score at or above it as flagged.
    """

    def __init__(self, window: int = 5_000, review_at: float = 0.7) -> None:
        if window < 1:
            raise ValueError(f"window: must be >= 1, got {window!r}")
        self.window = window
        self.review_at = review_at
        self._pairs: deque[tuple[float, int]] = deque(maxlen=window)

    def update(self, score: float, label: int) -> None:
        self._pairs.append((float(score), 1 if label else 0))

    def __len__(self) -> int:
        return len(self._pairs)

    def summary(self) -> dict:
        """n, positives, roc_auc, average_precision, precision_at_review, recall_at_review
        (None where undefined). O(window log window): call it every few seconds, not per
        event."""
        scores = [s for s, _ in self._pairs]
        labels = [y for _, y in self._pairs]
        n, positives = len(labels), sum(labels)
        both = 0 < positives < n
        flagged = [y for s, y in self._pairs if s >= self.review_at]
        return {
            "n": n, "positives": positives,
            "roc_auc": roc_auc(labels, scores) if both else None,
            "average_precision": average_precision(labels, scores) if positives else None,
            "precision_at_review": sum(flagged) / len(flagged) if flagged else None,
            "recall_at_review": sum(flagged) / positives if positives else None,
        }
