"""NAB's published scoring, as pure functions: windows, profiles, threshold sweep, normalisation.

A faithful re-implementation of the Numenta Anomaly Benchmark's scorer (NAB v1.1, the
"sweeper" that both optimises the threshold and scores the corpus):

- a row is a *detection* when its anomaly score is ``>= threshold``; one threshold for the whole
  corpus, chosen per profile to maximise the corpus total;
- the first ``min(floor(0.15 * n), 0.15 * 5000)`` rows of a file are probationary: not scored,
  neither as hits nor as false positives;
- inside a window only the best (i.e. the earliest) detection counts:
  ``tp_weight * scaled_sigmoid(pos) / scaled_sigmoid(-1)`` with
  ``pos = -(right - i + 1) / width`` (-1 at the left edge, ``-1/width`` at the right edge);
  a window with no detection costs ``-fn_weight``;
- a detection outside every window costs ``fp_weight * scaled_sigmoid(|prev_right - i| /
  (prev_width - 1))`` after a window, and the full ``-fp_weight`` before any window;
- normalised score ``100 * (S - S_null) / (S_perfect - S_null)``; the null detector never fires,
  the perfect one hits every window at its left edge (``S_perfect = windows * tp_weight``).

Rows are identified by their index in the file; a window covers the rows whose timestamps lie
within ``[start, end]`` (NAB's labeller aligns window edges to existing timestamps).

Examples
--------
>>> profile = Profile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)
>>> f = FileLabels("f", n_rows=100, windows=[(40, 59)])
>>> round(score_file(f, [1.0 if i == 40 else 0.0 for i in range(100)], profile, 0.5).score, 6)
1.0
>>> score_file(f, [0.0] * 100, profile, 0.5).score
-1.0
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PROBATION_FRACTION = 0.15
PROBATION_CAP_ROWS = 5000  # NAB: min(floor(0.15 * n), 0.15 * 5000) = at most 750 rows


@dataclass(frozen=True)
class Profile:
    """A NAB application profile: the weights of hits, false alarms and misses."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


@dataclass(frozen=True)
class FileLabels:
    """One data file's length and its anomaly windows as inclusive row-index ranges."""

    name: str
    n_rows: int
    windows: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class FileScore:
    """One file scored at one threshold.

    ``first_detections`` holds, per window, the index of its first scored detection (or None).
    Counts are of scored (non-probationary) rows, as NAB counts them.
    """

    score: float
    tp: int
    fp: int
    fn: int
    tn: int
    first_detections: list[int | None]


@dataclass(frozen=True)
class ThresholdScore:
    threshold: float
    score: float
    tp: int
    fp: int
    fn: int
    tn: int


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def scaled_sigmoid(position: float) -> float:
    """NAB's weighting curve: 0.98661 at -1 (window's left edge), 0 at 0, -1 from 3 on."""
    if position >= 3.0:
        return -1.0
    return 2.0 * sigmoid(-5.0 * position) - 1.0


MAX_TP = scaled_sigmoid(-1.0)


def probation_length(n_rows: int, fraction: float = PROBATION_FRACTION) -> int:
    """Rows at the start of a file that NAB does not score."""
    return int(min(math.floor(fraction * n_rows), fraction * PROBATION_CAP_ROWS))


def load_profiles(path: str | Path) -> list[Profile]:
    """Read NAB's ``config/profiles.json``."""
    raw = json.loads(Path(path).read_text())
    return [Profile(name, tp_weight=float(p["CostMatrix"]["tpWeight"]),
                    fp_weight=float(p["CostMatrix"]["fpWeight"]),
                    fn_weight=float(p["CostMatrix"]["fnWeight"]))
            for name, p in raw.items()]


def window_rows(timestamps: Sequence, windows: Iterable[Sequence]) -> list[tuple[int, int]]:
    """Map ``[[start, end], ...]`` (comparable with ``timestamps``, which are sorted) to row
    ranges: the first row at or after ``start`` to the last row at or before ``end``."""
    import bisect

    ts = list(timestamps)
    out = []
    for start, end in windows:
        lo = bisect.bisect_left(ts, start)
        hi = bisect.bisect_right(ts, end) - 1
        if hi >= lo:
            out.append((lo, hi))
    return sorted(out)


def row_labels(n_rows: int, windows: Iterable[tuple[int, int]]) -> list[int]:
    """1 for rows inside a window, else 0 (NAB's ``label`` column)."""
    labels = [0] * n_rows
    for lo, hi in windows:
        for i in range(lo, hi + 1):
            labels[i] = 1
    return labels


