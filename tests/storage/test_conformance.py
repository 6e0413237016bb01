"""The storage conformance suite against the POSIX file system store."""

from __future__ import annotations

from gpuckpt.options import StorageConfig
from gpuckpt.storage.base import StorageReader, StorageWriter
from gpuckpt.storage.filesystem import FileSystemWriter
from gpuckpt.storage.reader import FileSystemReader
from gpuckpt.testing.storage_conformance import StorageConformance


class TestFileSystemStore(StorageConformance):
    def writer(self, prefix: str, num_shards: int) -> StorageWriter:
        return FileSystemWriter(prefix, num_shards, StorageConfig(fsync=False))

    def reader(self, prefix: str) -> StorageReader:
        return FileSystemReader(prefix)

    def test_the_store_implements_the_protocols(self, tmp_path) -> None:
        writer = self.writer(str(tmp_path / "ck"), 1)
        assert isinstance(writer, StorageWriter)
        writer.abort()
        self._write(str(tmp_path / "ck"), {"a": (0, b"x")})
        with self.reader(str(tmp_path / "ck")) as reader:
            assert isinstance(reader, StorageReader)
