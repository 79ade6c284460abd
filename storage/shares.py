"""Work split among the live processes by PostgreSQL advisory locks.

Several processes of one service (the notifiers) share work cut into ``slots``
numbered slots (the notifier: an endpoint belongs to one slot). A slot is done by
the process that holds its lock, so by one process at a time. Every lock is a
session-level advisory lock in the two-integer form on one connection of the
process's own, so the server releases them all when the process dies or loses
that connection; nobody has to notice a death.

* Each process holds a **member** lock, ``(member class, its random id)``; the live
  members are counted from ``pg_locks`` (granted advisory locks of the member class
  in this database).
* Each process aims at ``ceil(slots / members)`` slots, ``(slot class, n)``: it
  takes free slots up to that share and gives back the slots beyond it, but only
  those the caller says are idle (the work in flight on a slot finishes first, so
  a slot never has two workers). The classes are derived from the schema and the
  name, so two platforms in one database do not share slots.
* Balance follows one :meth:`SlotShares.rebalance` per member per poll: a member
  that joins takes slots as the others give theirs back; the slots of a member
  that died are free once the server ends its session and are taken by the others
  at their next rebalance. A killed process's socket is closed by its kernel, so
  that is at once; a host that vanishes from the network is noticed only by the
  server's TCP keepalive (``tcp_keepalives_idle`` and friends: set them low where
  that matters), and its slots wait until then.

Every member must cut the work into the same number of slots, or one endpoint
would be in two slots at once. Each member therefore holds a shared lock
``(count class, slots)``; a process that finds a live member holding another count
does not join (``rebalance`` raises :class:`StorageError` naming both counts, with
nothing held) and tries again at its next call: in a rolling change of the count,
the new processes wait until the last one with the old count has stopped.

A lost connection loses every lock at once: :meth:`~SlotShares.rebalance` then
raises with no slot held (``losses`` counts it), and the next call connects and
joins again; the caller stops its work on the slots at once, since another member
may take them over as soon as the server noticed.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Collection

import psycopg
from psycopg.rows import TupleRow

from smartpark.errors import StorageError
from smartpark.settings import DatabaseSettings

# Advisory lock keys are int4; a member id below 2**31 is positive in pg_locks.
_MAX_ID = 2**31 - 1
# How many taken member ids are tried before giving up (collisions are 1 in 2**31).
_ID_TRIES = 5


def lock_class(schema: str, name: str) -> int:
    """A positive int4 for the advisory lock class of ``name`` in ``schema``."""
    digest = hashlib.sha256(f"{schema}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & _MAX_ID


class SlotShares:
    """This process's share of ``slots`` slots among the live members.

    ``await shares.rebalance(idle)`` between units of work (it returns the slots
    held now); ``await shares.release()`` at the end. Raises
    :class:`StorageError` when the database cannot be reached (then nothing is
    held).
    """

    def __init__(
        self,
        settings: DatabaseSettings,
        name: str,
        *,
        slots: int,
        application_name: str,
        rng: random.Random | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slot shares {name}: slots must be at least 1")
        self._dsn = settings.dsn
        self._name = name
        self._member_class = lock_class(settings.schema_, f"{name}:member")
        self._slot_class = lock_class(settings.schema_, f"{name}:slot")
        self._count_class = lock_class(settings.schema_, f"{name}:slots")
        self._application_name = application_name
        self._rng = rng or random.Random()  # noqa: S311 - an id, not a secret
        self.slots = slots
        self.member_id: int | None = None
        self.members = 0
        self._held: set[int] = set()
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None
        # How many times the locks were found lost with their connection.
        self.losses = 0

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held)

    @property
    def target(self) -> int:
        """This member's fair share: ``ceil(slots / members)``."""
        return math.ceil(self.slots / max(self.members, 1))

    async def rebalance(self, idle: Collection[int]) -> frozenset[int]:
        """Count the members, give back held slots beyond the share that are in
        ``idle``, take free slots up to the share; the slots held now."""
        conn = await self._connection()
        try:
            self.members = await self._count_members(conn)
            excess = len(self._held) - self.target
            if excess > 0:
                for slot in sorted(self._held & set(idle), reverse=True)[:excess]:
                    await self._unlock(conn, slot)
            elif excess < 0:
                await self._take(conn, -excess)
        except psycopg.Error as exc:
            await self._lost()
            raise StorageError(f"rebalance the {self._name} slots: {exc}") from exc
        return self.held

    async def release(self) -> None:
        """Give up every slot and the membership (the session ends)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            self._held.clear()
            self.member_id = None
            await conn.close()

    # -- internals ------------------------------------------------------------------

    async def _connection(self) -> psycopg.AsyncConnection[TupleRow]:
        # A connection found broken by a query is dropped there (_lost), so one
        # kept here is, as far as anyone knows, still the session of the locks.
        if self._conn is not None:
            return self._conn
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._dsn.get_secret_value(),
                autocommit=True,
                application_name=self._application_name,
            )
        except psycopg.Error as exc:
            raise StorageError(f"connect for the {self._name} slots: {exc}") from exc
        member_id = None
        try:
            for _ in range(_ID_TRIES):
                candidate = self._rng.randint(1, _MAX_ID)
                if await _try_lock(conn, self._member_class, candidate):
                    member_id = candidate
                    break
        except psycopg.Error as exc:
            await conn.close()
            raise StorageError(f"join the {self._name} members: {exc}") from exc
        if member_id is None:
            await conn.close()
            raise StorageError(f"{self._name}: no free member id in {_ID_TRIES} tries")
        try:
            others = await self._other_counts(conn)
        except psycopg.Error as exc:
            await conn.close()
            raise StorageError(f"join the {self._name} members: {exc}") from exc
        if others:
            await conn.close()  # the session's locks go with it
            raise StorageError(
                f"{self._name}: this process cuts the work into {self.slots} slots, "
                f"a running one into {', '.join(map(str, others))}: every process "
                "must use the same count; not taking any slot until they agree"
            )
        self._conn, self.member_id = conn, member_id
        return conn

    async def _other_counts(self, conn: psycopg.AsyncConnection[TupleRow]) -> list[int]:
        """Announce this member's slot count (a shared lock) and return the other
        counts live members announced."""
        await conn.execute(
            "SELECT pg_advisory_lock_shared(%s, %s)", (self._count_class, self.slots)
        )
        counts = await self._locked(conn, self._count_class)
        return sorted({c for c in counts if c != self.slots})

    async def _lost(self) -> None:
        """The session is gone, and every lock with it."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()
            self.losses += 1
        self._held.clear()
        self.member_id = None

    async def _locked(
        self, conn: psycopg.AsyncConnection[TupleRow], cls: int
    ) -> list[int]:
        """The keys of the granted advisory locks of class ``cls`` in this
        database, whoever holds them."""
        cur = await conn.execute(
            "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory'"
            " AND granted AND objsubid = 2 AND classid = %s::bigint::oid"
            " AND database = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())",
            (cls,),
        )
        return [int(row[0]) for row in await cur.fetchall()]

    async def _count_members(self, conn: psycopg.AsyncConnection[TupleRow]) -> int:
        return len(await self._locked(conn, self._member_class))

    async def _take(self, conn: psycopg.AsyncConnection[TupleRow], wanted: int) -> None:
        """Take free slots (none held by anyone, as ``pg_locks`` shows them now),
        from a random one on, until ``wanted`` are taken: a member short of its
        share, while the others hold the rest, costs one query a rebalance."""
        taken = set(await self._locked(conn, self._slot_class))
        start = self._rng.randrange(self.slots)
        for i in range(self.slots):
            if wanted == 0:
                return
            slot = (start + i) % self.slots
            if slot in taken:
                continue
            if await _try_lock(conn, self._slot_class, slot):  # may lose a race
                self._held.add(slot)
                wanted -= 1

    async def _unlock(self, conn: psycopg.AsyncConnection[TupleRow], slot: int) -> None:
        await conn.execute(
            "SELECT pg_advisory_unlock(%s, %s)", (self._slot_class, slot)
        )
        self._held.discard(slot)


async def _try_lock(
    conn: psycopg.AsyncConnection[TupleRow], cls: int, key: int
) -> bool:
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (cls, key))
    row = await cur.fetchone()
    return bool(row and row[0])
