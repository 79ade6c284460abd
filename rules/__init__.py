"""Rule engine: a pure, deterministic core plus a Kafka runner (not built yet)."""
