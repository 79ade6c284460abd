"""Where segments and manifests live: a local directory or any fsspec URL.

Paths are relative to the archive's root (``SMARTPARK_ARCHIVE__URL``)::

    {enterprise}/{YYYY-MM-DD}/{position:06d}-{kind}-{segment sha256[:16]}.parquet
    {enterprise}/{YYYY-MM-DD}/{position:06d}-{kind}-{segment sha256[:16]}.manifest.json

Writes are atomic: the bytes go to a temporary name beside the final one, then are
renamed (a local directory: fsync, then ``os.replace``; object storage: one PUT of
the whole object, then a server-side move), so a half file never carries a final
name. A segment is never replaced by other bytes: writing different bytes under an
existing segment's name is an :class:`ArchiveStorageError`; writing the same bytes
again (a seal retried after a crash) is a no-op. A manifest at a position the index
does not hold yet (written by a seal that crashed before indexing it) may be
replaced: it was never part of the chain.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from smartpark.errors import StorageError


class ArchiveStorageError(StorageError):
    """The archive's storage refused or failed an operation; the message says which
    file and why."""


class ArchiveFiles:
    """The files under one archive root URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        fs, root = fsspec.core.url_to_fs(url)
        self._fs: Any = fs
        self._root = root.rstrip("/")
        self._local = isinstance(fs, LocalFileSystem)

    def _full(self, rel: str) -> str:
        return f"{self._root}/{rel}"

    def get(self, rel: str) -> bytes:
        """The bytes of ``rel``; :class:`FileNotFoundError` if it is not there."""
        data: bytes = self._fs.cat_file(self._full(rel))
        return data

    def exists(self, rel: str) -> bool:
        return bool(self._fs.exists(self._full(rel)))

    def list(self, prefix: str) -> list[str]:
        """Every file under ``prefix`` (relative paths, sorted)."""
        base = self._full(prefix).rstrip("/")
        if not self._fs.exists(base):
            return []
        strip = len(self._root) + 1
        found = self._fs.find(base)
        return sorted(str(p)[strip:] if str(p).startswith(self._root) else str(p)
                      for p in found)  # fmt: skip

    def put_segment(self, rel: str, data: bytes) -> None:
        """Write a segment once (see the module doc)."""
        if self.exists(rel):
            if hashlib.sha256(self.get(rel)).digest() == hashlib.sha256(data).digest():
                return
            raise ArchiveStorageError(
                f"segment {rel} already exists with other bytes; a segment is never"
                " rewritten"
            )
        self._put(rel, data)

    def put_manifest(self, rel: str, data: bytes) -> None:
        """Write a manifest not indexed yet (see the module doc)."""
        self._put(rel, data)

    def _put(self, rel: str, data: bytes) -> None:
        final = self._full(rel)
        parent = final.rpartition("/")[0]
        temp = f"{parent}/.tmp-{uuid.uuid4().hex}-{final.rpartition('/')[2]}"
        try:
            self._fs.makedirs(parent, exist_ok=True)
            if self._local:
                _write_local(temp, final, data)
            else:
                self._fs.pipe_file(temp, data)
                self._fs.mv(temp, final)
        except OSError as exc:
            raise ArchiveStorageError(f"write of {rel} failed: {exc}") from exc


def _write_local(temp: str, final: str, data: bytes) -> None:
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    dir_fd = os.open(os.path.dirname(final) or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
