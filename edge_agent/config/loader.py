"""Reading the agent's YAML file (the generic part is :mod:`smartpark.yamlfile`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_agent.config.model import AgentConfig
from smartpark.yamlfile import load_model, validate_model


def parse_config(
    data: Any, *, source: str = "<config>", base_dir: Path | None = None
) -> AgentConfig:
    """Validate already-loaded data (e.g. built in Python); ConfigError without line."""
    return validate_model(
        data, AgentConfig, source=source, context={"base_dir": base_dir}
    )


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate the YAML file at ``path`` (see the package contract)."""
    path = Path(path)
    return load_model(path, AgentConfig, context={"base_dir": path.resolve().parent})
