"""The ``hj212`` section: the listener and the data loggers it maps."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge_agent.config.base import (
    StrictModel,
    check_id,
    read_secret,
    resolve_path,
)
from edge_agent.hj212.listener import LoggerMapping
from edge_agent.hj212.model import Hj212Version
from smartpark.catalogue import check_metric, to_canonical
from smartpark.clock import check_timezone
from smartpark.errors import PayloadError
from smartpark.yamlfile import located

HJ212_INTERVALS = {"minute": "2051", "hourly": "2061", "daily": "2031"}
# HJ 212 field separators; an MN containing one could not be sent at all.
_MN_FORBIDDEN = frozenset(";,=&")


class PollutantConfig(StrictModel):
    """One HJ 212 code: ``metric`` takes Rtd/Avg, ``corrected`` ZsRtd/ZsAvg."""

    metric: str | None = None
    corrected: str | None = None
    unit: str | None = None  # what the logger sends; default: the metric's unit

    @field_validator("metric", "corrected")
    @classmethod
    def _metric(cls, value: str | None) -> str | None:
        return None if value is None else check_metric(value)

    @model_validator(mode="after")
    def _unit(self) -> PollutantConfig:
        if self.metric is None and self.corrected is None:
            raise located("give metric, corrected or both", "metric")
        if self.unit is not None:
            for name, at in ((self.metric, "metric"), (self.corrected, "corrected")):
                if name is not None:
                    try:
                        to_canonical(name, 1.0, self.unit)
                    except PayloadError as exc:
                        raise located(f"{exc.reason} (for {at})", "unit") from None
        return self


class LoggerConfig(StrictModel):
    mn: str = Field(min_length=1, max_length=24)
    device: str
    minute: str | None = None
    hourly: str | None = None
    daily: str | None = None
    timezone: str = "Asia/Shanghai"
    # the generation of HJ 212 the logger speaks: "2005", "2017" or "2025"
    version: Hj212Version = Hj212Version.V2017
    password_file: Path | None = None
    password_env: str | None = None
    pollutants: dict[str, PollutantConfig] = Field(min_length=1)
    _password: SecretStr | None = PrivateAttr(default=None)

    @field_validator("mn")
    @classmethod
    def _mn(cls, value: str) -> str:
        if _MN_FORBIDDEN & set(value) or not value.isprintable() or " " in value:
            raise ValueError(f"MN {value!r} may not contain ; , = & or spaces")
        return value

    @field_validator("device", "minute", "hourly", "daily")
    @classmethod
    def _ids(cls, value: str | None) -> str | None:
        return None if value is None else check_id(value)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: object) -> object:
        # YAML reads an unquoted 2017 as an integer; the generations are names.
        return str(value) if type(value) is int else value

    @field_validator("password_file")
    @classmethod
    def _password_path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return resolve_path(value, info)

    @model_validator(mode="after")
    def _check(self) -> LoggerConfig:
        # An interval may name the logger's own device: every reading carries its
        # data type, so the series never mix (smartpark.wire, "dt").
        self._password = read_secret(self.password_file, self.password_env)
        return self

    @property
    def series(self) -> dict[str, str]:
        """Platform device id per series: ``device`` plus the enabled intervals
        (an interval may name ``device`` itself)."""
        out = {"real_time": self.device}
        out.update({k: v for k in HJ212_INTERVALS if (v := getattr(self, k))})
        return out

    def mapping(self) -> LoggerMapping:
        p = self.pollutants
        return LoggerMapping(
            device_id=self.device,
            metrics={c: v.metric for c, v in p.items() if v.metric is not None},
            corrected={c: v.corrected for c, v in p.items() if v.corrected},
            units={c: v.unit for c, v in p.items() if v.unit is not None},
            intervals={
                cn: name
                for key, cn in HJ212_INTERVALS.items()
                if (name := getattr(self, key)) is not None
            },
            password=None
            if self._password is None
            else self._password.get_secret_value(),
            tz=ZoneInfo(self.timezone),
            version=self.version,
        )


class Hj212Config(StrictModel):
    """The HJ 212 listener: data loggers connect to ``host:port``."""

    host: str = "0.0.0.0"  # noqa: S104 - loggers connect from the plant network
    port: int = Field(
        ge=0, le=65535
    )  # 0: a free port (tests; loggers need a fixed one)
    idle_timeout_s: float = Field(default=300.0, gt=0)
    max_connections: int = Field(default=1000, ge=1)
    strict: bool = True
    loggers: tuple[LoggerConfig, ...] = Field(min_length=1)

    @field_validator("loggers")
    @classmethod
    def _unique(cls, value: tuple[LoggerConfig, ...]) -> tuple[LoggerConfig, ...]:
        seen: dict[str, int] = {}
        for i, logger in enumerate(value):
            if logger.mn in seen:
                raise located(
                    f"MN {logger.mn!r} is already loggers[{seen[logger.mn]}]", i, "mn"
                )
            seen[logger.mn] = i
        return value

    def mappings(self) -> dict[str, LoggerMapping]:
        return {logger.mn: logger.mapping() for logger in self.loggers}
