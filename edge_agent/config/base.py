"""What every part of the agent's config shares: the strict base model, ids,
errors located below a field, paths relative to the file, and secrets."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    SecretStr,
    ValidationInfo,
)

from smartpark import wire
from smartpark.yamlfile import located


def check_id(value: str) -> str:
    if not wire.valid_id(value):
        raise ValueError(
            f"invalid id {value!r}: 1-64 characters of A-Z a-z 0-9 _ . : -, "
            "starting with a letter or digit"
        )
    return value


class StrictModel(BaseModel):
    # extra="forbid": a typo'd key must fail loudly, not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


def read_secret(
    path: Path | None, env: str | None, *, field: str = "password"
) -> SecretStr | None:
    """The secret in file ``path`` or environment variable ``env`` (not both);
    errors point at ``{field}_file`` / ``{field}_env``."""
    if path is not None and env is not None:
        raise located(f"give {field}_file or {field}_env, not both", f"{field}_env")
    if path is not None:
        try:
            return SecretStr(path.read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise located(f"cannot read: {exc.strerror}", f"{field}_file") from None
        except UnicodeDecodeError:
            raise located("not UTF-8 text", f"{field}_file") from None
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise located(f"environment variable {env} is not set", f"{field}_env")
        return SecretStr(value)
    return None


def resolve_path(value: Path | None, info: ValidationInfo) -> Path | None:
    base = (info.context or {}).get("base_dir")
    if value is None or value.is_absolute() or base is None:
        return value
    return Path(base) / value
