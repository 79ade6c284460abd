"""The Kafka side every platform service shares.

- :mod:`stream.group` — :class:`~stream.group.DbPositionedConsumer`, the consumer
  group member whose positions live in the database (the sink, the rules runner and
  the notifier are three of them);
- :mod:`stream.kafka` — the producer every service uses, topic creation, dead
  letters;
- :mod:`stream.records` — decoding a telemetry record, the same for every consumer;
- :mod:`stream.service` — running a service in the foreground until a signal.

Imports: the core (:mod:`smartpark`) and aiokafka; never a service.
"""
