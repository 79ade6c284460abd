"""Seal, verify and retain: the archive over one schema and one archive root.

Contracts:

- **Seal** (:meth:`Archive.seal`): a local day (park time zone) of an enterprise is
  sealed once its end is ``seal_delay`` in the past; its hot rows become one segment
  and one signed manifest chained after the enterprise's head. The segment and the
  manifest are written (atomically, see :mod:`storage.archive.files`) before the
  index row commits, so an indexed manifest always has its files; a crash between
  leaves files the index does not name, which the retry replaces. A sealed day is
  never sealed again. Each pass also compares, per sealed day still holding hot
  rows, the database's row count with the archived count; where they differ it
  diffs the keys and chains the rows not archived yet as an **amendment**. A sealed
  segment is never rewritten. Running it twice changes nothing the second time.
  One seal at a time per schema: a concurrent one fails on the index's key
  (nothing half-done is indexed).
- **Verify** (:meth:`Archive.verify`): the chain (each indexed manifest's file
  hash, its position and its ``previous``), each signature, each segment's SHA-256
  and row count, and, for every sealed day still in the database, that the hot rows
  are exactly the archived ones (seal and amendments together): a changed, deleted
  or inserted row is a :class:`Finding` naming its key. Rows of a sealed day that
  arrived after its last seal pass are reported as inserted until the next pass
  amends them: late data and an insertion look the same, and the amendment is
  visible in the chain with its creation time.
- **Retain** (:meth:`Archive.retain`): a day older than N days leaves the hot
  database only when it is sealed and verified now (a seal pass, then verify): a
  chain, signature or segment finding of an enterprise blocks all its days, a row
  finding blocks that day. The delete runs in one transaction with the eviction
  record and is rolled back unless it removes exactly the archived row count.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa

from smartpark import __version__
from smartpark.errors import ConfigError, StorageError
from storage.archive import index
from storage.archive.files import ArchiveFiles
from storage.archive.index import Enterprise, Eviction, IndexRow
from storage.archive.manifest import (
    Manifest,
    ManifestError,
    check_signature,
    parse,
    sha256,
    sign,
)
from storage.archive.segment import (
    ArchivedRow,
    RowKey,
    column_stats,
    decode,
    encode,
    rows_of,
    table_of,
)
from storage.base import Conn, Database, storage_errors
from storage.signing import SignatureError, Signer, Verifier

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Finding:
    """Something verify found wrong. ``kind``: ``chain``, ``signature``,
    ``segment``, ``manifest``, ``index``, ``changed``, ``deleted``, ``inserted``,
    ``duplicate`` or ``unsealable``."""

    enterprise: str
    kind: str
    detail: str
    day: date | None = None

    def __str__(self) -> str:
        day = f" {self.day}" if self.day else ""
        return f"{self.kind}: enterprise {self.enterprise}{day}: {self.detail}"


@dataclass(slots=True)
class SealReport:
    """What a seal pass did: manifests written, as ``(enterprise, day, kind,
    rows)``, and what it could not seal."""

    written: list[tuple[str, date, str, int]] = field(default_factory=list)
    problems: list[Finding] = field(default_factory=list)


@dataclass(slots=True)
class VerifyReport:
    findings: list[Finding] = field(default_factory=list)
    manifests: int = 0
    segments: int = 0
    rows_compared: int = 0
    enterprises: int = 0
    # per enterprise: (position, SHA-256) of the chain head's manifest file, to be
    # recorded outside the platform (a removed head is not detectable from inside)
    heads: dict[str, tuple[int, str | None]] = field(default_factory=dict)


@dataclass(slots=True)
class RetainReport:
    evicted: list[tuple[str, date, int]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    # sealed-day problems that blocked nothing but were seen (late rows etc.)
    seal: SealReport = field(default_factory=SealReport)


def day_range(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The local day as a UTC range ``[start, end)`` (23 or 25 hours on DST days)."""
    start = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
    return start, end


def last_due_day(now: datetime, tz: ZoneInfo, delay: timedelta) -> date:
    """The latest local day whose end is ``delay`` or more before ``now``."""
    day = now.astimezone(tz).date()
    while day_range(day, tz)[1] + delay > now:
        day -= timedelta(days=1)
    return day


