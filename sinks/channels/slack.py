"""Slack incoming webhook: the alert as Block Kit blocks with its reasons and links.

Slack answers ``200 ok``; 4xx (a revoked hook, ``invalid_blocks``) is not retried.
"""

from __future__ import annotations

from sinks.channels.webhook import post_json

_ICON = {"critical": ":red_circle:", "warning": ":large_orange_circle:", "info": ":large_blue_circle:"}


def _mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(alert: dict) -> dict:
    """The Slack payload of an alert: a fallback ``text`` and blocks."""
    resolved = alert.get("status") == "resolved"
    icon = ":white_check_mark:" if resolved else _ICON.get(alert.get("severity"), ":bell:")
    title = f"{'RESOLVED' if resolved else alert.get('severity', '').upper()}: {alert['rule']}"
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": f"{icon} {_mrkdwn(alert.get('summary') or '')}"}},
    ]
    fields = [("Observed", alert.get("value")), ("Threshold", alert.get("threshold")),
              ("Condition", alert.get("condition")), ("Entity", alert.get("entity")),
              ("Window", f"{alert['window_ms'] // 1000} s" if alert.get("window_ms") else None),
              ("Count", alert.get("count"))]
    shown = [{"type": "mrkdwn", "text": f"*{k}*\n{_mrkdwn(str(v))}"} for k, v in fields
             if v is not None]
    if shown:
        blocks.append({"type": "section", "fields": shown[:10]})
    reasons = alert.get("reasons") or []
    if reasons:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "*Top reasons*\n"
                       + "\n".join(f"• {_mrkdwn(r)}" for r in reasons[:5])}})
    links = []
    if alert.get("dashboard_url"):
        links.append(f"<{alert['dashboard_url']}|Dashboard>")
    if links:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(links)}]})
    if alert.get("query"):
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": f"```{alert['query'][:2900]}```"}})
    return {"text": f"{title}: {alert.get('summary') or ''}", "blocks": blocks}


class SlackChannel:
    name = "slack"

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self._url = url  # the URL is the secret: never logged
        self.timeout_s = timeout_s

    def send(self, alert: dict) -> int:
        return post_json(self._url, slack_message(alert), timeout_s=self.timeout_s, what="slack")
