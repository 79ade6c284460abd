"""The embedded demo: the whole telemetry path on one machine, no services installed."""
