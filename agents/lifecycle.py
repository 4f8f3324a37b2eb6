"""The life of an alert: firing, resolved after a quiet period, grouped, cooled down, inhibited.

Plain Python, no Faust; the clock is event time (the watermark of the alert's stream), never
the wall clock, so a replay or a backfill produces the same notifications.

- **Firing**: the first time a condition holds for an alert key (``rule|entity``), an alert
  opens. While it keeps holding, nothing new is sent: a flapping metric is one alert.
- **Resolved**: when the condition has not held for ``resolve_after_ms`` of event time, the
  alert resolves; if its incident was notified, one ``resolved`` notification goes out.
- **Cooldown**: after a resolution, the same key stays quiet for ``cooldown_ms``.
- **Grouping**: alerts with the same ``group_key`` (a rule's ``group_by`` labels) share one
  incident: the first notifies, the next ones join it silently; the incident resolves when its
  last member does (many merchants, one incident).
- **Inhibition**: an incident whose opening alert matches the target of an inhibition while a
  matching source alert fires (with ``equal`` labels equal) is held back, not sent; it is sent
  if it still fires when the source resolves.

Notification ids are deterministic: the firing notification has the opening alert's id, the
resolved one ``resolved_id(that id)``; both carry the incident id, so a replay gives the same ids
and receivers deduplicate.

State is JSON (``to_state(slice)``/``load_state(slice, state)``); each alert and incident
belongs to the slice (``stream:partition``) whose event opened it, so the worker stores each
input partition's part with that partition's offset. Limit: grouping and inhibition see the
alerts of the partitions one worker holds (all of them with one worker).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

from agents.rules import Inhibition


_NEVER = float("inf")


def resolved_id(incident_id: str) -> str:
    """The id of an incident's resolved notification (deterministic)."""
    return hashlib.sha1(f"{incident_id}:resolved".encode()).hexdigest()[:20]