class Archive:
    """The sealed archive of one schema, its files under ``files``.

    ``signer`` is needed to seal (and so to retain), ``verifier`` to verify.
    """

    def __init__(
        self,
        db: Database,
        files: ArchiveFiles,
        *,
        seal_delay: timedelta,
        signer: Signer | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self._db = db
        self._schema = db.schema
        self._files = files
        self._delay = seal_delay
        self._signer = signer
        self._verifier = verifier

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._db.clock() / 1000, UTC)

    # -- seal -----------------------------------------------------------------------

    async def seal(
        self, *, enterprise: str | None = None, until: date | None = None
    ) -> SealReport:
        """Seal every due day and amend sealed days with late rows (module doc)."""
        if self._signer is None:
            raise ConfigError("sealing needs the signing key", field="signing")
        report = SealReport()
        with storage_errors("archive seal"):
            async with self._db.connection() as conn, _exclusive(conn, self._schema):
                for ent in await index.enterprises(conn, self._schema, enterprise):
                    await self._seal_enterprise(conn, ent, until, report)
        return report

    async def _seal_enterprise(
        self, conn: Conn, ent: Enterprise, until: date | None, report: SealReport
    ) -> None:
        tz = _zone(ent)
        if tz is None:
            report.problems.append(
                Finding(ent.enterprise, "unsealable",
                        f"park {ent.park} has no valid time zone in the registry;"
                        " its days are not sealed")
            )  # fmt: skip
            return
        last = last_due_day(self._now(), tz, self._delay)
        if until is not None:
            last = min(last, until)
        ids = await index.series_ids(conn, self._schema, ent.park, ent.enterprise)
        counts = await index.day_counts(
            conn, self._schema, ids, tz.key, day_range(last, tz)[1]
        )
        chain = await index.manifests(conn, self._schema, ent.enterprise)
        archived: dict[date, int] = {}
        for m in chain:
            archived[m.day] = archived.get(m.day, 0) + m.row_count
        for day in sorted(counts):
            start, end = day_range(day, tz)
            if day not in archived:
                rows = await index.hot_rows(conn, self._schema, ids, start, end)
                marks = await index.marks(
                    conn, self._schema, ent.enterprise, start, end
                )
                await self._append(
                    conn, ent, tz=tz, day=day, kind="seal", rows=rows, marks=marks
                )
                report.written.append((ent.enterprise, day, "seal", len(rows)))
            elif counts[day] != archived[day] or await self._is_evicted(conn, ent, day):
                late = await self._late_rows(
                    conn, ent, ids, tz=tz, day=day, chain=chain
                )
                if isinstance(late, Finding):
                    report.problems.append(late)
                elif late:
                    await self._append(
                        conn, ent, tz=tz, day=day, kind="amendment", rows=late,
                        marks=[],
                    )  # fmt: skip
                    report.written.append((ent.enterprise, day, "amendment", len(late)))

    async def _is_evicted(self, conn: Conn, ent: Enterprise, day: date) -> bool:
        found = await index.evictions(conn, self._schema, enterprise=ent.enterprise)
        return any(e.day == day for e in found)

    async def _late_rows(
        self, conn: Conn, ent: Enterprise, ids: Sequence[int], *, tz: ZoneInfo,
        day: date, chain: Sequence[IndexRow],
    ) -> list[ArchivedRow] | Finding:  # fmt: skip
        """Hot rows of a sealed day whose keys no segment of the day holds; a
        :class:`Finding` instead if a segment of the day is not the one its
        manifest names (nothing is amended on top of it)."""
        archived = await self._archived_rows(chain, day)
        if isinstance(archived, str):
            why = f"{archived}; late rows not amended (run verify)"
            return Finding(ent.enterprise, "segment", why, day)
        keys = {r.key for r in archived}
        start, end = day_range(day, tz)
        hot = await index.hot_rows(conn, self._schema, ids, start, end)
        return [r for r in hot if r.key not in keys]

    async def _archived_rows(
        self, chain: Iterable[IndexRow], day: date
    ) -> list[ArchivedRow] | str:
        """The archived rows of ``day``, or what is wrong with one of its
        segments."""
        rows: list[ArchivedRow] = []
        for m in chain:
            if m.day == day:
                try:
                    data = await asyncio.to_thread(self._files.get, m.segment_path)
                except FileNotFoundError:
                    return f"segment {m.segment_path} is missing"
                if sha256(data) != m.segment_sha256:
                    return f"segment {m.segment_path} differs from its manifest"
                rows += rows_of(decode(data))
        return rows

    async def _append(
        self, conn: Conn, ent: Enterprise, *, tz: ZoneInfo, day: date, kind: str,
        rows: Sequence[ArchivedRow], marks: list[dict[str, object]],
    ) -> None:  # fmt: skip
        assert self._signer is not None  # checked by seal()
        table = table_of(rows)
        segment = encode(table)
        segment_sha = sha256(segment)
        async with conn.transaction():
            head = await index.head(conn, self._schema, ent.enterprise)
            position = head.position + 1 if head else 1
            base = f"{ent.enterprise}/{day.isoformat()}/{position:06d}-{kind}-"
            base += segment_sha[:16]
            start, end = day_range(day, tz)
            manifest = sign(
                Manifest(
                    enterprise=ent.enterprise, park=ent.park, day=day.isoformat(),
                    time_zone=tz.key, start=start.isoformat(), end=end.isoformat(),
                    kind=kind, position=position, row_count=table.num_rows,
                    columns=column_stats(table), segment_path=base + ".parquet",
                    segment_sha256=segment_sha, segment_bytes=len(segment),
                    marks=marks, previous=head.manifest_sha256 if head else None,
                    platform_version=__version__,
                    created_at=self._now().isoformat(), key_id="",
                ),
                self._signer,
            )  # fmt: skip
            data = manifest.file_bytes()
            await asyncio.to_thread(
                self._files.put_segment, manifest.segment_path, segment
            )
            await asyncio.to_thread(
                self._files.put_manifest, base + ".manifest.json", data
            )
            await index.insert_manifest(
                conn, self._schema,
                IndexRow(
                    ent.enterprise, position, ent.park, day, tz.key, kind,
                    table.num_rows, manifest.segment_path, segment_sha,
                    base + ".manifest.json", sha256(data), manifest.previous,
                    manifest.key_id, self._now(),
                ),
            )  # fmt: skip
        log.info(
            "archive: %s %s %s of %s, %d rows", kind, position, day, ent.enterprise,
            table.num_rows,
        )  # fmt: skip

    # -- verify ---------------------------------------------------------------------

    async def verify(self, *, enterprise: str | None = None) -> VerifyReport:
        """Every finding of the chains, signatures, segments and hot rows."""
        if self._verifier is None:
            raise ConfigError(
                "verifying needs the signing public keys", field="signing"
            )
        report = VerifyReport()
        with storage_errors("archive verify"):
            async with self._db.connection() as conn:
                for ent in await index.enterprises(conn, self._schema, enterprise):
                    chain = await index.manifests(conn, self._schema, ent.enterprise)
                    if not chain:
                        continue
                    report.enterprises += 1
                    await self._verify_enterprise(conn, ent, chain, report)
        return report

    async def _verify_enterprise(
        self, conn: Conn, ent: Enterprise, chain: Sequence[IndexRow],
        report: VerifyReport,
    ) -> None:  # fmt: skip
        """Append the findings of one enterprise's chain, segments and rows."""
        assert self._verifier is not None
        name = ent.enterprise
        previous: str | None = None
        trusted: dict[date, list[pa.Table]] = {}
        untrusted: set[date] = set()
        for expected, row in enumerate(chain, start=1):
            report.manifests += 1
            problems, table, file_hash = await self._check_manifest(
                row, expected, previous
            )
            report.findings += [Finding(name, k, d, row.day) for k, d in problems]
            previous = file_hash
            report.heads[name] = (row.position, file_hash)
            if problems or table is None:
                untrusted.add(row.day)
            else:
                report.segments += 1
                trusted.setdefault(row.day, []).append(table)
        evicted = {
            e.day for e in await index.evictions(conn, self._schema, enterprise=name)
        }
        tz = ZoneInfo(chain[0].time_zone)
        ids = await index.series_ids(conn, self._schema, ent.park, name)
        late = await index.day_counts(conn, self._schema, ids, tz.key, self._now())
        for day in sorted(trusted.keys() - untrusted):
            if day in evicted and not late.get(day):
                continue
            start, end = day_range(day, tz)
            hot = await index.hot_rows(conn, self._schema, ids, start, end)
            archived = [r for t in trusted[day] for r in rows_of(t)]
            if day in evicted:
                # only late rows are hot: each must be archived as it is
                keys = {r.key for r in hot}
                archived = [r for r in archived if r.key in keys]
            report.rows_compared += len(archived)
            report.findings += compare_rows(name, day, archived, hot)
        report.findings += await self._orphans(name, chain)

    async def _orphans(
        self, enterprise: str, chain: Sequence[IndexRow]
    ) -> list[Finding]:
        """Files under the enterprise's folder that no indexed manifest names: an
        interrupted seal's leftovers, or a manifest taken out of the index."""
        named = {m.manifest_path for m in chain} | {m.segment_path for m in chain}
        files = await asyncio.to_thread(self._files.list, enterprise)
        return [
            Finding(enterprise, "orphan",
                    f"file {path} is not named by the index (an interrupted seal,"
                    " or a manifest removed from the index)")
            for path in files
            if path not in named
        ]  # fmt: skip

    async def _check_manifest(
        self, row: IndexRow, expected: int, previous: str | None
    ) -> tuple[list[tuple[str, str]], pa.Table | None, str | None]:
        """(problems as (kind, detail), the segment's table if readable, the
        manifest file's hash)."""
        assert self._verifier is not None
        where = f"manifest {row.position} ({row.manifest_path})"
        out: list[tuple[str, str]] = []
        if row.position != expected:
            out.append(("chain", f"{where}: position {expected} is missing"))
        try:
            data = await asyncio.to_thread(self._files.get, row.manifest_path)
        except FileNotFoundError:
            return [*out, ("manifest", f"{where}: file is missing")], None, None
        file_hash = sha256(data)
        if file_hash != row.manifest_sha256:
            out.append(("manifest", f"{where}: file differs from the one indexed"))
        try:
            m = parse(data)
        except ManifestError as exc:
            return [*out, ("manifest", f"{where}: {exc}")], None, file_hash
        if (m.enterprise, m.position, m.day) != (
            row.enterprise, row.position, row.day.isoformat(),
        ):  # fmt: skip
            out.append(
                ("chain",
                 f"{where}: holds enterprise {m.enterprise} position {m.position}"
                 f" day {m.day} (swapped or reordered)")
            )  # fmt: skip
        if m.previous != previous:
            out.append(
                ("chain",
                 f"{where}: previous is {m.previous}, the manifest before it hashes"
                 f" to {previous} (a manifest was swapped, removed or reordered)")
            )  # fmt: skip
        try:
            check_signature(m, self._verifier)
        except SignatureError as exc:
            out.append(("signature", f"{where}: {exc}"))
        try:
            segment = await asyncio.to_thread(self._files.get, m.segment_path)
        except FileNotFoundError:
            return (
                [*out, ("segment", f"segment {m.segment_path}: file is missing")],
                (None),
                file_hash,
            )
        if sha256(segment) != m.segment_sha256:
            out.append(
                ("segment",
                 f"segment {m.segment_path}: SHA-256 {sha256(segment)} differs from"
                 f" the manifest's {m.segment_sha256} (changed, swapped or replaced)")
            )  # fmt: skip
            return out, None, file_hash
        try:
            table = decode(segment)
        except ValueError as exc:
            return (
                [*out, ("segment", f"segment {m.segment_path}: {exc}")],
                (None),
                file_hash,
            )
        if table.num_rows != m.row_count:
            out.append(
                ("segment",
                 f"segment {m.segment_path}: {table.num_rows} rows, the manifest"
                 f" says {m.row_count}")
            )  # fmt: skip
        return out, table, file_hash

    # -- retain ---------------------------------------------------------------------

    async def retain(
        self, *, older_than_days: int, enterprise: str | None = None
    ) -> RetainReport:
        """Evict the sealed, verified days older than ``older_than_days`` (module
        doc). Rollup rows stay in the database."""
        if older_than_days < 1:
            raise ConfigError("--older-than must be at least 1 day")
        report = RetainReport(seal=await self.seal(enterprise=enterprise))
        verified = await self.verify(enterprise=enterprise)
        report.findings += verified.findings
        blocked_all = {
            f.enterprise for f in verified.findings
            if f.kind in ("chain", "signature", "segment", "manifest", "index")
        }  # fmt: skip
        blocked_days = {(f.enterprise, f.day) for f in verified.findings}
        now = self._now()
        with storage_errors("archive retain"):
            async with self._db.connection() as conn, _exclusive(conn, self._schema):
                for ent in await index.enterprises(conn, self._schema, enterprise):
                    if ent.enterprise in blocked_all:
                        continue
                    await self._retain_enterprise(
                        conn, ent, now=now, older_than_days=older_than_days,
                        blocked=blocked_days, report=report,
                    )  # fmt: skip
        return report

    async def _retain_enterprise(
        self, conn: Conn, ent: Enterprise, *, now: datetime, older_than_days: int,
        blocked: set[tuple[str, date | None]], report: RetainReport,
    ) -> None:  # fmt: skip
        chain = await index.manifests(conn, self._schema, ent.enterprise)
        if not chain:
            return
        tz = ZoneInfo(chain[0].time_zone)
        cutoff = now.astimezone(tz).date() - timedelta(days=older_than_days)
        done = {
            e.day
            for e in await index.evictions(
                conn, self._schema, enterprise=ent.enterprise
            )
        }
        archived: dict[date, int] = {}
        for m in chain:
            archived[m.day] = archived.get(m.day, 0) + m.row_count
        ids = await index.series_ids(conn, self._schema, ent.park, ent.enterprise)
        for day in sorted(archived):
            if day >= cutoff or day in done or (ent.enterprise, day) in blocked:
                continue
            eviction = Eviction(
                ent.enterprise, day, ent.park, *day_range(day, tz), archived[day],
                self._files.url,
            )  # fmt: skip
            try:
                deleted = await self._evict(conn, ids, eviction)
            except _Rollback as exc:
                report.findings.append(
                    Finding(ent.enterprise, "changed",
                            f"eviction rolled back: {exc.deleted} hot rows, the"
                            f" archive holds {archived[day]}", day)
                )  # fmt: skip
                continue
            report.evicted.append((ent.enterprise, day, deleted))
        mine = {d for e, d in blocked if e == ent.enterprise}
        await self._drop_late(conn, ent, ids, tz=tz, days=done - mine, report=report)

    async def _evict(
        self, conn: Conn, ids: Sequence[int], e: Eviction, *, record: bool = True
    ) -> int:
        """Delete the day's hot rows (and record the eviction), in one
        transaction; :class:`_Rollback` (nothing done) unless exactly
        ``e.row_count`` rows went."""
        async with conn.transaction():
            deleted = await index.delete_hot(
                conn, self._schema, ids, e.start_at, e.end_at
            )
            if deleted != e.row_count:
                raise _Rollback(deleted)
            if record:
                await index.insert_eviction(conn, self._schema, e)
        return deleted

    async def _drop_late(
        self, conn: Conn, ent: Enterprise, ids: Sequence[int], *, tz: ZoneInfo,
        days: set[date], report: RetainReport,
    ) -> None:  # fmt: skip
        """Delete the hot rows of evicted ``days`` (late rows, amended and verified
        by now), each day in one transaction, left for the next retain if their
        count moved meanwhile."""
        counts = await index.day_counts(conn, self._schema, ids, tz.key, self._now())
        for day in sorted(d for d in days if counts.get(d)):
            late = Eviction(
                ent.enterprise, day, ent.park, *day_range(day, tz), counts[day],
                self._files.url,
            )  # fmt: skip
            try:
                deleted = await self._evict(conn, ids, late, record=False)
            except _Rollback:
                continue
            report.evicted.append((ent.enterprise, day, deleted))


