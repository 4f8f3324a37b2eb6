"""Champion and challenger: two fraud scorers of one stream; one decides, both are measured.

The champion is the model whose score and decision go out. A challenger, when enabled
(``RISKSTREAM_MODEL_CHALLENGER_ENABLED``), scores every event of the stream as well:

- **shadow** (``challenger_share = 0``, the default): the output is the champion's record,
  unchanged (the challenger keeps its own per-key state, so scoring in shadow cannot move the
  champion's scores). The challenger's score is kept with its pending event, exactly as the
  champion's is, so when the delayed label arrives its rolling quality is measured on the
  score it gave before the label was known; its decision is counted in ``disagreements``
  where it differs from the champion's. Its reasons are not kept.
- **traffic share** (``0 < challenger_share <= 1``): for that share of events the output is
  the challenger's record (score, decision, reasons) and its ``model_version`` ends with
  ``@challenger``, so the lake says which role decided. The share is chosen by a keyed hash
  of ``event_id``, not at random: a replayed event is decided by the same role again, and an
  event id always lands on the same side. Both roles still score every event, so both are
  measured on all labelled events, not on their own share only.

Both learn every label (and every expiry as genuine). With no challenger the wrapper binds
the champion's own methods: the default costs nothing per event.

What makes a challenger differ
------------------------------
A new challenger is the stream's scorer built with ``challenger_params``: any of
``CHALLENGER_PARAMS`` (learning rate, negative sampling rate, seed, cold-start length,
thresholds, ...) over the champion's arguments; its seed is the champion's + 1 unless given.
It starts (``challenger_start``) as a copy of the champion's restored state ("copy", the
default: the same history, so the comparison is fair from the first event and the two differ
by their parameters from then on) or untrained ("cold": is a model retrained from the labels
better than the long-running one?). A copy with no ``challenger_params`` behaves exactly like
the champion, and a warning says so.

Models live in snapshot *slots* (``agents/snapshot.py``): ``roles.json`` says which slot is
the champion and which the challenger. A slot's manifest records the parameters it was built
with (``params``), and a restored model is rebuilt with them: a promoted challenger keeps its
learning rate as champion, and the former champion keeps its own as challenger. Settings
only shape a challenger whose slot has no snapshot yet; to start a new experiment, delete the
challenger's slot directory (``riskstream models list`` names it) and restart the worker.

Limits: a challenger doubles the scoring cost and the per-key memory of its stream. Labels
may depend on decisions (a declined payment is rarely charged back), so a challenger in
shadow is measured on labels shaped by the champion's decisions. Quality is not snapshotted:
both windows start empty at a worker start.

Examples
--------
>>> from agents.fraud import TransactionScorer
>>> models = ChampionChallenger(TransactionScorer(), TransactionScorer(seed=7))
>>> event = {"event_id": "t1", "event_time": 1_790_000_000_000, "card_id": "c1",
...          "account_id": "a", "merchant_id": "m1", "mcc": "5411", "amount": 12.5,
...          "currency": "EUR", "channel": "pos", "country": "FR", "status": "approved",
...          "device_id": "d1", "ip": None}
>>> record = models.score_record(event, 0)
>>> record["model_version"], models.challenger.n_pending   # the challenger scored it too
('txn-hst-lr-v1', 1)
>>> models.learn_label("t1", 0)
True
>>> sorted((role, len(scorer.quality)) for role, scorer in models.roles().items())
[('challenger', 1), ('champion', 1)]
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from agents.fraud import STATE_VERSION, ApplicationScorer, TransactionScorer
from agents.snapshot import SnapshotIncompatible, SnapshotStore, default_slots
from pipelines.errors import RiskstreamError

log = logging.getLogger(__name__)

SCORERS = {"transactions": TransactionScorer, "applications": ApplicationScorer}
# Scorer arguments a challenger may change. Not label_ttl_s nor quality_window: the two
# roles' quality must be measured over the same labels to be comparable; not the state
# bounds (max_cards, ...): memory is sized for the champion.
CHALLENGER_PARAMS = frozenset({"seed", "min_labels", "learning_rate", "negative_rate",
                               "review_at", "decline_at", "alert_share", "n_reasons",
                               "prior_strength", "prior_examples", "replay", "replay_until"})
_INTEGER_PARAMS = frozenset({"seed", "min_labels", "n_reasons", "prior_examples", "replay",
                             "replay_until"})
CHALLENGER_TAG = "@challenger"  # appended to model_version of the records it decided
# The share's hash is keyed: which events the challenger decides is unrelated to any other
# use of event ids (partitioning, dedup).
_SHARE_KEY = b"riskstream-challenger-share"


def scorer_params(model: Any) -> dict[str, Any]:
    """The scorer arguments ``ModelSettings`` sets for every role: the worker's scorers and
    ``riskstream eval fraud``'s are made alike from them."""
    return {"seed": model.seed, "label_ttl_s": model.label_ttl_s,
            "quality_window": model.quality_window,
            "prior_strength": model.prior_strength, "replay": model.replay}


