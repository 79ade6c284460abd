"""Rule engine (issue 4): a pure, deterministic core plus a Kafka runner. Not built yet."""
