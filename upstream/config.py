"""The upstream file: which regulator platforms receive which outlets' data.

``smartpark upstream run --config upstream.yaml``::

    upstreams:
      - name: provincial            # names the outbox rows: keep it stable
        host: 10.1.2.3
        port: 9001
        tls: false                  # true: TLS, verified against ca_file or the system
        ca_file: null
        version: "2017"             # "2017" (Flag=5) or "2025" (Flag=9)
        overtime_s: 10              # OverTime: seconds to wait for the 9014 reply
        recount: 3                  # ReCount: resends before the link is reset
        outlets:
          - outlet: stack-1         # the platform outlet id (for the operators)
            park: p1
            enterprise: e1
            devices: [stack-1-cems] # whose readings form the outlet's packets
            mn: "88888880000001"    # the enterprise's MN at the regulator
            password_env: STACK1_PW # the access password (PW): env or file
            st: "31"                # system code (31 flue gas, 32 surface water...)
            timezone: Asia/Shanghai # the zone of DataTime
            series: [realtime, minute, hour, day]
            pollutants:
              a21026: {metric: so2, corrected: so2_corrected}

Contracts: :func:`load` validates everything at start and raises
:class:`~smartpark.errors.ConfigError` naming ``file:line: field: reason``; the
password is read once, from ``password_env`` or ``password_file``, kept as a
:class:`~pydantic.SecretStr` and never logged. Within one upstream an MN, a device
and, within an outlet, a metric appear once, so every reading has at most one place
in one packet.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge_agent.hj212.model import Hj212Version
from smartpark.catalogue import check_metric
from smartpark.clock import check_timezone
from smartpark.wire import valid_id
from smartpark.yamlfile import load_model, located, validate_model

Series = Literal["realtime", "minute", "hour", "day"]
_FORBIDDEN = frozenset(";,=&")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PollutantMap(_Strict):
    """One HJ 212 code: ``metric`` gives Rtd/Avg/Min/Max/Cou, ``corrected`` the
    ZsRtd/ZsAvg/ZsMin/ZsMax values (the same form as the edge agent's loggers)."""

    metric: str | None = None
    corrected: str | None = None

    @field_validator("metric", "corrected")
    @classmethod
    def _metric(cls, value: str | None) -> str | None:
        return None if value is None else check_metric(value)

    @model_validator(mode="after")
    def _one(self) -> PollutantMap:
        if self.metric is None and self.corrected is None:
            raise located("give metric, corrected or both", "metric")
        return self


class OutletConfig(_Strict):
    outlet: str
    park: str
    enterprise: str
    devices: list[str] = Field(min_length=1)
    mn: str = Field(min_length=1, max_length=24)
    password_env: str | None = None
    password_file: Path | None = None
    st: str = "31"
    timezone: str = "Asia/Shanghai"
    series: list[Series] = Field(min_length=1)
    pollutants: dict[str, PollutantMap] = Field(min_length=1)
    _password: SecretStr = PrivateAttr(default=SecretStr(""))

    @field_validator("outlet", "park", "enterprise")
    @classmethod
    def _id(cls, value: str) -> str:
        if not valid_id(value):
            raise ValueError(f"invalid id {value!r}")
        return value

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: list[str]) -> list[str]:
        for i, device in enumerate(value):
            if not valid_id(device):
                raise located(f"invalid device id {device!r}", i)
            if device in value[:i]:
                raise located(f"device {device!r} listed twice", i)
        return value

    @field_validator("mn", "st")
    @classmethod
    def _text(cls, value: str) -> str:
        if _FORBIDDEN & set(value) or not value.isprintable() or " " in value:
            raise ValueError(f"{value!r} may not contain ; , = & or spaces")
        return value

    @field_validator("st")
    @classmethod
    def _st(cls, value: str) -> str:
        if not value.isdigit() or len(value) != 2:
            raise ValueError(f"ST must be two digits, got {value!r}")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("series")
    @classmethod
    def _series(cls, value: list[Series]) -> list[Series]:
        if len(set(value)) != len(value):
            raise ValueError("a series is listed twice")
        return value

    @field_validator("pollutants")
    @classmethod
    def _codes(cls, value: dict[str, PollutantMap]) -> dict[str, PollutantMap]:
        seen: dict[str, str] = {}
        for code, p in value.items():
            if not code.isalnum() or not code.isascii():
                raise located(f"code {code!r} is not letters and digits", code)
            for name in (p.metric, p.corrected):
                if name is None:
                    continue
                if name in seen:
                    raise located(f"{name} is mapped by {seen[name]} too", code)
                seen[name] = code
        return value

    @field_validator("password_file")
    @classmethod
    def _path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        base = (info.context or {}).get("base_dir")
        if value is None or value.is_absolute() or base is None:
            return value
        return Path(base) / value

    @model_validator(mode="after")
    def _read_password(self) -> OutletConfig:
        if (self.password_env is None) == (self.password_file is None):
            raise located("give password_env or password_file (one)", "password_env")
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise located(
                    f"environment variable {self.password_env} is not set",
                    "password_env",
                )
        else:
            assert self.password_file is not None
            try:
                value = self.password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise located(f"cannot read: {exc.strerror}", "password_file") from None
        if not value or _FORBIDDEN & set(value):
            where = "password_env" if self.password_env else "password_file"
            raise located("the password is empty or has ; , = &", where)
        self._password = SecretStr(value)
        return self

    @property
    def password(self) -> SecretStr:
        return self._password

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @cached_property
    def by_metric(self) -> dict[str, tuple[str, bool]]:
        """metric → (HJ 212 code, whether it is the code's corrected value)."""
        out: dict[str, tuple[str, bool]] = {}
        for code, p in self.pollutants.items():
            if p.metric is not None:
                out[p.metric] = (code, False)
            if p.corrected is not None:
                out[p.corrected] = (code, True)
        return out


