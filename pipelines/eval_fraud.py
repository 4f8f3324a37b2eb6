"""``riskstream eval fraud``: the fraud scorer on labelled data, without a broker.

The stream goes through the worker's own code (``agents/fraud.py``) in event order: every
event is scored first, and its label is learned only once it is known, ``label_delay`` after
the event's time (the Fraud Detection Handbook's protocol: 7 days). Events in the first
``warmup`` of event time are learned from but left out of the figures.

Inputs
------
- the Fraud Detection Handbook layout (``TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID,
  TERMINAL_ID, TX_AMOUNT, ..., TX_FRAUD``; a Parquet file, a directory of them, or CSV):
  customers are cards, terminals are merchants, the other fields take constant defaults;
- riskstream's transaction schema with a ``label`` column (a lake export of
  ``scored_transactions`` plus ``label``);
- ``--simulate N``: N messages of ``pipelines/simulator.py`` (transactions, applications and
  their labels). Its labels arrive as in production, ``label_delay_s`` after the event, for
  every fraud and a few genuine events; an event nobody labels is genuine and is learned as
  such when its ``label_ttl`` passes. Both streams are evaluated.

Figures: exact ROC AUC and average precision (``pipelines/metrics_exact.py``), card
precision@100 (per day; a card's daily score is the max of its transactions'), the Brier
score and the decisions' shares, a per-week table, and the speed of the scoring path alone
(features, score, learn: the time spent inside the scorer) in events per second.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.metrics_exact import average_precision, card_precision_at_k, roc_auc

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
PROGRESS_EVERY = 100_000
CHUNK_ROWS = 100_000
HANDBOOK_COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID",
                    "TX_AMOUNT", "TX_FRAUD")
# riskstream transaction fields (schemas/transaction.py) and their defaults when a file
# lacks them.
TX_DEFAULTS: dict[str, Any] = {
    "account_id": None, "mcc": "5999", "currency": "EUR", "channel": "pos", "country": "FR",
    "status": "approved", "device_id": None, "ip": None,
}
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": DAY_MS, "w": WEEK_MS}


class EvalError(ValueError):
    """The evaluation's input is unusable; the message says what to change."""


def parse_duration_ms(text: str | float) -> int:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"250ms"``, ``"2w"``; a bare number is seconds.

    >>> parse_duration_ms("7d"), parse_duration_ms("90s"), parse_duration_ms("0")
    (604800000, 90000, 0)
    """
    if isinstance(text, (int, float)):
        return int(text * 1000)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|d|w)?\s*", str(text))
    if m is None:
        raise EvalError(f"duration: expected e.g. 7d, 12h, 30m, 45s, got {text!r}")
    return int(float(m.group(1)) * _UNITS_MS[m.group(2) or "s"])


# ------------------------------------------------------------------------------- inputs

@dataclass
class Stream:
    """Events in event order, as columns (the dicts are built one chunk at a time)."""

    columns: dict[str, np.ndarray]  # riskstream field -> values, sorted by event_time
    labels: np.ndarray              # 0/1 per event
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def events(self) -> Iterator[dict]:
        names = list(self.columns)
        n = len(self)
        for start in range(0, n, CHUNK_ROWS):
            cols = [self.columns[k][start:start + CHUNK_ROWS].tolist() for k in names]
            for row in zip(*cols):
                yield dict(zip(names, row))


def _read_table(path: Path):
    import pandas as pd

    if path.is_dir():
        files = sorted(path.glob("*.parquet")) or sorted(path.glob("*.csv"))
        if not files:
            raise EvalError(f"--data {path}: no .parquet or .csv file in this directory")
        if files[0].suffix == ".csv":
            return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
        return pd.read_parquet(path)
    if not path.exists():
        raise EvalError(f"--data {path}: no such file or directory")
    if path.suffix == ".csv":
        return pd.read_csv(path)
    return pd.read_parquet(path)


def _ms(series) -> np.ndarray:
    """Event times as int ms since the epoch (naive datetimes are UTC)."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(series):
        s = series.dt.tz_convert("UTC").dt.tz_localize(None) if series.dt.tz is not None \
            else series
        return s.to_numpy().astype("datetime64[ms]").astype(np.int64)
    if pd.api.types.is_integer_dtype(series):
        return series.to_numpy(np.int64)
    return pd.to_datetime(series, utc=True).dt.tz_localize(None).to_numpy() \
        .astype("datetime64[ms]").astype(np.int64)


