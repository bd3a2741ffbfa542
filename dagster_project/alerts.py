"""Notifying maintainers: a JSON webhook and/or e-mail, carrying names and links only.

An alert names the asset, the check, the partition and the run; it never carries check
metadata or values from the data, so no PII or secret can travel in it.
"""

from __future__ import annotations

import json
import smtplib
import urllib.request
from dataclasses import asdict, dataclass
from email.message import EmailMessage


@dataclass(frozen=True)
class Alert:
    kind: str  # "check_failed" | "run_failed"
    title: str
    asset: str | None
    check: str | None
    partition: str | None
    run_id: str
    run_url: str
    severity: str
    description: str

    def text(self) -> str:
        lines = [self.title, ""]
        for label, value in (
            ("asset", self.asset),
            ("check", self.check),
            ("partition", self.partition),
            ("severity", self.severity),
            ("run", self.run_url),
        ):
            if value:
                lines.append(f"{label}: {value}")
        lines += ["", self.description]
        return "\n".join(lines)


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    username: str | None = None
    password: str | None = None
    starttls: bool = True


def post_webhook(url: str, alert: Alert, timeout: float = 10.0) -> int:
    """POST the alert as JSON; raises on a non-2xx answer so the sensor tick shows the failure."""
    body = json.dumps({"text": alert.text(), **asdict(alert)}).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status


def send_email(smtp: SmtpSettings, alert: Alert, timeout: float = 10.0) -> None:
    message = EmailMessage()
    message["Subject"] = f"[dermacurate] {alert.title}"
    message["From"] = smtp.sender
    message["To"] = ", ".join(smtp.recipients)
    message.set_content(alert.text())
    with smtplib.SMTP(smtp.host, smtp.port, timeout=timeout) as client:
        if smtp.starttls and client.has_extn("starttls"):
            client.starttls()
        if smtp.username:
            client.login(smtp.username, smtp.password or "")
        client.send_message(message)
