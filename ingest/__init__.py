"""Ingest: MQTT → Kafka bridge, Kafka → database sink, schema and storage dialects."""