class Lifecycle:
    def __init__(self, inhibit: Iterable[Inhibition] = (), *, max_alerts: int = 100_000) -> None:
        self.max_alerts = max_alerts
        # alert key -> {slice, stream, status, started, last_active, resolved_at, labels,
        #               group_key, resolve_after_ms, cooldown_ms, hits, suppressed}
        self._alerts: dict[str, dict] = {}
        # group key -> {slice, incident_id, members, notified, inhibited, record}
        self._groups: dict[str, dict] = {}
        # stream -> a watermark before which ``advance`` changes none of its alerts (the
        # earliest resolution or end of cooldown, a lower bound: hits only push them later);
        # no entry: unknown. The worker advances after every batch, and a pass over every
        # alert each time cost ~9 % of the worker with a few thousand alerts (py-spy).
        self._due: dict[str, int] = {}
        # Held-back incidents are looked at again only when a source may have stopped firing.
        self._release_pending = True
        self.inhibit = inhibit
        self.dropped = 0

    @property
    def inhibit(self) -> tuple[Inhibition, ...]:
        return self._inhibit

    @inhibit.setter
    def inhibit(self, rules: Iterable[Inhibition]) -> None:
        self._inhibit = tuple(rules)
        self._release_pending = True

    # -- transitions -------------------------------------------------------------------------

    def activate(self, key: str, t_ms: int, build: Callable[[], dict], *, stream: str,
                 resolve_after_ms: int, cooldown_ms: int, slice_: str = "") -> list[dict]:
        """The condition of alert ``key`` holds at event time ``t_ms``; return notifications.

        ``build()`` builds the alert record this activation would send if it opens an
        incident (with ``alert_id``, ``group_key`` and ``labels`` as a dict). It is called
        only when the alert opens: most activations find their alert firing or cooling down,
        and a record (its summary, query and links formatted) cost ~50 us, thousands of times
        when the watermark closes a window of every merchant."""
        state = self._alerts.get(key)
        if state is not None and state["status"] == "firing":
            state["last_active"] = max(state["last_active"], t_ms)
            state["hits"] += 1
            return []
        if state is not None and t_ms - state["resolved_at"] < state["cooldown_ms"]:
            state["suppressed"] += 1    # cooling down after its resolution
            return []
        if len(self._alerts) >= self.max_alerts:
            self.dropped += 1           # bounded state: refuse new keys rather than grow
            return []
        record = build()
        labels = record["labels"]
        group_key = record["group_key"]
        if stream in self._due:
            self._due[stream] = min(self._due[stream], t_ms + resolve_after_ms)
        self._alerts[key] = {
            "slice": slice_, "stream": stream, "status": "firing", "started": t_ms,
            "last_active": t_ms, "resolved_at": None, "labels": labels, "group_key": group_key,
            "resolve_after_ms": resolve_after_ms, "cooldown_ms": cooldown_ms, "hits": 1,
            "suppressed": 0, "alert_id": record["alert_id"],
        }
        group = self._groups.get(group_key)
        if group is not None:
            group["members"].append(key)
            return []
        group = self._groups[group_key] = {
            "slice": slice_, "incident_id": record["alert_id"], "members": [key],
            "notified": False, "inhibited": False, "record": record,
        }
        if self._inhibited(labels, key):
            group["inhibited"] = True
            return []
        group["notified"] = True
        return [{**record, "status": "firing", "incident_id": record["alert_id"]}]

    def advance(self, watermarks: dict[str, int], created_at_ms: int,
                describe_resolved: Callable[[dict, dict, int], dict] | None = None) -> list[dict]:
        """Event time moved on (``stream -> watermark``): resolve quiet alerts, release
        incidents whose inhibition ended, forget alerts whose cooldown is over."""
        out: list[dict] = []
        if (not self._release_pending
                and all(wm < self._due.get(s, wm) for s, wm in watermarks.items())):
            return out  # nothing resolves or cools down before these watermarks
        due = dict.fromkeys(watermarks, _NEVER)
        for key, state in list(self._alerts.items()):
            wm = watermarks.get(state["stream"])
            if wm is None:
                continue
            if state["status"] == "firing":
                if wm - state["last_active"] < state["resolve_after_ms"]:
                    due[state["stream"]] = min(due[state["stream"]],
                                               state["last_active"] + state["resolve_after_ms"])
                    continue
                state["status"] = "resolved"
                state["resolved_at"] = wm
                self._release_pending = True  # it may have held an incident back
                due[state["stream"]] = min(due[state["stream"]], wm + state["cooldown_ms"])
                group = self._groups.get(state["group_key"])
                if group is None:
                    continue
                if key in group["members"]:
                    group["members"].remove(key)
                if group["members"]:
                    continue
                del self._groups[state["group_key"]]
                if group["notified"]:
                    record = group["record"]
                    resolved = {**record, "alert_id": resolved_id(group["incident_id"]),
                                "incident_id": group["incident_id"], "status": "resolved",
                                "event_time": wm, "created_at": created_at_ms}
                    if describe_resolved is not None:
                        resolved = describe_resolved(resolved, state, wm)
                    out.append(resolved)
            elif wm - state["resolved_at"] >= state["cooldown_ms"]:
                del self._alerts[key]
            else:
                due[state["stream"]] = min(due[state["stream"]],
                                           state["resolved_at"] + state["cooldown_ms"])
        self._due.update(due)
        if not self._release_pending:
            return out
        self._release_pending = False
        for group in self._groups.values():
            if group["inhibited"] and not group["notified"]:
                opener = self._alerts.get(group["members"][0]) if group["members"] else None
                if opener is not None and not self._inhibited(opener["labels"], None):
                    group["inhibited"] = False
                    group["notified"] = True
                    out.append({**group["record"], "status": "firing",
                                "incident_id": group["incident_id"], "created_at": created_at_ms})
        return out

    def _inhibited(self, labels: dict, own_key: str | None) -> bool:
        for rule in self.inhibit:
            if not rule.target(labels):
                continue
            for key, state in self._alerts.items():
                if key == own_key or state["status"] != "firing":
                    continue
                src = state["labels"]
                if rule.source(src) and all(src.get(k) == labels.get(k) for k in rule.equal):
                    return True
        return False

    # -- introspection and state -------------------------------------------------------------

    def firing(self) -> list[str]:
        return [k for k, s in self._alerts.items() if s["status"] == "firing"]

    def status(self, key: str) -> str | None:
        state = self._alerts.get(key)
        return state["status"] if state else None

    def forget_rules(self, keep: set[str]) -> None:
        """Drop the state of alerts whose rule (the key's prefix) is no longer defined."""
        for key in [k for k in self._alerts if k.split("|", 1)[0] not in keep]:
            del self._alerts[key]
        self._release_pending = True
        for gk, group in list(self._groups.items()):
            group["members"] = [m for m in group["members"] if m in self._alerts]
            if not group["members"]:
                del self._groups[gk]

    def forget_slice(self, slice_: str) -> None:
        """Drop what ``to_state(slice_)`` holds: the input partition moved to another worker,
        which restores it from its checkpoint (kept here, it would shadow that checkpoint if
        the partition came back). An incident with members from other partitions stays, kept
        under one of theirs, so that it resolves when they do (the other worker may resolve
        it too: its notifications' ids are the same); one left with none goes silently, as
        in ``forget_rules``: its owner resolves it."""
        for key in [k for k, state in self._alerts.items() if state["slice"] == slice_]:
            del self._alerts[key]
        for gk, group in list(self._groups.items()):
            group["members"] = [m for m in group["members"] if m in self._alerts]
            if not group["members"]:
                del self._groups[gk]
            elif group["slice"] == slice_:
                group["slice"] = self._alerts[group["members"][0]]["slice"]
        self._due.clear()
        self._release_pending = True

    def to_state(self, slice_: str = "") -> dict:
        return {"alerts": {k: v for k, v in self._alerts.items() if v["slice"] == slice_},
                "groups": {k: v for k, v in self._groups.items() if v["slice"] == slice_}}

    def load_state(self, state: dict, slice_: str = "") -> None:
        self._due.clear()
        self._release_pending = True
        self._alerts.update({k: {**v, "slice": slice_} for k, v in state["alerts"].items()})
        for gk, group in state["groups"].items():
            mine = self._groups.get(gk)
            if mine is None:
                self._groups[gk] = {**group, "slice": slice_}
            else:  # a member from another partition joined first: keep one incident
                mine["members"] += [m for m in group["members"] if m not in mine["members"]]
