"""Regulator replay: the service, its jobs, the signed report and the CLI."""
