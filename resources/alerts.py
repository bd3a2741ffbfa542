"""Where alerts go: a webhook and/or e-mail, configured from the environment."""

import dagster as dg

from dagster_project.alerts import Alert, SmtpSettings, post_webhook, send_email


class AlertNotifier(dg.ConfigurableResource):
    """Both channels are optional; with neither configured an alert is only logged."""

    webhook_url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: str | None = None
    mail_from: str = "dermacurate@localhost"
    mail_to: str = ""
    ui_url: str = "http://127.0.0.1:3000"

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_url.rstrip('/')}/runs/{run_id}"

    def notify(self, alert: Alert, log: dg.DagsterLogManager | None = None) -> list[str]:
        """Send `alert` on every configured channel; returns the channels used."""
        sent = []
        if self.webhook_url:
            post_webhook(self.webhook_url, alert)
            sent.append("webhook")
        recipients = tuple(
            address.strip() for address in self.mail_to.split(",") if address.strip()
        )
        if self.smtp_host and recipients:
            send_email(
                SmtpSettings(
                    host=self.smtp_host,
                    port=self.smtp_port,
                    sender=self.mail_from,
                    recipients=recipients,
                    username=self.smtp_user,
                    password=self.smtp_password,
                ),
                alert,
            )
            sent.append("email")
        if log is not None:
            log.warning(f"alert: {alert.title} ({', '.join(sent) or 'no channel configured'})")
        return sent