def load_stream(path: str | Path, limit: int | None = None) -> Stream:
    """Read a labelled transactions file (Handbook layout or riskstream schema + ``label``)."""
    path = Path(path)
    df = _read_table(path)
    if set(HANDBOOK_COLUMNS) <= set(df.columns):
        t = _ms(df["TX_DATETIME"])
        order = np.argsort(t, kind="stable")
        if limit is not None:
            order = order[:limit]
        card = df["CUSTOMER_ID"].to_numpy()[order].astype(str)
        cols: dict[str, np.ndarray] = {
            "event_id": df["TRANSACTION_ID"].to_numpy()[order].astype(str),
            "event_time": t[order],
            "card_id": card,
            "account_id": card,
            "merchant_id": df["TERMINAL_ID"].to_numpy()[order].astype(str),
            "amount": df["TX_AMOUNT"].to_numpy(np.float64)[order],
        }
        n = len(order)
        for k, v in TX_DEFAULTS.items():
            if k not in cols:
                cols[k] = np.full(n, v, dtype=object)
        return Stream(cols, df["TX_FRAUD"].to_numpy()[order].astype(np.int8), "handbook")
    required = {"event_id", "event_time", "card_id", "merchant_id", "amount", "label"}
    missing = required - set(df.columns)
    if missing:
        raise EvalError(
            f"--data {path}: neither the Fraud Detection Handbook layout "
            f"({', '.join(HANDBOOK_COLUMNS)}) nor riskstream's transaction schema with a "
            f"'label' column: missing {', '.join(sorted(missing))}")
    t = _ms(df["event_time"])
    order = np.argsort(t, kind="stable")
    if limit is not None:
        order = order[:limit]
    n = len(order)
    cols = {"event_id": df["event_id"].to_numpy()[order].astype(str), "event_time": t[order]}
    for k in ("card_id", "merchant_id", "amount", *TX_DEFAULTS):
        if k in df.columns:
            cols[k] = df[k].to_numpy()[order]
        elif k == "account_id":
            cols[k] = cols["card_id"]
        else:
            cols[k] = np.full(n, TX_DEFAULTS[k], dtype=object)
    cols["amount"] = cols["amount"].astype(np.float64)
    labels = df["label"].fillna(0).to_numpy()[order].astype(np.int8)
    return Stream(cols, labels, "riskstream")


# --------------------------------------------------------------------------- the replay

@dataclass
class Replay:
    """What one pass over a stream produced (the figures are computed from it)."""

    scores: np.ndarray
    labels: np.ndarray
    times: np.ndarray
    keys: np.ndarray            # card (or applicant) per event, for card precision
    decisions: np.ndarray
    scoring_s: float            # time inside the scorer (score, learn): the scoring path
    wall_s: float
    learned: int = 0
    unmatched: int = 0
    stats: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)  # the scorer's arguments (``params()``)
    merchants: np.ndarray | None = None  # per event, for the visibility of fraud to labels
    label_delay_ms: int | None = None


def _progress(done: int, total: int, scoring_s: float, wall_s: float, t_ms: int) -> None:
    day = time.strftime("%Y-%m-%d", time.gmtime(t_ms / 1000))
    print(f"[eval fraud] {done:,}/{total:,} events ({100 * done / max(total, 1):.0f} %), "
          f"event day {day}, scoring path {done / max(scoring_s, 1e-9):,.0f} ev/s (CPU), "
          f"wall {wall_s:.0f} s", file=sys.stderr, flush=True)


def _clock_pair_s(clock, n: int = 20_000) -> float:
    """The cost of one pair of ``clock()`` reads, taken out of the measured scoring time."""
    t0 = clock()
    for _ in range(n):
        clock()
        clock()
    return max(0.0, (clock() - t0) / n)


