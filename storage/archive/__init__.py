"""The sealed archive: the cold tier of telemetry and the proof it was not altered.

Each local day (park time zone) of each enterprise becomes one immutable Parquet
segment (:mod:`storage.archive.segment`) with a signed manifest chained to the
enterprise's previous one (:mod:`storage.archive.manifest`); rows arriving after a
day was sealed become amendment segments chained after the head. Segments and
manifests live under a local directory or any fsspec URL
(:mod:`storage.archive.files`), indexed in the database (migration 0014).

- :class:`Archive` seals, verifies and evicts (:mod:`storage.archive.archive`);
- :func:`archived_days` and :func:`read_archived` read the rows of evicted days
  back, in the API's raw reading shape (:mod:`storage.archive.reader`): what
  ``storage.queries`` merges with the hot rows, and what replay is to read;
- ``smartpark archive seal | verify | retain`` (:mod:`storage.archive.cli`).
"""

from storage.archive.archive import (
    Archive,
    Finding,
    RetainReport,
    SealReport,
    VerifyReport,
)
from storage.archive.files import ArchiveFiles, ArchiveStorageError
from storage.archive.reader import ArchivedDay, RowFilter, archived_days, read_archived
from storage.archive.segment import ArchivedRow, RowKey

__all__ = [
    "Archive",
    "ArchiveFiles",
    "ArchiveStorageError",
    "ArchivedDay",
    "ArchivedRow",
    "Finding",
    "RetainReport",
    "RowFilter",
    "RowKey",
    "SealReport",
    "VerifyReport",
    "archived_days",
    "read_archived",
]
