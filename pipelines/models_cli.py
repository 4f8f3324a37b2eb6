"""``riskstream models list|promote|rollback``: model snapshots, roles, quality.

- ``models list`` shows each fraud stream's roles (``roles.json``: which snapshot slot is the
  champion and which the challenger, when last promoted) with the latest quality row of each
  role, then every snapshot (``agents/snapshot.py`` manifests: seq, model, role and
  parameters at the time, labels learned, offsets, age).
- ``models promote --stream transactions`` makes the challenger the champion and the champion
  the challenger (``SnapshotStore.promote``: recorded with a timestamp in ``roles.json``,
  written atomically). The worker reads the roles at start: restart it. Until then it goes on
  with the old roles, writing each model to its own slot, so nothing is lost either way.
- ``models rollback --model transactions-model`` (or ``--stream transactions [--role
  challenger]``: the slot the role names) makes the previous snapshot the latest: it
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

from agents.champion import SCORERS
from agents.snapshot import ROLES, SnapshotStore
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
    models = sub.add_parser("models", help="model snapshots, roles, quality; promote and rollback")
    cmd = models.add_subparsers(dest="models_command", required=True)
    ls = cmd.add_parser("list", help="snapshots with their manifests, latest quality")
    ls.add_argument("--snapshot-dir", default=None,
                    help="default RISKSTREAM_MODEL_SNAPSHOT_DIR or <state_dir>/models")
    ls.add_argument("--lake", default=None, help="lake directory (default RISKSTREAM_LAKE_PATH)")
    ls.add_argument("--json", action="store_true", help="one JSON document")
    ls.set_defaults(func=cmd_list)
    pr = cmd.add_parser("promote", help="make a stream's challenger its champion (and the "
                        "champion its challenger); restart the worker to apply")
    pr.add_argument("--stream", required=True, choices=sorted(SCORERS))
    pr.add_argument("--snapshot-dir", default=None)
    pr.set_defaults(func=cmd_promote)
    rb = cmd.add_parser("rollback", help="make the previous snapshot of a model the latest")
    which = rb.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a snapshot name, e.g. transactions-model")
    which.add_argument("--stream", choices=sorted(SCORERS),
                       help="the snapshot of this stream's --role")
    rb.add_argument("--role", choices=ROLES, default="champion")
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


def roles(store: SnapshotStore, quality: list[dict]) -> dict[str, dict]:
    """Per fraud stream: each role's slot, its latest snapshot and latest quality row, and
    when the roles were last promoted."""
    entries = store.roles()
    out = {}
    for stream in sorted(SCORERS):
        slots = store.slots(stream)
        doc: dict = {"promoted_ms": entries.get(stream, {}).get("promoted_ms")}
        for role in ROLES:
            manifests = store.manifests(slots[role])
            doc[role] = {
                "snapshot": slots[role],
                "latest": manifests[-1] if manifests else None,
                "quality": next((q for q in quality
                                 if q.get("stream") == stream and q.get("role") == role), None)}
        out[stream] = doc
    return out


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    store = _store(args, settings)
    lake = Path(args.lake) if args.lake else settings.lake.path
    quality = _quality(lake)
    doc = {"roles": roles(store, quality),
           "snapshots": {name: store.manifests(name) for name in store.names()},
           "quality": quality}
    if args.json:
        print(orjson.dumps(doc, default=str).decode())
        return 0
    now = time.time() * 1000
    print("roles (the worker loads them at start)")
    for stream, entry in doc["roles"].items():
        when = entry["promoted_ms"]
        print(f"{stream}" + (f"  promoted {(now - when) / 60_000:.1f} min ago" if when else ""))
        for role in ROLES:
            r = entry[role]
            latest = r["latest"]
            snap = (f"#{latest['seq']} labels={latest.get('labels', '-')} "
                    f"params={latest.get('params', {})}" if latest else "no snapshot")
            q = r["quality"]
            qual = ("  ".join(f"{k}={q.get(k)}" for k in (
                "n", "roc_auc", "average_precision", "precision_at_review", "recall_at_review"))
                if q else "no quality row")
            print(f"  {role:<10} {r['snapshot']:<26} {snap}\n  {'':<10} {qual}")
    print("snapshots")
    for name, manifests in doc["snapshots"].items():
        print(name)
        for m in manifests:
            back = f"  rolled back from {m['rolled_back_from']}" if "rolled_back_from" in m else ""
            role = f" ({m['role']})" if "role" in m else ""
            print(f"  #{m['seq']:<4} {m['model']} v{m['state_version']}{role}  "
                  f"{(now - m['created_ms']) / 60_000:8.1f} min ago  labels={m.get('labels', '-')}"
                  f"  offsets={m['offsets']}{back}")
    print("quality (latest per stream and role)")
    for row in doc["quality"]:
        print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    entry = _store(args, settings).promote(args.stream)
    print(f"{args.stream}: champion is now {entry['champion']}, challenger "
          f"{entry['challenger']}; restart the worker to apply")
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
    # role and params stay: the copy is the same model as before (its parameters included)
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
    store = _store(args, settings)
    name = args.model or store.slots(args.stream)[args.role]
    m = rollback(store, name)
    print(f"{name}: snapshot #{m['rolled_back_to']} is the latest again (as #{m['seq']}, "
          f"replacing #{m['rolled_back_from']}); restart the worker to load it")
    return 0