def replay_file(stream: Stream, scorer, *, label_delay_ms: int, progress: bool = True
                ) -> Replay:
    """Score every event in order; release each label ``label_delay_ms`` after its event."""
    n = len(stream)
    scores = np.empty(n, dtype=np.float64)
    decisions = np.empty(n, dtype=object)
    labels = stream.labels
    times = stream.columns["event_time"]
    pending: deque[tuple[int, str, int]] = deque()  # (known at, event id, label): FIFO
    score_record, learn_label = scorer.score_record, scorer.learn_label
    # The scoring path's speed is its CPU time (this thread's), so that other processes on a
    # shared machine do not count against it; the clock reads' own cost (~1 us a pair) is
    # taken out at the end.
    clock, wall = time.thread_time, time.perf_counter
    pair_s = _clock_pair_s(clock)
    spent = 0.0
    learned = unmatched = 0
    wall0 = wall()
    for i, event in enumerate(stream.events()):
        t = event["event_time"]
        t0 = clock()
        while pending and pending[0][0] <= t:
            known_at, event_id, label = pending.popleft()
            if learn_label(event_id, label, known_at):
                learned += 1
            else:
                unmatched += 1
        record = score_record(event, t)
        spent += clock() - t0
        scores[i] = record["score"]
        decisions[i] = record["decision"]
        pending.append((t + label_delay_ms, event["event_id"], int(labels[i])))
        if progress and (i + 1) % PROGRESS_EVERY == 0:
            _progress(i + 1, n, spent - (i + 1) * pair_s, wall() - wall0, t)
    spent = max(spent - n * pair_s, 1e-9)
    return Replay(scores, labels, times, stream.columns["card_id"], decisions, spent,
                  wall() - wall0, learned, unmatched, scorer.stats(), scorer.params(),
                  merchants=stream.columns["merchant_id"], label_delay_ms=label_delay_ms)


# -------------------------------------------------------------------------- the figures

def figures(r: Replay, *, warmup_ms: int, k: int = 100) -> dict[str, Any]:
    """The figures over the events after ``warmup_ms`` of event time, and per week."""
    if len(r.times) == 0:
        raise EvalError("no events to evaluate")
    start = int(r.times[0]) + warmup_ms
    keep = r.times >= start
    if not keep.any():
        raise EvalError(f"the warm-up ({warmup_ms / DAY_MS:g} days) covers the whole stream: "
                        "pass a shorter --warmup")
    y, s, t, cards = r.labels[keep], r.scores[keep], r.times[keep], r.keys[keep]
    days = t // DAY_MS
    n = int(keep.sum())
    out: dict[str, Any] = {
        "n_events": n,
        "n_fraud": int(y.sum()),
        "roc_auc": roc_auc(y, s),
        "average_precision": average_precision(y, s),
        f"card_precision_at_{k}": card_precision_at_k(days, cards, y, s, k),
        "brier": float(np.mean((s - y) ** 2)),
        "events_per_s": len(r.times) / r.scoring_s if r.scoring_s > 0 else float("nan"),
        "wall_s": r.wall_s,
        "n_events_replayed": len(r.times),
        "labels_learned": r.learned,
        "labels_unmatched": r.unmatched,
        "scorer": r.stats,
        "scorer_params": r.params,
    }
    dec = r.decisions[keep]
    out["decisions"] = {
        d: {"share": float(np.mean(dec == d)),
            "fraud_rate": float(y[dec == d].mean()) if (dec == d).any() else None}
        for d in ("approve", "review", "decline")}
    weeks = []
    week = (t - start) // WEEK_MS
    for w in np.unique(week):
        m = week == w
        weeks.append({
            "week": int(w) + 1,
            "start": time.strftime("%Y-%m-%d", time.gmtime((start + int(w) * WEEK_MS) / 1000)),
            "n_events": int(m.sum()), "n_fraud": int(y[m].sum()),
            "roc_auc": roc_auc(y[m], s[m]), "average_precision": average_precision(y[m], s[m]),
            f"card_precision_at_{k}": card_precision_at_k(days[m], cards[m], y[m], s[m], k),
        })
    out["weeks"] = weeks
    if r.merchants is not None and r.label_delay_ms is not None:
        out["fraud_visibility"] = fraud_visibility(
            r.times, r.merchants, r.labels, r.scores, keep, label_delay_ms=r.label_delay_ms)
    return out


