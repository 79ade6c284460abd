"""The embedded demo: the whole telemetry path on one machine with no services installed."""
