"""E-mail over SMTP (stdlib ``smtplib``): STARTTLS when the server offers it and it is asked
for (the default), then AUTH when a user is set; plain text with the explanation."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

from sinks.channels.webhook import DeliveryError


def email_message(alert: dict, sender: str, recipients: list[str]) -> EmailMessage:
    msg = EmailMessage()
    status = "RESOLVED" if alert.get("status") == "resolved" else alert.get("severity", "").upper()
    msg["Subject"] = f"[riskstream {status}] {alert['rule']}: {alert.get('entity') or ''}"[:200]
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    # Deterministic: a resent alert has the same Message-ID, so mail clients thread or drop it.
    msg["Message-ID"] = f"<{alert['alert_id']}@riskstream>"
    if alert.get("incident_id") and alert["incident_id"] != alert["alert_id"]:
        msg["In-Reply-To"] = f"<{alert['incident_id']}@riskstream>"
    lines = [alert.get("summary") or "", ""]
    for label, key in (("Rule", "rule"), ("Condition", "condition"), ("Observed", "value"),
                       ("Threshold", "threshold"), ("Window (ms)", "window_ms"), ("Count", "count"),
                       ("Entity", "entity"), ("Dashboard", "dashboard_url")):
        if alert.get(key) is not None:
            lines.append(f"{label}: {alert[key]}")
    if alert.get("reasons"):
        lines += ["", "Top reasons:"] + [f"  - {r}" for r in alert["reasons"][:5]]
    if alert.get("query"):
        lines += ["", "Affected rows (ClickHouse):", f"  {alert['query']}"]
    msg.set_content("\n".join(lines) + "\n")
    return msg


class EmailChannel:
    name = "email"

    def __init__(self, host: str, port: int, *, sender: str, recipients: list[str],
                 starttls: bool = True, user: str | None = None, password: str | None = None,
                 timeout_s: float = 10.0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port = host, port
        self.sender, self.recipients = sender, recipients
        self.starttls, self.user, self._password = starttls, user, password
        self.timeout_s = timeout_s
        self._ssl_context = ssl_context

    def send(self, alert: dict) -> int:
        msg = email_message(alert, self.sender, self.recipients)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                smtp.ehlo()
                if self.starttls:
                    smtp.starttls(context=self._ssl_context or ssl.create_default_context())
                    smtp.ehlo()
                if self.user:
                    smtp.login(self.user, self._password or "")
                refused = smtp.send_message(msg)
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"smtp login refused: {exc.smtp_code}", retryable=False,
                                status_code=exc.smtp_code) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(f"smtp: {exc}", retryable=False) from None
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(f"smtp answered {exc.smtp_code}", retryable=exc.smtp_code < 500
                                or exc.smtp_code in (421, 450, 451, 452),
                                status_code=exc.smtp_code) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"smtp unreachable: {exc}", retryable=True) from None
        if refused:
            raise DeliveryError(f"smtp refused {len(refused)} recipient(s)", retryable=False)
        return 250