def fraud_visibility(times: np.ndarray, merchants: np.ndarray, labels: np.ndarray,
                     scores: np.ndarray, keep: np.ndarray, *, label_delay_ms: int,
                     window_ms: int = 30 * DAY_MS) -> dict[str, Any]:
    """How much of the fraud label feedback could see, and how each part was ranked.

    A fraud is *seen* when a fraud at the same merchant (terminal) was labelled before it
    happened, within ``window_ms`` (its label known: event time + delay <= this event's
    time). The others are new compromises: no label says anything about them yet, so only the
    transaction itself (amount, card history) can tell them apart. Each part's ROC AUC is
    against every genuine scored event; ``auc_bound`` is the ROC AUC if every seen fraud were
    ranked above every genuine event and the unseen ones stayed as they were: how far better
    use of the labels could go.
    """
    fraud = np.flatnonzero(labels == 1)
    seen = np.zeros(len(labels), dtype=bool)
    by_merchant: dict[Any, list[int]] = {}
    for i in fraud:
        by_merchant.setdefault(merchants[i], []).append(i)
    for idx in by_merchant.values():
        t = times[idx]                 # event order: already sorted
        known = np.searchsorted(t, t - label_delay_ms, side="right")   # labelled by then
        recent = np.searchsorted(t, t - window_ms, side="left")
        seen[idx] = known > recent
    y, s = labels[keep], scores[keep]
    genuine = s[y == 0]
    out: dict[str, Any] = {"window_days": window_ms / DAY_MS}
    n_fraud = int(y.sum())
    for name, part in (("seen", seen[keep] & (y == 1)), ("unseen", ~seen[keep] & (y == 1))):
        n = int(part.sum())
        auc = (roc_auc(np.r_[np.ones(n), np.zeros(len(genuine))], np.r_[s[part], genuine])
               if n and len(genuine) else float("nan"))
        out[name] = {"n_fraud": n, "share": n / n_fraud if n_fraud else float("nan"),
                     "roc_auc_vs_genuine": auc}
    u = out["unseen"]
    out["auc_bound"] = (1.0 - u["share"] * (1.0 - u["roc_auc_vs_genuine"])
                        if u["n_fraud"] else 1.0)
    return out


def _fmt(x: Any) -> str:
    return "   n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.4f}"


def print_figures(name: str, f: dict[str, Any], k: int = 100) -> None:
    cp = f"card_precision_at_{k}"
    print(f"\n{name}: {f['n_events']:,} events scored ({f['n_fraud']:,} fraud) after the "
          f"warm-up, {f['n_events_replayed']:,} replayed")
    print(f"  ROC AUC            {_fmt(f['roc_auc'])}")
    print(f"  average precision  {_fmt(f['average_precision'])}")
    print(f"  card precision@{k} {_fmt(f[cp])}")
    print(f"  Brier score        {_fmt(f['brier'])}")
    print(f"  scoring path       {f['events_per_s']:,.0f} events/s of CPU on one core (features, "
          f"score, learn); wall {f['wall_s']:.1f} s for the whole replay")
    print("  decisions          " + ", ".join(
        f"{d} {v['share']:.2%} (fraud {_fmt(v['fraud_rate'])})"
        for d, v in f["decisions"].items()))
    print(f"  labels learned {f['labels_learned']:,}, unmatched {f['labels_unmatched']:,}")
    v = f.get("fraud_visibility")
    if v:
        print(f"  fraud seen by label feedback (a fraud at its merchant labelled in the last "
              f"{v['window_days']:g} days): {v['seen']['share']:.1%}, ranked with ROC AUC "
              f"{_fmt(v['seen']['roc_auc_vs_genuine'])} against the genuine events")
        print(f"  fraud unseen (a new compromise, no label yet): {v['unseen']['share']:.1%}, "
              f"ROC AUC {_fmt(v['unseen']['roc_auc_vs_genuine'])}; ranking every seen fraud "
              f"first would give ROC AUC {_fmt(v['auc_bound'])}")
    print(f"\n  {'week':>4} {'start':>10} {'events':>9} {'fraud':>6} {'AUC':>7} {'AP':>7} "
          f"{'CP@' + str(k):>7}")
    for w in f["weeks"]:
        print(f"  {w['week']:>4} {w['start']:>10} {w['n_events']:>9,} {w['n_fraud']:>6,} "
              f"{_fmt(w['roc_auc']):>7} {_fmt(w['average_precision']):>7} {_fmt(w[cp]):>7}")


