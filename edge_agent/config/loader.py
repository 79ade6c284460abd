"""Reading the YAML file; validation errors become ``file:line: field: reason``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from edge_agent.config.model import AgentConfig
from smartpark.errors import ConfigError


def parse_config(
    data: Any, *, source: str = "<config>", base_dir: Path | None = None
) -> AgentConfig:
    """Validate already-loaded data (e.g. built in Python); ConfigError without line."""
    return _validate(data, source, None, base_dir)


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate the YAML file at ``path`` (see the module contract)."""
    path = Path(path)
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError("the file is empty", file=name)
        _reject_duplicate_keys(node, name)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(
            f"not valid YAML: {exc.problem}", file=name, line=line
        ) from None
    finally:
        loader.dispose()
    return _validate(data, name, node, path.resolve().parent)


def _validate(
    data: Any, source: str, node: yaml.Node | None, base_dir: Path | None
) -> AgentConfig:
    try:
        return AgentConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        errors = exc.errors()
        # A typo'd key also makes the intended key "missing": report the typo.
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = tuple(err["loc"]) + tuple(err.get("ctx", {}).get("at", ()))
        line = _line_of(node, loc, key=err["type"] == "extra_forbidden")
        field = _format_loc(loc)
        raise ConfigError(_reason(err), file=source, line=line, field=field) from None


def _reason(err: Any) -> str:
    kind, msg, value = err["type"], err["msg"], err.get("input")
    if kind == "extra_forbidden":
        return "unknown field (a typo?)"
    if kind == "missing":
        return "missing required field"
    if kind == "literal_error":
        return f"unknown value {value!r} (expected one of {err['ctx']['expected']})"
    if kind == "value_error":
        return str(msg).removeprefix("Value error, ")
    if kind == "smartpark":
        return str(msg)
    return f"{msg} (got {value!r})"


def _format_loc(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else part
    return out


def _line_of(
    node: yaml.Node | None, loc: Sequence[str | int], *, key: bool
) -> int | None:
    """1-based line of the YAML node at ``loc``, or of its deepest existing parent.

    ``key`` points at the key itself (an unknown field) rather than at its value.
    """
    if node is None:
        return None
    for depth, part in enumerate(loc):
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    last = depth == len(loc) - 1
                    child = k if key and last else v
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
        if child is None:
            break
        node = child
    return node.start_mark.line + 1


def _reject_duplicate_keys(node: yaml.Node, source: str) -> None:
    # PyYAML silently keeps the last of two equal keys; an engineer who pasted a
    # register twice would never learn which one is used.
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                if k.value in seen:
                    raise ConfigError(
                        f"duplicate key {k.value!r}",
                        file=source,
                        line=k.start_mark.line + 1,
                    )
                seen.add(k.value)
            _reject_duplicate_keys(v, source)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicate_keys(item, source)