def sweep_weights(f: FileLabels, profile: Profile) -> list[tuple[float, int | None] | None]:
    """Per row: ``(weight if detected, window id or None)``, or None for probationary rows.

    The weight of a row inside a window is its true-positive credit; outside, its (negative)
    false-positive cost relative to the end of the previous window.
    """
    probation = probation_length(f.n_rows)
    out: list[tuple[float, int | None] | None] = []
    win_of = [None] * f.n_rows
    for wid, (lo, hi) in enumerate(f.windows):
        for i in range(lo, hi + 1):
            win_of[i] = wid
    prev: tuple[int, int] | None = None
    for i in range(f.n_rows):
        wid = win_of[i]
        if wid is not None:
            lo, hi = f.windows[wid]
            width = hi - lo + 1
            weight = scaled_sigmoid(-(hi - i + 1) / width) * profile.tp_weight / MAX_TP
            if i == hi:
                prev = (lo, hi)
        elif prev is None:
            weight = scaled_sigmoid(3.0) * profile.fp_weight
        else:
            lo, hi = prev
            width = hi - lo + 1
            position = abs(hi - i) / (width - 1) if width > 1 else 3.0
            weight = scaled_sigmoid(position) * profile.fp_weight
        out.append(None if i < probation else (weight, wid))
    return out


def score_file(f: FileLabels, scores: Sequence[float], profile: Profile,
               threshold: float) -> FileScore:
    """Score one file's anomaly scores at ``threshold`` (detection: ``score >= threshold``)."""
    if len(scores) != f.n_rows:
        raise ValueError(f"{f.name}: {len(scores)} scores for {f.n_rows} rows")
    weights = sweep_weights(f, profile)
    best: dict[int, float] = {}
    first: dict[int, int] = {}
    present: set[int] = set()
    total_fp = 0.0
    tp = fp = fn = tn = 0
    for i, (w, s) in enumerate(zip(weights, scores)):
        if w is None:
            continue
        weight, wid = w
        if wid is not None:
            present.add(wid)
        hit = s >= threshold
        if wid is None:
            if hit:
                fp += 1
                total_fp += weight
            else:
                tn += 1
        elif hit:
            tp += 1
            if wid not in first:
                first[wid] = i
                best[wid] = weight
        else:
            fn += 1
    score = total_fp + sum(best.get(wid, -profile.fn_weight) for wid in present)
    return FileScore(score, tp, fp, fn, tn,
                     [first.get(wid) for wid in range(len(f.windows))])


def sweep_thresholds(files: Sequence[FileLabels], scores: Sequence[Sequence[float]],
                     profile: Profile) -> list[ThresholdScore]:
    """The corpus score at every distinct threshold, highest threshold first.

    The first entry (threshold 1.1) detects nothing; each following one detects every scored
    row whose anomaly score is at or above it, across all files.
    """
    rows: list[tuple[float, float, tuple[int, int] | None]] = []
    parts: dict[tuple[int, int], float] = {}
    for fi, (f, s) in enumerate(zip(files, scores)):
        if len(s) != f.n_rows:
            raise ValueError(f"{f.name}: {len(s)} scores for {f.n_rows} rows")
        for w, a in zip(sweep_weights(f, profile), s):
            if w is None:
                continue
            weight, wid = w
            key = None if wid is None else (fi, wid)
            if key is not None:
                parts[key] = -profile.fn_weight
            rows.append((float(a), weight, key))
    rows.sort(key=lambda r: -r[0])
    tn = sum(1 for r in rows if r[2] is None)
    fn = len(rows) - tn
    tp = fp = 0
    fp_total = 0.0
    window_total = sum(parts.values())
    out: list[ThresholdScore] = []
    threshold = 1.1
    for a, weight, key in rows:
        if a != threshold:
            out.append(ThresholdScore(threshold, fp_total + window_total, tp, fp, fn, tn))
            threshold = a
        if key is None:
            fp, tn = fp + 1, tn - 1
            fp_total += weight
        else:
            tp, fn = tp + 1, fn - 1
            if weight > parts[key]:
                window_total += weight - parts[key]
                parts[key] = weight
    out.append(ThresholdScore(threshold, fp_total + window_total, tp, fp, fn, tn))
    return out


def optimise_threshold(files: Sequence[FileLabels], scores: Sequence[Sequence[float]],
                       profile: Profile) -> ThresholdScore:
    """The threshold that maximises the corpus score (the highest such threshold on ties)."""
    return max(sweep_thresholds(files, scores, profile), key=lambda t: t.score)


def null_score(files: Sequence[FileLabels], profile: Profile) -> float:
    """The score of a detector that never fires: every scored window is a miss."""
    return optimise_threshold(files, [[0.0] * f.n_rows for f in files], profile).score


def perfect_score(files: Sequence[FileLabels], profile: Profile) -> float:
    """Every window hit at its left edge: ``windows * tp_weight``."""
    return sum(len(f.windows) for f in files) * profile.tp_weight


def normalised(score: float, null: float, perfect: float) -> float:
    """NAB's normalised score: 0 for the null detector, 100 for the perfect one."""
    return 100.0 * (score - null) / (perfect - null)
