"""``riskstream eval nab``: the metric detector over a NAB-layout corpus, scored as NAB scores.

Every file runs through a fresh :class:`agents.anomaly.MetricScorer` (the worker's own code,
through ``score_record``, one event per row, in file order: no look-ahead), with the one default
parameter set for every file. The scores are written as NAB result files
(``OUT/NAME/<category>/NAME_<file>.csv``: ``timestamp,value,anomaly_score,label``), then scored
with :mod:`pipelines.nab_scoring`: the threshold is optimised per profile over the whole corpus,
and each profile's total is normalised between the null and the perfect detector.

Alarm figures, at the standard profile's threshold and on scored (post-probation) rows:

- an *alarm* is a detection whose previous row was not one (one alarm per run of detections,
  as an on-call engineer sees it once the alert rule's cooldown folds the run);
- precision: the share of alarms that start inside an anomaly window;
- recall: the share of scored windows with at least one detection;
- delay: rows from a window's left edge to its first detection, averaged over detected
  windows (also as a fraction of the window's width, NAB's own measure of earliness).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from agents.anomaly import MetricScorer
from pipelines.nab_scoring import (
    FileLabels, Profile, load_profiles, normalised, null_score, optimise_threshold,
    perfect_score, probation_length, row_labels, score_file, window_rows,
)

DEFAULT_PROFILES = [
    Profile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0),
    Profile("reward_low_FP_rate", tp_weight=1.0, fp_weight=0.22, fn_weight=1.0),
    Profile("reward_low_FN_rate", tp_weight=1.0, fp_weight=0.11, fn_weight=2.0),
]


def _epoch_ms(text: str) -> int:
    """``YYYY-MM-DD HH:MM:SS[.ffffff]`` (UTC, NAB's format) to epoch milliseconds."""
    return int(datetime.fromisoformat(text.strip()).replace(tzinfo=UTC).timestamp() * 1000)


def read_series(path: Path) -> tuple[list[str], list[int], list[float]]:
    """A NAB data file's raw timestamps, event times (ms) and values, in file order."""
    stamps, times, values = [], [], []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            stamps.append(row["timestamp"])
            times.append(_epoch_ms(row["timestamp"]))
            values.append(float(row["value"]))
    return stamps, times, values


def detect(times: list[int], values: list[float], series: str) -> list[float]:
    """Run a fresh detector over one series, one event per row, and return its scores."""
    scorer = MetricScorer()
    score = scorer.score_record
    out = []
    for i, (t, v) in enumerate(zip(times, values)):
        event = {"event_id": f"{series}:{i}", "event_time": t, "host": "nab",
                 "service": "nab", "metric": series, "value": v}
        out.append(score(event, t)["score"])
    return out


def alarm_figures(f: FileLabels, scores: list[float], threshold: float) -> dict:
    """Alarms (runs of detections), the windows they hit, and delays, for one file."""
    start = probation_length(f.n_rows)
    inside = row_labels(f.n_rows, f.windows)
    alarms = hits = 0
    prev = False
    for i in range(start, f.n_rows):
        det = scores[i] >= threshold
        if det and not prev:
            alarms += 1
            hits += inside[i]
        prev = det
    windows = detected = 0
    delays, fractions = [], []
    for lo, hi in f.windows:
        if hi < start:
            continue
        windows += 1
        first = next((i for i in range(max(lo, start), hi + 1) if scores[i] >= threshold), None)
        if first is not None:
            detected += 1
            delays.append(first - lo)
            fractions.append((first - lo) / (hi - lo + 1))
    return {"alarms": alarms, "alarms_in_window": hits, "windows": windows,
            "windows_detected": detected, "delays": delays, "delay_fractions": fractions}


def run(args, settings=None) -> int:
    data_dir = Path(args.data)
    name = args.name
    if not name.isalnum():
        print(f"--name: must be alphanumeric (NAB result file names), got {name!r}",
              file=sys.stderr)
        return 2
    labels_path = data_dir / "labels" / "combined_windows.json"
    if not (data_dir / "data").is_dir() or not labels_path.is_file():
        print(f"--data: {data_dir} is not a NAB directory (needs data/ and "
              "labels/combined_windows.json)", file=sys.stderr)
        return 2
    windows_by_file = json.loads(labels_path.read_text())
    profiles_path = data_dir / "config" / "profiles.json"
    profiles = load_profiles(profiles_path) if profiles_path.is_file() else DEFAULT_PROFILES
    paths = sorted((data_dir / "data").glob("*/*.csv"))
    if not paths:
        print(f"--data: no CSV files under {data_dir / 'data'}", file=sys.stderr)
        return 2

    out_root = Path(args.out) / name
    files: list[FileLabels] = []
    all_scores: list[list[float]] = []
    n_rows = 0
    detect_s = 0.0
    t_start = time.perf_counter()
    for k, path in enumerate(paths, 1):
        rel = f"{path.parent.name}/{path.name}"
        stamps, times, values = read_series(path)
        limits = [(_epoch_ms(a), _epoch_ms(b)) for a, b in windows_by_file.get(rel, [])]
        f = FileLabels(rel, len(times), window_rows(times, limits))
        t0 = time.perf_counter()
        scores = detect(times, values, path.stem)
        detect_s += time.perf_counter() - t0
        if any(not 0.0 <= s <= 1.0 for s in scores):
            raise ValueError(f"{rel}: the detector returned a score outside [0, 1]")
        labels = row_labels(f.n_rows, f.windows)
        target = out_root / path.parent.name / f"{name}_{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["timestamp", "value", "anomaly_score", "label"])
            for row in zip(stamps, values, scores, labels):
                w.writerow(row)
        files.append(f)
        all_scores.append(scores)
        n_rows += f.n_rows
        print(f"[{k}/{len(paths)}] {rel}: {f.n_rows} rows, {len(f.windows)} windows",
              file=sys.stderr, flush=True)

    figures: dict = {"detector": name, "model_version": MetricScorer.model_version,
                     "files": len(files), "rows": n_rows,
                     "windows": sum(len(f.windows) for f in files),
                     "detector_samples_per_s": round(n_rows / detect_s) if detect_s else None,
                     "profiles": {}}
    for profile in profiles:
        best = optimise_threshold(files, all_scores, profile)
        null, perfect = null_score(files, profile), perfect_score(files, profile)
        figures["profiles"][profile.name] = {
            "normalised": round(normalised(best.score, null, perfect), 2),
            "raw": round(best.score, 4), "null": round(null, 4), "perfect": perfect,
            "threshold": best.threshold, "tp_rows": best.tp, "fp_rows": best.fp}

    standard = next((p for p in profiles if p.name == "standard"), profiles[0])
    threshold = figures["profiles"][standard.name]["threshold"]
    per_file = {}
    totals = {"alarms": 0, "alarms_in_window": 0, "windows": 0, "windows_detected": 0}
    delays: list[int] = []
    fractions: list[float] = []
    for f, scores in zip(files, all_scores):
        a = alarm_figures(f, scores, threshold)
        per_file[f.name] = {"score_standard": round(score_file(f, scores, standard,
                                                                threshold).score, 4),
                            "alarms": a["alarms"], "alarms_in_window": a["alarms_in_window"],
                            "windows": a["windows"], "windows_detected": a["windows_detected"]}
        for key in totals:
            totals[key] += a[key]
        delays += a["delays"]
        fractions += a["delay_fractions"]
    figures["alarms"] = {
        "threshold": threshold, **totals,
        "precision": round(totals["alarms_in_window"] / totals["alarms"], 4)
        if totals["alarms"] else None,
        "recall": round(totals["windows_detected"] / totals["windows"], 4)
        if totals["windows"] else None,
        "mean_delay_rows": round(sum(delays) / len(delays), 1) if delays else None,
        "mean_delay_window_fraction": round(sum(fractions) / len(fractions), 3)
        if fractions else None,
    }
    figures["per_file"] = per_file
    figures["elapsed_s"] = round(time.perf_counter() - t_start, 1)

    print(f"NAB results for {name!r} ({len(files)} files, {n_rows} rows, "
          f"{figures['windows']} windows), written to {out_root}")
    for pname, p in figures["profiles"].items():
        print(f"  {pname:20s} normalised {p['normalised']:6.2f}  (raw {p['raw']:.3f}, "
              f"threshold {p['threshold']:.4f})")
    al = figures["alarms"]
    print(f"  alarms at the standard threshold: precision {al['precision']}, recall "
          f"{al['recall']} ({al['windows_detected']}/{al['windows']} windows), mean delay "
          f"{al['mean_delay_rows']} rows ({al['mean_delay_window_fraction']} of a window)")
    print(f"  detector: {figures['detector_samples_per_s']} samples/s")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(figures, indent=2))
    return 0
