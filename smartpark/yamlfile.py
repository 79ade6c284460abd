"""YAML files validated by a pydantic model, with errors at ``file:line: field``.

Shared by the edge agent's config and the rule packs. Contract of
:func:`load_model`: it returns the validated model or raises
:class:`~smartpark.errors.ConfigError` naming the file, the line and the field path
(``agent.yaml:14: devices[0].registers[1].type: unknown value 'u23' (...)``) for an
unreadable file, YAML syntax errors, duplicate keys (PyYAML would silently keep the
last), unknown keys (typos) and every validation error of the model. A validator
may point below the field it validates by raising :func:`located`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from smartpark.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
Loc = tuple[str | int, ...]


def located(reason: str, *at: str | int) -> PydanticCustomError:
    """A validation error that points ``at`` a node below the validated field.

    The location is appended to the error's own, so a duplicate in a list is
    reported on the line of the duplicate, not of the list.
    """
    return PydanticCustomError("smartpark", "{reason}", {"reason": reason, "at": at})


def load_model(
    path: str | Path,
    model: type[M],
    *,
    context: dict[str, Any] | None = None,
    fix_loc: Callable[[Loc], Loc] | None = None,
) -> M:
    """Read the YAML file at ``path`` and validate it as ``model`` (see the module
    contract). ``fix_loc`` may rewrite an error location before it is shown (e.g.
    to drop a discriminated union's tag)."""
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
    return validate_model(
        data, model, source=name, node=node, context=context, fix_loc=fix_loc
    )


def validate_model(
    data: Any,
    model: type[M],
    *,
    source: str,
    node: yaml.Node | None = None,
    context: dict[str, Any] | None = None,
    fix_loc: Callable[[Loc], Loc] | None = None,
) -> M:
    """Validate already-loaded ``data``; with ``node`` the error names its line."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = exc.errors()
        # A typo'd key also makes the intended key "missing": report the typo.
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc: Loc = tuple(err["loc"]) + tuple(err.get("ctx", {}).get("at", ()))
        if err["type"] == "union_tag_invalid":  # e.g. an unknown rule kind
            loc += (str(err["ctx"]["discriminator"]).strip("'"),)
        if fix_loc is not None:
            loc = fix_loc(loc)
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
    if kind == "union_tag_invalid":
        ctx = err["ctx"]
        return f"unknown value {ctx['tag']!r} (expected one of {ctx['expected_tags']})"
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