# ------------------------------------------------------------------------ the simulator

def simulate(n_messages: int, *, seed: int = 7, label_ttl_ms: int | None = None,
             progress: bool = True, sim_overrides: dict | None = None,
             scorer_params: dict | None = None) -> dict[str, Replay]:
    """Replay ``n_messages`` of the simulator (transactions, applications, labels) through
    both scorers, labels arriving when the simulator sends them.

    The simulator labels every fraud and a few genuine events; the rest are genuine, and the
    scorers learn them as such when ``label_ttl_ms`` (default: 4x the label delay) passes.
    """
    from itertools import islice

    import orjson
    from pydantic import SecretStr

    from agents.fraud import ApplicationScorer, TransactionScorer
    from pipelines.settings import PiiSettings, ValidationSettings
    from pipelines.simulator import SimConfig, Simulator
    from pipelines.topics import APPLICATIONS, TRANSACTIONS
    from schemas.validation import Rejection, Validator

    config = SimConfig(seed=seed, share_transactions=0.85, share_applications=0.15,
                       share_metrics=0.0, malformed_share=0.0, duplicate_share=0.0,
                       **(sim_overrides or {}))
    ttl_ms = label_ttl_ms if label_ttl_ms is not None else int(4 * config.label_delay_s * 1000)
    start_ms = 1_790_000_000_000
    sim = Simulator(config, start_ms)
    validator = Validator(ValidationSettings(max_age_s=10 ** 9),
                          PiiSettings(hmac_key=SecretStr("riskstream-eval-" * 2)))
    # the scorers' arguments (``champion.scorer_params``); the label TTL is the simulator's
    params = {**(scorer_params or {}), "label_ttl_s": ttl_ms / 1000}
    scorers = {TRANSACTIONS: TransactionScorer(**params), APPLICATIONS: ApplicationScorer(**params)}
    key_field = {TRANSACTIONS: "card_id", APPLICATIONS: "applicant_id"}
    rows: dict[str, dict[str, list]] = {s: {"id": [], "score": [], "t": [], "key": [],
                                            "decision": []} for s in scorers}
    fraud: dict[str, set[str]] = {s: set() for s in scorers}
    spent = {s: 0.0 for s in scorers}
    learned = {s: 0 for s in scorers}
    unmatched = {s: 0 for s in scorers}
    clock, wall = time.thread_time, time.perf_counter
    pair_s = _clock_pair_s(clock)
    calls = {s: 0 for s in scorers}
    wall0 = wall()
    for i, msg in enumerate(islice(sim.messages(), n_messages)):
        if msg.kind == "label":
            lab = orjson.loads(msg.value)
            stream = lab["target_stream"]
            if stream not in scorers:
                continue
            if lab["label"]:
                fraud[stream].add(lab["target_event_id"])
            t0 = clock()
            ok = scorers[stream].learn_label(lab["target_event_id"], lab["label"],
                                             msg.event_time_ms)
            spent[stream] += clock() - t0
            calls[stream] += 1
            learned[stream] += ok
            unmatched[stream] += not ok
            continue
        if msg.kind != "valid" or msg.topic not in scorers:
            continue
        event = validator.validate(msg.topic, msg.value, now_ms=msg.event_time_ms)
        if isinstance(event, Rejection):
            raise EvalError(f"simulator event rejected: {event.reason}")
        event.pop("stream", None)
        t0 = clock()
        record = scorers[msg.topic].score_record(event, event["event_time"])
        spent[msg.topic] += clock() - t0
        calls[msg.topic] += 1
        r = rows[msg.topic]
        r["id"].append(event["event_id"])
        r["score"].append(record["score"])
        r["t"].append(event["event_time"])
        r["key"].append(event[key_field[msg.topic]])
        r["decision"].append(record["decision"])
        if progress and (i + 1) % PROGRESS_EVERY == 0:
            print(f"[eval fraud] simulator: {i + 1:,}/{n_messages:,} messages, "
                  f"wall {wall() - wall0:.0f} s", file=sys.stderr, flush=True)
    wall_s = wall() - wall0
    spent = {s: max(spent[s] - calls[s] * pair_s, 1e-9) for s in scorers}
    out = {}
    for stream, r in rows.items():
        labels = np.fromiter((e in fraud[stream] for e in r["id"]), dtype=np.int8,
                             count=len(r["id"]))
        out[stream] = Replay(np.asarray(r["score"], dtype=np.float64), labels,
                             np.asarray(r["t"], dtype=np.int64), np.asarray(r["key"]),
                             np.asarray(r["decision"], dtype=object), spent[stream], wall_s,
                             learned[stream], unmatched[stream], scorers[stream].stats(),
                             scorers[stream].params())
    return out