class _Rollback(Exception):
    def __init__(self, deleted: int) -> None:
        super().__init__(deleted)
        self.deleted = deleted


def compare_rows(
    enterprise: str, day: date, archived: Sequence[ArchivedRow],
    hot: Sequence[ArchivedRow],
) -> list[Finding]:  # fmt: skip
    """Findings of hot rows that are not exactly the archived ones, by key."""
    out: list[Finding] = []
    kept: dict[RowKey, ArchivedRow] = {}
    for r in archived:
        if r.key in kept:
            out.append(
                Finding(enterprise, "duplicate", f"archived twice: {r.key}", day)
            )
        kept[r.key] = r
    now = {r.key: r for r in hot}
    for key, r in sorted(kept.items()):
        h = now.get(key)
        if h is None:
            out.append(Finding(enterprise, "deleted", f"{key}", day))
        elif h != r:
            diff = ", ".join(
                f"{name} {a!r} -> {b!r}"
                for name, a, b in zip(r._fields, r, h, strict=True)
                if a != b
            )
            out.append(Finding(enterprise, "changed", f"{key}: {diff}", day))
    out.extend(
        Finding(enterprise, "inserted", f"{key}", day)
        for key in sorted(now.keys() - kept.keys())
    )
    return out


def _zone(ent: Enterprise) -> ZoneInfo | None:
    if ent.time_zone is None:
        return None
    try:
        return ZoneInfo(ent.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@asynccontextmanager
async def _exclusive(conn: Conn, schema: str) -> AsyncIterator[None]:
    """Hold the schema's archive lock on ``conn`` (a session advisory lock, given
    back before the connection returns to its pool): two seals, or a seal and an
    eviction, never run at once. Taken already: StorageError, nothing done."""
    key = f"smartpark.archive.{schema}"
    cur = await conn.execute(
        "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)
    )
    row = await cur.fetchone()
    if row is None or not row[0]:
        raise StorageError(
            "another archive seal or retain is running on this schema; try again"
            " when it has finished"
        )
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
