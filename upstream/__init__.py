"""HJ 212 forwarding to regulator platforms: the platform as an HJ 212 client.

:mod:`.config` (the YAML file of upstream platforms and their outlets),
:mod:`.packets` (pure: readings to packet fields, packets, replies, QNs),
:mod:`.link` (one TCP connection per upstream: send, replies, retransmission,
requests for historical data), :mod:`.service` (the feed from the telemetry topic
into the durable outbox, and the links), :mod:`.cli` (``smartpark upstream run |
status``). It stands on :mod:`storage` and :mod:`stream`, and takes from the edge
agent only the pure HJ 212 codec.
"""
