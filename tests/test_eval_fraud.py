"""Exact metrics against hand-computed values, and the fraud evaluation end to end (small)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest

from agents.fraud import TransactionScorer
from pipelines.eval_fraud import (
    EvalError, figures, fraud_visibility, load_stream, parse_duration_ms, replay_file,
)
from pipelines.metrics_exact import average_precision, card_precision_at_k, mid_ranks, roc_auc

# ------------------------------------------------------------------------- exact metrics

def test_auc_counts_pairs_and_ties_count_half():
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of the 4 pairs ordered right
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    # pos 0.5 ties neg 0.5 (1/2), beats 0.1 (1); pos 0.9 beats both (2): 3.5 / 4
    assert roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.1]) == 0.875
    assert roc_auc([1, 1, 0], [0.2, 0.2, 0.2]) == 0.5  # all tied: chance
    assert roc_auc([0, 1], [0.9, 0.1]) == 0.0
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2]))  # one class only


def test_auc_equals_the_brute_force_pair_count():
    rng = random.Random(1)
    y = [int(rng.random() < 0.3) for _ in range(300)]
    s = [round(rng.random(), 1) for _ in y]  # many ties
    pos = [v for v, t in zip(s, y) if t]
    neg = [v for v, t in zip(s, y) if not t]
    pairs = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    assert roc_auc(y, s) == pytest.approx(pairs / (len(pos) * len(neg)), abs=1e-12)


def test_average_precision_is_sklearns_step_sum():
    # desc: 0.8 (+) P=1 R=.5; 0.4 (-); 0.35 (+) P=2/3 R=1: AP = .5*1 + .5*2/3
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(5 / 6)
    # a tie is one threshold: 0.9 (+) P=1 R=.5; {0.5 +, 0.5 -} P=2/3 R=1
    assert average_precision([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.1]) == pytest.approx(5 / 6)
    assert average_precision([1, 0, 0], [0.1, 0.5, 0.9]) == pytest.approx(1 / 3)
    assert average_precision([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0
    assert average_precision([1, 0, 1, 0], [0.3, 0.3, 0.3, 0.3]) == 0.5  # all tied: prevalence
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))


def test_average_precision_brute_force_over_thresholds():
    rng = random.Random(2)
    y = [int(rng.random() < 0.2) for _ in range(200)]
    s = [round(rng.random(), 2) for _ in y]
    n_pos, ap, prev_recall = sum(y), 0.0, 0.0
    for thr in sorted(set(s), reverse=True):
        tp = sum(1 for v, t in zip(s, y) if v >= thr and t)
        flagged = sum(1 for v in s if v >= thr)
        ap += (tp / n_pos - prev_recall) * (tp / flagged)
        prev_recall = tp / n_pos
    assert average_precision(y, s) == pytest.approx(ap, abs=1e-12)


def test_mid_ranks():
    assert mid_ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_card_precision_takes_each_cards_daily_max_and_averages_days():
    days = [0, 0, 0, 0, 0, 1, 1, 1]
    cards = ["a", "a", "b", "c", "d", "a", "b", "c"]
    y = [0, 1, 0, 0, 1, 0, 0, 1]
    s = [0.9, 0.1, 0.8, 0.7, 0.2, 0.1, 0.6, 0.5]
    # day 0: cards a (max .9, compromised), b (.8, no), c (.7), d (.2, yes): top 2 = a, b -> 1/2
    # day 1: b (.6, no), c (.5, yes), a (.1): top 2 = b, c -> 1/2
    assert card_precision_at_k(days, cards, y, s, k=2) == 0.5
    # k=1: day 0 a (yes) -> 1; day 1 b (no) -> 0
    assert card_precision_at_k(days, cards, y, s, k=1) == 0.5
    # k larger than the cards of a day: still divided by k (2 of 4 on day 0, 1 of 4 on day 1)
    assert card_precision_at_k(days, cards, y, s, k=4) == pytest.approx((2 / 4 + 1 / 4) / 2)


# ------------------------------------------------------------------------ the evaluation

HANDBOOK = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fraud-handbook"
DAY = 86_400_000


def test_durations():
    assert parse_duration_ms("7d") == 7 * DAY
    assert parse_duration_ms("12h") == DAY // 2
    assert parse_duration_ms("90") == 90_000 and parse_duration_ms("250ms") == 250
    with pytest.raises(EvalError, match="expected e.g. 7d"):
        parse_duration_ms("seven days")


def handbook_frame(n_days: int = 20, per_day: int = 300, seed: int = 0) -> pd.DataFrame:
    """A small file in the Handbook's layout: terminal 7 is compromised from day 5."""
    rng = random.Random(seed)
    rows = []
    start = pd.Timestamp("2018-04-01")
    for i in range(n_days * per_day):
        seconds = i * 86_400 // per_day + rng.randrange(60)
        terminal, amount = rng.randrange(30), round(rng.uniform(5, 100), 2)
        fraud = int((terminal == 7 and seconds >= 5 * 86_400) or amount > 95)
        rows.append((i, start + pd.Timedelta(seconds=seconds), rng.randrange(200), terminal,
                     amount, seconds, seconds // 86_400, fraud))
    return pd.DataFrame(rows, columns=["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID",
                                       "TERMINAL_ID", "TX_AMOUNT", "TX_TIME_SECONDS",
                                       "TX_TIME_DAYS", "TX_FRAUD"])


class SpyScorer(TransactionScorer):
    """Records when each label is learned, against its event's time."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.learned_at: list[tuple[int, int]] = []

    def learn_label(self, target_event_id, label, known_at_ms=None):
        event_time = self.pending_time(target_event_id)
        ok = super().learn_label(target_event_id, label, known_at_ms)
        if ok:
            self.learned_at.append((event_time, known_at_ms))
        return ok


def test_labels_are_learned_only_after_the_delay_and_scored_first(tmp_path):
    path = tmp_path / "hb.parquet"
    handbook_frame().to_parquet(path)
    stream = load_stream(path)
    assert stream.source == "handbook" and len(stream) == 6_000
    scorer = SpyScorer(seed=1)
    replay = replay_file(stream, scorer, label_delay_ms=2 * DAY, progress=False)
    assert scorer.learned_at and all(k - t == 2 * DAY for t, k in scorer.learned_at)
    # every event up to 2 days before the last one had its label learned, none after
    last = int(stream.columns["event_time"][-1])
    assert replay.learned == int((stream.columns["event_time"] <= last - 2 * DAY).sum())
    f = figures(replay, warmup_ms=3 * DAY)
    assert f["n_events"] == int((replay.times >= replay.times[0] + 3 * DAY).sum())
    assert f["roc_auc"] > 0.8  # the compromised terminal and the large amounts are learned
    assert [w["week"] for w in f["weeks"]] == [1, 2, 3]


def test_eval_fraud_command_on_both_layouts(tmp_path, capsys, monkeypatch):
    from pipelines.cli import main

    frame = handbook_frame(n_days=10)
    path = tmp_path / "hb.parquet"
    frame.to_parquet(path)
    out = tmp_path / "figures.json"
    assert main(["eval", "fraud", "--data", str(path), "--label-delay", "1d", "--warmup", "2d",
                 "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    for key in ("roc_auc", "average_precision", "card_precision_at_100", "events_per_s",
                "n_events", "weeks", "decisions", "brier", "fraud_visibility"):
        assert key in got
    assert 0.5 < got["roc_auc"] <= 1.0 and got["events_per_s"] > 0
    assert "ROC AUC" in capsys.readouterr().out
    # the figures say which scorer made them: the worker's settings (defaults here)
    assert got["scorer_params"]["replay"] == 2 and got["scorer_params"]["prior_strength"] == 1
    # the same events in riskstream's schema (a lake export plus a label)
    lake = pd.DataFrame({
        "event_id": frame.TRANSACTION_ID.astype(str),
        "event_time": frame.TX_DATETIME.dt.tz_localize("UTC"),
        "card_id": "card-" + frame.CUSTOMER_ID.astype(str),
        "merchant_id": "m-" + frame.TERMINAL_ID.astype(str),
        "amount": frame.TX_AMOUNT, "currency": "EUR", "channel": "ecom", "country": "DE",
        "score": 0.0, "label": frame.TX_FRAUD})
    lake_path = tmp_path / "lake.parquet"
    lake.sample(frac=1.0, random_state=1).to_parquet(lake_path)  # out of order on disk
    out2 = tmp_path / "figures2.json"
    assert main(["eval", "fraud", "--data", str(lake_path), "--label-delay", "1d",
                 "--warmup", "2d", "--json", str(out2)]) == 0
    again = json.loads(out2.read_text())
    assert again["layout"] == "riskstream" and again["n_events"] == got["n_events"]
    assert again["roc_auc"] == pytest.approx(got["roc_auc"], abs=0.02)
    # set as a worker would be, the evaluation's scorer follows
    monkeypatch.setenv("RISKSTREAM_MODEL_REPLAY", "0")
    assert main(["eval", "fraud", "--data", str(path), "--label-delay", "1d", "--warmup", "2d",
                 "--json", str(out2)]) == 0
    assert json.loads(out2.read_text())["scorer_params"]["replay"] == 0


def test_fraud_visibility_splits_frauds_by_a_label_known_at_their_merchant():
    import numpy as np

    day = 86_400_000
    #            merchant  time (days)  label  score
    events = [("a", 0.0, 1, 0.9),    # first fraud at a: unseen (nothing labelled yet)
              ("a", 3.0, 1, 0.2),    # a's first label is known only at day 7: unseen
              ("a", 8.0, 1, 0.8),    # day 0's label known since day 7: seen
              ("b", 8.5, 1, 0.1),    # b never had a fraud: unseen
              ("a", 50.0, 1, 0.7),   # a's last known fraud is 42 days old (> 30): unseen
              ("c", 9.0, 0, 0.5), ("c", 9.5, 0, 0.3), ("c", 10.0, 0, 0.05)]
    merchants = np.array([e[0] for e in events])
    times = np.array([int(e[1] * day) for e in events])
    labels = np.array([e[2] for e in events])
    scores = np.array([e[3] for e in events])
    keep = times >= 0
    v = fraud_visibility(times, merchants, labels, scores, keep, label_delay_ms=7 * day)
    assert v["seen"]["n_fraud"] == 1 and v["unseen"]["n_fraud"] == 4
    assert v["seen"]["roc_auc_vs_genuine"] == 1.0          # 0.8 above every genuine score
    # unseen 0.9, 0.2, 0.1, 0.7 against 0.5, 0.3, 0.05: 2*3 + 1 + 1 + 3 = 8 pairs of 12
    assert v["unseen"]["roc_auc_vs_genuine"] == pytest.approx(8 / 12)
    assert v["auc_bound"] == pytest.approx(1 - 0.8 * (1 - 8 / 12))
    # only the scored part counts: without the first event, three unseen frauds remain
    keep = times > 0
    v = fraud_visibility(times, merchants, labels, scores, keep, label_delay_ms=7 * day)
    assert v["unseen"]["n_fraud"] == 3 and v["seen"]["n_fraud"] == 1


def test_eval_fraud_rejects_unusable_input(tmp_path, capsys):
    from pipelines.cli import main

    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"x": [1, 2]}).to_parquet(bad)
    assert main(["eval", "fraud", "--data", str(bad)]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["eval", "fraud"]) == 2  # neither --data nor --simulate


def test_eval_fraud_on_the_simulator(tmp_path):
    from pipelines.cli import main

    out = tmp_path / "sim.json"
    assert main(["eval", "fraud", "--simulate", "30000", "--warmup", "1m",
                 "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert set(got["streams"]) == {"transactions", "applications"}
    tx = got["streams"]["transactions"]
    assert tx["n_fraud"] > 10 and tx["roc_auc"] > 0.7
    assert tx["labels_unmatched"] == 0
    # the worker's scorer arguments, but the simulator's label TTL (4x its 30 s delay)
    assert tx["scorer_params"]["label_ttl_s"] == 120 and tx["scorer_params"]["replay"] == 2


@pytest.mark.skipif(not HANDBOOK.is_dir(), reason=f"Handbook data not found at {HANDBOOK}")
def test_handbook_first_days_learn_something():
    stream = load_stream(HANDBOOK, limit=40_000)  # 4 days
    replay = replay_file(stream, TransactionScorer(seed=42), label_delay_ms=DAY,
                         progress=False)
    f = figures(replay, warmup_ms=2 * DAY)
    assert f["roc_auc"] > 0.6 and f["labels_unmatched"] == 0