class ChallengerParamsInvalid(RiskstreamError, ValueError):
    """``RISKSTREAM_MODEL_CHALLENGER_PARAMS`` names an argument a challenger cannot change.

    Operator action: keep only the names the message lists, as a JSON object.
    """


def share_bucket(event_id: str) -> float:
    """Where an event id falls in [0, 1): the challenger decides those below its share.

    >>> share_bucket("t1") == share_bucket("t1")
    True
    """
    digest = hashlib.blake2b(event_id.encode(), digest_size=8, key=_SHARE_KEY).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def challenger_params(params: dict[str, Any], champion_seed: int) -> dict[str, Any]:
    """Checked challenger arguments; the seed is the champion's + 1 unless given.

    Raises
    ------
    ChallengerParamsInvalid
        A name outside ``CHALLENGER_PARAMS``.
    """
    wrong = sorted(set(params) - CHALLENGER_PARAMS)
    if wrong:
        raise ChallengerParamsInvalid(
            f"challenger_params: {', '.join(wrong)} cannot differ for a challenger; "
            f"allowed: {', '.join(sorted(CHALLENGER_PARAMS))}")
    out = {k: int(v) if k in _INTEGER_PARAMS else float(v) for k, v in params.items()}
    out.setdefault("seed", champion_seed + 1)
    return out


