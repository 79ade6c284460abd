"""smartpark core: wire format, metric catalogue, settings, errors and the CLI.

The core imports only the standard library and pydantic, so the edge agent can be
installed on a plant gateway without the platform's dependencies.
"""

__version__ = "0.1.0"