class UpstreamConfig(_Strict):
    name: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    ca_file: Path | None = None
    version: Hj212Version = Hj212Version.V2017
    overtime_s: float = Field(default=10.0, gt=0)
    recount: int = Field(default=3, ge=0)
    outlets: list[OutletConfig] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not valid_id(value):
            raise ValueError(f"invalid name {value!r}")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: Hj212Version) -> Hj212Version:
        if value is Hj212Version.V2005:
            raise ValueError("a platform link speaks HJ 212-2017 or -2025")
        return value

    @field_validator("outlets")
    @classmethod
    def _unique(cls, value: list[OutletConfig]) -> list[OutletConfig]:
        mns: set[str] = set()
        devices: dict[str, str] = {}
        for i, o in enumerate(value):
            if o.mn in mns:
                raise located(f"MN {o.mn} is used by another outlet", i, "mn")
            mns.add(o.mn)
            for device in o.devices:
                if device in devices:
                    raise located(
                        f"device {device} is in outlet {devices[device]} too",
                        i,
                        "devices",
                    )
                devices[device] = o.outlet
        return value

    @model_validator(mode="after")
    def _tls(self) -> UpstreamConfig:
        if self.ca_file is not None and not self.tls:
            raise located("ca_file needs tls: true", "ca_file")
        return self

    @property
    def by_mn(self) -> dict[str, OutletConfig]:
        return {o.mn: o for o in self.outlets}


class UpstreamFile(_Strict):
    upstreams: list[UpstreamConfig] = Field(min_length=1)

    @field_validator("upstreams")
    @classmethod
    def _names(cls, value: list[UpstreamConfig]) -> list[UpstreamConfig]:
        names = [u.name for u in value]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise located(f"upstream {name!r} is named twice", i, "name")
        return value


def load(path: str | Path) -> UpstreamFile:
    """Read and validate the upstream file (ConfigError naming file and line)."""
    path = Path(path)
    return load_model(path, UpstreamFile, context={"base_dir": path.resolve().parent})


def parse(data: object, *, source: str = "<upstream>") -> UpstreamFile:
    """Validate already-loaded data (tests, tools); ConfigError without a line."""
    return validate_model(data, UpstreamFile, source=source)
