"""Alert webhook notifier: the pure building blocks (issue 5).

- :mod:`rules.notifier.signing` — Standard Webhooks ``v1`` signatures: sign on the
  sender, :func:`~rules.notifier.signing.verify` on the receiver (standard library
  only, so an enterprise can copy the file).
- :mod:`rules.notifier.ssrf` — which destinations the notifier may connect to, and
  the checked addresses it must connect to.
- :mod:`rules.notifier.retry` — how a delivery attempt's outcome is classified and
  when the next attempt is due.

None of these modules does network I/O (apart from the default DNS resolver in
:mod:`~rules.notifier.ssrf`, which tests replace) or reads a clock it was not given.
"""