# ------------------------------------------------------------------------------ command

def run(args, settings=None) -> int:
    """The ``riskstream eval fraud`` command; 0 on success, 2 on unusable input."""
    simulate_n = getattr(args, "simulate", None)
    data = getattr(args, "data", None)
    try:
        if (simulate_n is None) == (data is None):
            raise EvalError("pass exactly one of --data PATH and --simulate N")
        delay_ms = parse_duration_ms(args.label_delay)
        ttl = getattr(args, "label_ttl", None)
        ttl_ms = parse_duration_ms(ttl) if ttl is not None else None
        # the worker's scorer arguments (RISKSTREAM_MODEL_*), written with the figures
        from agents.champion import scorer_params

        params = scorer_params(settings.model) if settings is not None else {}
        results: dict[str, Any] = {}
        if data is not None:
            from agents.fraud import TransactionScorer

            warmup_ms = parse_duration_ms(args.warmup if args.warmup is not None else "7d")
            stream = load_stream(data, args.limit)
            print(f"[eval fraud] {len(stream):,} events from {data} ({stream.source} layout), "
                  f"label delay {delay_ms / DAY_MS:g} d, warm-up {warmup_ms / DAY_MS:g} d",
                  file=sys.stderr, flush=True)
            kwargs = {"label_ttl_s": ttl_ms / 1000} if ttl_ms is not None else {}
            scorer = TransactionScorer(**{**params, **kwargs})
            if ttl_ms is not None and ttl_ms < delay_ms:
                print("[eval fraud] warning: --label-ttl is shorter than --label-delay: "
                      "events are learned as genuine before their label", file=sys.stderr)
            replay = replay_file(stream, scorer, label_delay_ms=delay_ms)
            f = figures(replay, warmup_ms=warmup_ms)
            f.update(source=str(data), layout=stream.source, label_delay_ms=delay_ms,
                     warmup_ms=warmup_ms, model_version=scorer.model_version)
            print_figures("transactions", f)
            results = f
        else:
            warmup_ms = parse_duration_ms(args.warmup if args.warmup is not None else "10m")
            replays = simulate(int(simulate_n), label_ttl_ms=ttl_ms, scorer_params=params)
            for stream_name, replay in replays.items():
                f = figures(replay, warmup_ms=warmup_ms)
                f.update(source=f"simulator:{simulate_n}", warmup_ms=warmup_ms)
                print_figures(f"simulator {stream_name}", f)
                results[stream_name] = f
            # the transaction figures at the top level, like a file's
            results = {**results["transactions"], "streams": results}
    except EvalError as error:
        print(f"riskstream eval fraud: {error}", file=sys.stderr)
        return 2
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(_plain(results), indent=2, allow_nan=False))
    return 0


def _plain(o: Any) -> Any:
    """JSON-ready: numpy scalars as Python numbers, NaN (an undefined figure) as null."""
    if isinstance(o, dict):
        return {k: _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and math.isnan(o):
        return None
    return o
