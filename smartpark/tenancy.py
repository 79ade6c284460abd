"""Who is asking: roles and the scope an API key grants (pure, no I/O).

The scope comes only from the caller's API key, never from a header, a query
parameter or a body. Every data-access function takes it and applies it in SQL
(:meth:`Scope.park_filter`, :meth:`Scope.enterprise_filter`), so a route cannot
forget it.

- ``operator``: one park (``park`` set) or every park (``park`` None); reads and
  writes within it.
- ``enterprise``: its own enterprise of its park; reads and writes its own data.
- ``regulator``: reads everything, writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    OPERATOR = "operator"
    ENTERPRISE = "enterprise"
    REGULATOR = "regulator"


@dataclass(frozen=True, slots=True)
class Scope:
    role: Role
    park: str | None = None
    enterprise: str | None = None

    def __post_init__(self) -> None:
        if self.role is Role.ENTERPRISE and (
            self.park is None or self.enterprise is None
        ):
            raise ValueError("an enterprise scope needs its park and enterprise")
        if self.role is not Role.ENTERPRISE and self.enterprise is not None:
            raise ValueError(f"a {self.role.value} scope has no enterprise")
        if self.role is Role.REGULATOR and self.park is not None:
            raise ValueError("a regulator scope covers every park")

    @property
    def can_write(self) -> bool:
        return self.role is not Role.REGULATOR

    def allows(self, park: str, enterprise: str | None = None) -> bool:
        """Whether a row of ``park`` (and ``enterprise``) is within the scope."""
        if self.park is not None and park != self.park:
            return False
        return self.enterprise is None or enterprise == self.enterprise

    def describe(self) -> str:
        if self.role is Role.ENTERPRISE:
            return f"enterprise {self.enterprise} of park {self.park}"
        if self.role is Role.OPERATOR:
            return (
                f"operator of park {self.park}"
                if self.park
                else "operator of every park"
            )
        return "regulator (read-only, every park)"


EVERYTHING = Scope(Role.REGULATOR)
"""A read-only scope over everything: for platform-internal reads and tests."""
