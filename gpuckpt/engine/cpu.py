"""The CPU engine: checksums host tensors and hands their bytes to storage, overlapping the two.

CRC32C runs on the calling thread (the ``crc32c`` package releases the GIL) while one writer
thread issues positional writes, so checksumming hides behind the disk. Large tensors are
written straight from their own memory in ``CHUNK_BYTES`` pieces; runs of small tensors are
gathered into one vectored write, so thousands of variables cost a few system calls, not thousands.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..arrays import HostTensor
from ..format import crc
from ..plan import SavePlan
from .writer import WriterThread

CHUNK_BYTES = 16 << 20
BATCH_BYTES = 4 << 20


class _Batch:
    """Gathers consecutive small tensors of one shard into a single vectored write."""

    def __init__(self, out: WriterThread):
        self.out = out
        self.shard = -1
        self.start = 0
        self.parts: list[np.ndarray] = []
        self.size = 0

    def add(self, shard: int, offset: int, data: np.ndarray) -> None:
        if self.parts and (shard != self.shard or offset != self.start + self.size or self.size + data.nbytes > BATCH_BYTES):
            self.flush()
        if not self.parts:
            self.shard, self.start = shard, offset
        self.parts.append(data)
        self.size += data.nbytes

    def flush(self) -> None:
        if self.parts:
            self.out.put(self.shard, self.start, self.parts)  # one vectored write, no copy
            self.parts, self.size = [], 0


class CpuEngine:
    """Saves host tensors: computes each one's masked CRC and writes its bytes through ``writer``."""

    name = "cpu"

    def write(self, plan: SavePlan, tensors: Sequence[HostTensor], writer) -> list[int]:
        """Write every planned tensor via ``writer.write(shard, offset, data)``; return masked CRCs."""
        out = WriterThread(writer)
        batch = _Batch(out)
        crcs = []
        try:
            for item, tensor in zip(plan.items, tensors):
                crcs.append(self._write_one(item.shard, item.offset, tensor, out, batch))
            batch.flush()
        finally:
            out.close()
        return crcs

    @staticmethod
    def _write_one(shard: int, offset: int, tensor: HostTensor, out: WriterThread, batch: _Batch) -> int:
        data = tensor.data
        if data.nbytes < BATCH_BYTES // 4:
            batch.add(shard, offset, data)
            return tensor.string_crc if tensor.string_crc is not None else crc.masked_crc32c(data)
        batch.flush()
        value = 0
        for start in range(0, data.nbytes, CHUNK_BYTES):
            chunk = data[start : start + CHUNK_BYTES]
            value = crc.crc32c(chunk, value)
            out.put(shard, offset + start, chunk)
        return tensor.string_crc if tensor.string_crc is not None else crc.mask(value)
