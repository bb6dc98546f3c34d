"""Notification channels: the stored log (always) and e-mail over SMTP (optional).

The notifier writes each notification once, unique on ``(event, recipient)``, in the
commit that handles the event; that row *is* the stored channel. Other channels
deliver from those rows, never from the events, so a redelivered event can never
produce a second e-mail. :class:`SmtpChannel` sends each row not yet in
``email_deliveries`` and then records it there; a crash between the two may send
one row again, with the same ``Message-ID`` (the notification id), which mail
systems use to drop duplicates.
"""

from __future__ import annotations

import logging
import smtplib
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

from sqlalchemy import Connection, Engine, exists, insert, not_, select

from store import Commit, StoreWriter
from store.tables import email_deliveries_table as deliveries
from store.tables import notifications_table as notes
from supervisor import PollingService

log = logging.getLogger(__name__)


class SmtpChannel(PollingService):
    """Sends stored notifications by e-mail through an SMTP server; a supervised service.

    Args:
        engine: the store (reads notifications).
        writer: the store's writer (records deliveries).
        host: the SMTP server.
        port: its port.
        sender: the From address.
        address_of: a person's e-mail address from their id (None: not by e-mail).
        poll_interval: seconds between looks for unsent notifications.
        timeout: seconds for one SMTP conversation.
        batch: most e-mails per look.
    """

    def __init__(self, engine: Engine, writer: StoreWriter, *, host: str, port: int,
                 sender: str, address_of: Callable[[str], str | None],
                 poll_interval: float, timeout: float = 10.0, batch: int = 100) -> None:
        super().__init__("smtp", poll_interval, dependency=writer.gate)
        self._engine = engine
        self._writer = writer
        self.host = host
        self.port = port
        self.sender = sender
        self.address_of = address_of
        self._timeout = timeout
        self._batch = batch
        self.sent = 0

    def facts(self) -> dict[str, Any]:
        """Failed rounds and e-mails sent."""
        return {**super().facts(), "sent": self.sent}

    def poll(self) -> bool:
        """Send what is unsent; look again at once when a full batch went out."""
        return self.send_pending() >= self._batch

    def send_pending(self) -> int:
        """Send every stored notification not yet e-mailed; returns how many were sent."""
        q = (select(notes).where(not_(exists().where(
            deliveries.c.notification_id == notes.c.id)))
             .order_by(notes.c.created_at).limit(self._batch))
        with self._engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        if not rows:
            return 0
        done: list[dict[str, Any]] = []
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self._timeout) as smtp:
                for row in rows:
                    address = self.address_of(str(row["recipient"]))
                    if address is not None:
                        smtp.send_message(self._email(row, address))
                    done.append({"notification_id": row["id"], "address": address or "",
                                 "delivered_at": datetime.now(UTC)})
        finally:
            if done:  # what went out is recorded even when a later one failed
                self._record(done)
                self.sent += len(done)
        return len(done)

    def _email(self, row: dict[str, Any], address: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = address
        msg["Subject"] = str(row["subject"])
        msg["Message-ID"] = f"<{row['id']}@staybook>"
        msg["X-Staybook-Event"] = f"{row['event_type']} {row['event_id']}"
        msg.set_content(str(row["text"]))
        return msg

    def _record(self, done: list[dict[str, Any]]) -> None:
        finished = threading.Event()
        failure: list[BaseException] = []

        def effect(conn: Connection) -> None:
            conn.execute(insert(deliveries), done)

        def on_done(exc: BaseException | None) -> None:
            if exc is not None:
                failure.append(exc)
            finished.set()

        self._writer.submit(Commit(stream_id=None, expected_version=0, effects=[effect],
                                   on_done=on_done))
        if not finished.wait(30):
            raise TimeoutError("smtp: the store did not record the deliveries in time")
        if failure:
            raise failure[0]
