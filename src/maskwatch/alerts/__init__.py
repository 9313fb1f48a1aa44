"""Alerts: rules that turn frame results into alert events, the event store wiring, email via an outbox.

engine = AlertEngine(settings, store)      # the video loop calls engine.observe(camera, result, frame)
worker = MailWorker(settings, store)       # background thread sending the outbox
worker.start()
"""

from maskwatch.alerts.engine import AlertEngine
from maskwatch.alerts.mail import MailError, MailWorker, send_test_email
from maskwatch.alerts.rules import AlertRules

__all__ = ["AlertEngine", "AlertRules", "MailError", "MailWorker", "send_test_email"]
