"""Ingestion: the MQTT → Kafka bridge and the Kafka → database sink, nothing else.

Both stand on the platform layer: :mod:`stream` (Kafka) and :mod:`storage`.
"""
