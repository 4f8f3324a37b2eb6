"""Exact detection metrics: ROC AUC, average precision and card precision@k.

Pure functions over arrays (numpy), no I/O. River's ``metrics.ROCAUC`` approximates the
curve with a few thresholds, so the evaluations use these instead.

- ``roc_auc``: the Mann-Whitney statistic with mid-ranks, i.e. the probability that a random
  positive scores above a random negative, ties counting one half. Equal to sklearn's
  ``roc_auc_score`` (the trapezoidal area under the exact ROC curve).
- ``average_precision``: sklearn's ``average_precision_score``: ``sum_n (R_n - R_{n-1}) P_n``
  over the distinct score thresholds, highest first (a step function, no interpolation).
- ``card_precision_at_k``: the Fraud Detection Handbook's daily card precision: per day, a
  card's score is the max of its transactions' scores and it is compromised when any of them
  is fraud; the share of compromised cards among the day's ``k`` highest-scored cards,
  averaged over days.

Examples
--------
>>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
>>> round(average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 6)
0.833333
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ArrayLike = Sequence[float] | np.ndarray


def _check(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(bool, copy=False).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true and y_score: must have the same length, got {y.size} "
                         f"and {s.size}")
    if np.isnan(s).any():
        raise ValueError("y_score: must not contain NaN")
    return y, s


def mid_ranks(values: ArrayLike) -> np.ndarray:
    """1-based ranks of ``values``, ties sharing the mean of their ranks.

    >>> mid_ranks([3.0, 1.0, 3.0, 2.0]).tolist()
    [3.5, 1.0, 3.5, 2.0]
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    order = np.argsort(v, kind="mergesort")
    sv = v[order]
    # Start index of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]])
    ends = np.r_[starts[1:], n]  # exclusive
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def roc_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Exact area under the ROC curve; NaN when only one class is present."""
    y, s = _check(y_true, y_score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = float(mid_ranks(s)[y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def average_precision(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Average precision as sklearn computes it; NaN when there is no positive."""
    y, s = _check(y_true, y_score)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    sy, ss = y[order], s[order]
    # One threshold per distinct score: the last index of each run of equal scores.
    last = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True])
    tp = np.cumsum(sy)[last].astype(np.float64)
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def card_precision_at_k(days: ArrayLike, cards: ArrayLike, y_true: ArrayLike,
                        y_score: ArrayLike, k: int = 100) -> float:
    """Mean over days of the share of compromised cards among the day's top ``k`` cards.

    Parameters
    ----------
    days
        The day of each transaction (any integer or string key: one group per value).
    cards
        The card of each transaction.
    y_true, y_score
        Label and score of each transaction.
    k
        Cards inspected per day. A day with fewer than ``k`` cards still divides by ``k``
        (the investigators' capacity, as in the Handbook). Ties at the k-th score are broken
        by card order, so the figure is deterministic.

    Returns
    -------
    float
        NaN when there are no transactions.
    """
    y, s = _check(y_true, y_score)
    d = np.asarray(days).ravel()
    c = np.asarray(cards).ravel()
    if not d.size == c.size == y.size:
        raise ValueError("days, cards, y_true and y_score: must have the same length")
    if y.size == 0:
        return float("nan")
    _, day_i = np.unique(d, return_inverse=True)
    _, card_i = np.unique(c, return_inverse=True)
    # One row per (day, card): max score, max label.
    order = np.lexsort((card_i, day_i))
    dd, cc = day_i[order], card_i[order]
    starts = np.flatnonzero(np.r_[True, (dd[1:] != dd[:-1]) | (cc[1:] != cc[:-1])])
    g_day, g_card = dd[starts], cc[starts]
    g_score = np.maximum.reduceat(s[order], starts)
    g_label = np.maximum.reduceat(y[order].astype(np.int8), starts)
    # Within each day, highest score first (then card order): keep the first k.
    o2 = np.lexsort((g_card, -g_score, g_day))
    gd = g_day[o2]
    day_start = np.flatnonzero(np.r_[True, gd[1:] != gd[:-1]])
    pos = np.arange(gd.size) - np.repeat(day_start, np.diff(np.r_[day_start, gd.size]))
    top = pos < k
    hits = np.bincount(gd[top], weights=g_label[o2][top], minlength=int(gd.max()) + 1)
    present = np.unique(gd)
    return float(np.mean(hits[present] / k))