class ChampionChallenger:
    """A stream's champion and optional challenger, with the scorer API the worker calls.

    ``score_record``, ``score_one`` and ``learn_label`` are the champion's own bound methods
    when there is no challenger; otherwise they score (learn) with both roles and return the
    champion's result, or for the challenger's share of events its record. ``quality``,
    ``model_version``, ``n_labels``, ``feature_schema``, ``to_state``/``load_state`` are the
    champion's; ``roles()`` gives each role's scorer (for per-role quality).

    Parameters
    ----------
    champion, challenger
        Scorers of the same stream (``agents/fraud.py``); ``challenger`` None: none.
    share
        The share of events, by ``share_bucket(event_id)``, whose output is the
        challenger's; 0 is shadow only.
    stream
        The stream's name: its default snapshot slots.
    make
        Builds a scorer from role parameters (``from_settings`` passes one with the worker's
        seed, label TTL and quality window); restoring a slot rebuilds it with its own.
    params
        Each role's parameters for a slot with no snapshot yet (written in the manifests).
    start
        A new challenger is a "copy" of the restored champion or "cold".
    """

    score_record: Callable[[dict, int], dict]
    score_records: Callable[[list[dict], int], list]
    score_one: Callable[[dict], tuple]
    learn_label: Callable[..., bool]

    def __init__(self, champion: Any, challenger: Any = None, *, share: float = 0.0,
                 stream: str = "transactions",
                 make: Callable[[dict], Any] | None = None,
                 params: dict[str, dict] | None = None, start: str = "copy") -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share: must be in [0, 1], got {share!r}")
        if start not in ("copy", "cold"):
            raise ValueError(f"start: 'copy' or 'cold', got {start!r}")
        self.champion = champion
        self.challenger = challenger
        self.share = share
        self.stream = stream
        self.start = start
        self._make = make or (lambda p: type(champion)(**p))
        self.params = {"champion": {}, "challenger": {}, **(params or {})}
        self.slots = default_slots(stream)
        # (champion's decision, challenger's decision) of the events where they differ
        self.disagreements: Counter[tuple[str, str]] = Counter()
        # records that went out, by the role that decided them (with a share only)
        self.decided: Counter[str] = Counter()
        self._bind()

    @classmethod
    def from_settings(cls, stream: str, model: Any) -> ChampionChallenger:
        """The stream's roles as ``ModelSettings`` describe them (not restored yet:
        ``restore`` loads each role from its slot)."""
        scorer_cls = SCORERS[stream]
        base = scorer_params(model)

        def make(params: dict) -> Any:
            return scorer_cls(**{**base, **params})

        enabled = model.challenger_enabled
        params = challenger_params(model.challenger_params, model.seed) if enabled else {}
        return cls(make({}), make(params) if enabled else None,
                   share=model.challenger_share if enabled else 0.0, stream=stream,
                   make=make, params={"champion": {}, "challenger": params},
                   start=model.challenger_start)

    # --------------------------------------------------------------------------- scoring

    def _bind(self) -> None:
        c, x = self.champion, self.challenger
        if x is None:  # no challenger: the champion's own methods, no cost per event
            self.score_record, self.score_one = c.score_record, c.score_one
            self.score_records, self.learn_label = c.score_records, c.learn_label
            return
        self.score_record, self.score_records = self._score_record, self._score_records
        self.score_one, self.learn_label = self._score_one, self._learn_label

    def _score_record(self, event: dict, scored_at_ms: int) -> dict:
        """The record that goes out: the champion's, or with a share the challenger's for
        its share of event ids; the other's score waits for the label (shadow)."""
        return self._decide(event, self.champion.score_record(event, scored_at_ms),
                            self.challenger.score_record(event, scored_at_ms))

    def _score_records(self, events: list[dict], scored_at_ms: int) -> list:
        """``_score_record`` of each event (each role scoring the batch at once): a record,
        or what scoring the event raised (the champion's error first). The challenger scores
        an event the champion raised on (one at a time, it would not)."""
        return [record if isinstance(record, Exception)
                else shadow if isinstance(shadow, Exception)
                else self._decide(event, record, shadow)
                for event, record, shadow in zip(
                    events, self.champion.score_records(events, scored_at_ms),
                    self.challenger.score_records(events, scored_at_ms))]

    def _decide(self, event: dict, record: dict, shadow: dict) -> dict:
        if shadow["decision"] != record["decision"]:
            self.disagreements[(record["decision"], shadow["decision"])] += 1
        if self.share <= 0:
            return record
        if share_bucket(event["event_id"]) < self.share:
            self.decided["challenger"] += 1
            shadow["model_version"] = f"{shadow['model_version']}{CHALLENGER_TAG}"
            return shadow
        self.decided["champion"] += 1
        return record

    def _score_one(self, event: dict) -> tuple:
        self.challenger.score_one(event)
        return self.champion.score_one(event)

    def _learn_label(self, target_event_id: str, label: int, known_at_ms: int | None = None
                     ) -> bool:
        self.challenger.learn_label(target_event_id, label, known_at_ms)
        return self.champion.learn_label(target_event_id, label, known_at_ms)

    def roles(self) -> dict[str, Any]:
        """``{"champion": scorer, "challenger": scorer}`` (without a challenger: no key)."""
        out = {"champion": self.champion}
        if self.challenger is not None:
            out["challenger"] = self.challenger
        return out

    # ------------------------------------------------------------ the champion's face

    @property
    def quality(self) -> Any:
        return self.champion.quality

    @property
    def model_version(self) -> str:
        return self.champion.model_version

    @property
    def n_labels(self) -> int:
        return self.champion.n_labels

    @property
    def feature_schema(self) -> str:
        return self.champion.feature_schema

    @property
    def _watermark(self) -> int:
        return self.champion._watermark

    def to_state(self) -> dict:
        """The champion's state (each role's snapshot: ``snapshot_jobs``)."""
        return self.champion.to_state()

    def load_state(self, state: dict) -> None:
        self.champion.load_state(state)

    # ------------------------------------------------------------------------- snapshots

    def restore(self, store: SnapshotStore) -> dict[str, int]:
        """Load each role from its slot (``roles.json``, read now); the champion's offsets.

        A slot's manifest ``params`` rebuild its scorer first. A snapshot this version cannot
        read is logged with the operator's action and that role starts cold. A challenger
        whose slot is empty starts as a copy of the restored champion (``start="copy"``) or
        cold. The champion's offsets decide which replayed batches are relearned, by both
        roles: a challenger snapshot behind them (a crash between the two writes) misses the
        difference, and a warning says so.
        """
        self.slots = store.slots(self.stream)
        champion = self._restore_role(store, "champion")
        challenger = None
        if self.challenger is not None:
            challenger = self._restore_role(store, "challenger")
            if challenger is None and self.start == "copy" and champion is not None:
                self.challenger.load_state(self.champion.to_state())
                log.info("%s: new challenger %s starts as a copy of the champion %s",
                         self.stream, self.slots["challenger"], self.slots["champion"])
                if not set(self.params["challenger"]) - {"seed"}:
                    log.warning("%s: the challenger has no challenger_params: as a copy of "
                                "the champion it scores like it; set RISKSTREAM_MODEL_"
                                "CHALLENGER_PARAMS to compare something", self.stream)
        offsets = champion.manifest["offsets"] if champion is not None else {}
        if challenger is not None and challenger.manifest["offsets"] != offsets:
            log.warning("%s: challenger snapshot %s is at offsets %s, the champion's at %s: "
                        "the challenger misses the events between", self.stream,
                        self.slots["challenger"], challenger.manifest["offsets"], offsets)
        self._bind()
        return dict(offsets)

    def _restore_role(self, store: SnapshotStore, role: str) -> Any:
        """Load ``role`` from its slot; the snapshot (None: none, or not readable)."""
        slot = self.slots[role]
        manifests = store.manifests(slot)
        if manifests:  # the model is its snapshot: its own parameters (none: the defaults)
            self.params[role] = manifests[-1].get("params", {})
        scorer = self._make(self.params[role])
        try:
            snap = store.load(slot, model=type(scorer).__name__, state_version=STATE_VERSION,
                              feature_schema=scorer.feature_schema)
            if snap is not None:
                scorer.load_state(snap.state)
        except (SnapshotIncompatible, ValueError) as exc:
            log.error("%s (%s): not restored, the scorer starts cold and retrains from "
                      "labels: %s", slot, role, exc)
            scorer, snap = self._make(self.params[role]), None
        setattr(self, role, scorer)
        if snap is not None:
            log.info("%s (%s) restored from snapshot %d (%d labels learned, offsets %s)",
                     slot, role, snap.manifest["seq"], scorer.n_labels, snap.manifest["offsets"])
        return snap

    def snapshot_jobs(self, offsets: dict[str, int]) -> list[tuple[str, dict, dict]]:
        """``(slot, state, keyword arguments of SnapshotStore.save)`` for each role.

        The states are copied now (call it on the event loop); saving them can run on another
        thread. Both roles get the same offsets: they have learned the same events.
        """
        jobs = []
        for role, scorer in self.roles().items():
            jobs.append((self.slots[role], scorer.to_state(), {
                "model": type(scorer).__name__, "state_version": STATE_VERSION,
                "feature_schema": scorer.feature_schema, "offsets": dict(offsets),
                "extra": {"model_version": scorer.model_version, "labels": scorer.n_labels,
                          "role": role, "params": self.params[role]}}))
        return jobs
