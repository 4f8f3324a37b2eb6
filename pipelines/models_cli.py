"""``riskstream models list|rollback``: the model snapshots, their manifests and quality.

- ``models list`` shows every snapshot (``agents/snapshot.py`` manifests: seq, model, state
  version, labels learned, offsets, age) and the latest ``model_quality`` rows of the lake.
- ``models rollback --model transactions-model`` makes the previous snapshot the latest: it
  is copied as a new seq whose manifest says ``rolled_back_from`` (the seq it replaces), so
  the history stays readable and a second rollback goes one step further back. The worker
  picks it up at its next start (restart it: a running worker would overwrite it with its
  next periodic snapshot).
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import orjson

from agents.snapshot import SnapshotStore
from pipelines.errors import RiskstreamError
from pipelines.settings import Settings


class NothingToRollBack(RiskstreamError):
    """A rollback was asked for a model with fewer than two snapshots.

    Operator action: ``riskstream models list`` shows the snapshots kept; delete the model's
    snapshot directory instead to retrain it from labels.
    """


def _store(args: argparse.Namespace, settings: Settings) -> SnapshotStore:
    if args.snapshot_dir:
        return SnapshotStore(Path(args.snapshot_dir))
    m = settings.model
    return SnapshotStore(m.snapshot_dir or settings.service.state_dir / "models")


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="model snapshots, quality and rollback")
    cmd = models.add_subparsers(dest="models_command", required=True)
    ls = cmd.add_parser("list", help="snapshots with their manifests, latest quality")
    ls.add_argument("--snapshot-dir", default=None,
                    help="default RISKSTREAM_MODEL_SNAPSHOT_DIR or <state_dir>/models")
    ls.add_argument("--lake", default=None, help="lake directory (default RISKSTREAM_LAKE_PATH)")
    ls.add_argument("--json", action="store_true", help="one JSON document")
    ls.set_defaults(func=cmd_list)
    rb = cmd.add_parser("rollback", help="make the previous snapshot of a model the latest")
    rb.add_argument("--model", required=True, help="e.g. transactions-model")
    rb.add_argument("--snapshot-dir", default=None)
    rb.set_defaults(func=cmd_rollback)


def _quality(lake: Path) -> list[dict]:
    from sinks.clickhouse import query_rows

    try:
        rows = query_rows(lake, """
            SELECT stream, role, model_version, window_end, n, positives, roc_auc,
                   average_precision, precision_at_review, recall_at_review
            FROM model_quality ORDER BY window_end DESC LIMIT 1 BY stream, role""")
    except Exception as exc:  # noqa: BLE001 - no lake yet, or no quality rows: say so, list the snapshots
        return [{"error": f"model_quality not readable in {lake}: {exc}"}]
    return rows


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    store = _store(args, settings)
    lake = Path(args.lake) if args.lake else settings.lake.path
    doc = {"snapshots": {name: store.manifests(name) for name in store.names()},
           "quality": _quality(lake)}
    if args.json:
        print(orjson.dumps(doc, default=str).decode())
        return 0
    now = time.time() * 1000
    for name, manifests in doc["snapshots"].items():
        print(name)
        for m in manifests:
            back = f"  rolled back from {m['rolled_back_from']}" if "rolled_back_from" in m else ""
            print(f"  #{m['seq']:<4} {m['model']} v{m['state_version']}  "
                  f"{(now - m['created_ms']) / 60_000:8.1f} min ago  labels={m.get('labels', '-')}"
                  f"  offsets={m['offsets']}{back}")
    print("quality (latest per stream and role)")
    for row in doc["quality"]:
        print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


def rollback(store: SnapshotStore, name: str) -> dict:
    """Copy the snapshot before the latest as a new latest one; its manifest."""
    manifests = store.manifests(name)
    if len(manifests) < 2:
        raise NothingToRollBack(f"{name}: {len(manifests)} snapshot(s) in {store.root / name}, "
                                "nothing to roll back to")
    latest, previous = manifests[-1], manifests[-2]
    if "rolled_back_from" in latest:  # a second rollback goes one step further back
        older = [m for m in manifests if m["seq"] < latest["rolled_back_to"]]
        if not older:
            raise NothingToRollBack(f"{name}: no snapshot older than #{latest['rolled_back_to']}")
        previous = older[-1]
    state = orjson.loads(gzip.decompress((store.root / name / previous["data"]).read_bytes()))
    keep = {k: v for k, v in previous.items() if k not in {
        "format", "name", "seq", "model", "state_version", "feature_schema_hash", "offsets",
        "created_ms", "libraries", "data", "rolled_back_from", "rolled_back_to"}}
    path = store.save(name, state, model=previous["model"],
                      state_version=previous["state_version"],
                      feature_schema=previous["feature_schema_hash"],
                      offsets=previous["offsets"],
                      extra={**keep, "rolled_back_from": latest["seq"],
                             "rolled_back_to": previous["seq"]})
    return json.loads(path.read_text())


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    m = rollback(_store(args, settings), args.model)
    print(f"{args.model}: snapshot #{m['rolled_back_to']} is the latest again (as #{m['seq']}, "
          f"replacing #{m['rolled_back_from']}); restart the worker to load it")
    return 0
