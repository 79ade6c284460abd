"""A PostgreSQL query of Grafana's data source, as a ``grafana-foundation-sdk``
data-query variant (the SDK ships none for PostgreSQL).

:class:`PostgresQuery` is the model (``to_json`` / ``from_json`` in the SDK's
manner), :class:`Sql` its builder. Importing this module registers the variant
for the data source type :data:`DATASOURCE_TYPE`, so a dashboard's JSON read
back with ``Dashboard.from_json`` yields :class:`PostgresQuery` targets, not
untyped bags. Besides the SQL, a query states the columns it returns
(``columns``): not part of Grafana's JSON, kept beside it for the tests that run
every query.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.common import DataSourceRef

DATASOURCE_TYPE = "grafana-postgresql-datasource"
# Every organisation's PostgreSQL data source has this uid (uids are per
# organisation), so one dashboard's JSON serves every organisation.
DATASOURCE_UID = "smartpark-pg"
Format = Literal["time_series", "table"]


def datasource() -> DataSourceRef:
    return DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)


class PostgresQuery(cogvariants.Dataquery):
    """A raw-SQL target: ``{"refId", "datasource", "rawSql", "format",
    "rawQuery": true, "editorMode": "code"}``."""

    def __init__(
        self, ref_id: str = "A", raw_sql: str = "", fmt: Format = "table",
        hide: bool | None = None,
    ) -> None:  # fmt: skip
        self.ref_id = ref_id
        self.raw_sql = raw_sql
        self.format = fmt
        self.hide = hide

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "refId": self.ref_id,
            "datasource": datasource().to_json(),
            "editorMode": "code",
            "format": self.format,
            "rawQuery": True,
            "rawSql": self.raw_sql,
        }
        if self.hide is not None:
            out["hide"] = self.hide
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(
            ref_id=data.get("refId", "A"),
            raw_sql=data.get("rawSql", ""),
            fmt=data.get("format", "table"),
            hide=data.get("hide"),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PostgresQuery) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash((self.ref_id, self.raw_sql, self.format, self.hide))


class Sql(cogbuilder.Builder[PostgresQuery]):
    """Builder of a :class:`PostgresQuery`, with the columns it returns."""

    def __init__(self, raw_sql: str, columns: tuple[str, ...], *,
                 fmt: Format = "table", ref_id: str = "A") -> None:  # fmt: skip
        self._internal = PostgresQuery(ref_id, raw_sql.strip(), fmt)
        self.columns = columns

    def build(self) -> PostgresQuery:
        return self._internal


cogruntime.register_dataquery_variant(
    cogruntime.DataqueryConfig(
        identifier=DATASOURCE_TYPE, from_json_hook=PostgresQuery.from_json
    )
)
