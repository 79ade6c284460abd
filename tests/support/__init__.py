"""Helpers shared by integration tests: real clients for MQTT and Kafka."""
