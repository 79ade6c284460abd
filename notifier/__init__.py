"""Alert webhooks: from the alerts topic to enterprise endpoints (issue 5).

Pure building blocks (no network I/O apart from the default DNS resolver in
:mod:`~notifier.ssrf`, which tests replace; no clock they were not given):

- :mod:`notifier.signing` — Standard Webhooks ``v1`` signatures: sign on the
  sender, :func:`~notifier.signing.verify` on the receiver (standard library
  only, so an enterprise can copy the file).
- :mod:`notifier.ssrf` — which destinations the notifier may connect to, and
  the checked addresses it must connect to.
- :mod:`notifier.retry` — how a delivery attempt's outcome is classified and
  when the next attempt is due.
- :mod:`notifier.events` — an alert event's webhook type, recipients and body.

Adapters:

- :mod:`notifier.http` — one signed delivery attempt over HTTP (httpx).
- :mod:`notifier.service` — the notifier: queue deliveries from the alerts
  topic, deliver them per endpoint, record every attempt.
- :mod:`notifier.cli` — ``smartpark notifier`` and ``smartpark webhooks``.
"""
