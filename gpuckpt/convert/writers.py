"""Writing safetensors, torch (``torch.save``'s zip format) and npz files tensor by tensor.

Each writer streams every tensor's verified chunks straight into the file, so memory stays at
one chunk. Files are written under a temporary name beside ``dst`` and renamed into place only
when complete; on any failure the temporary file is removed.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Iterator

import numpy as np

from ..errors import CheckpointError, InvalidArgumentError
from ..reader import CheckpointReader
from ..storage.filesystem import writer_token
from . import _torch, dtypes
from .source import FORMAT_TAG, Exported, Item, chunks

_ALIGN = 64  # torch aligns each storage to 64 bytes so that torch.load(mmap=True) can map it


@contextlib.contextmanager
def placed(dst: str, force: bool) -> Iterator[str]:
    """A temporary path that becomes ``dst`` if the block completes; removed otherwise."""
    if os.path.lexists(dst) and not force:
        raise InvalidArgumentError(f"{dst!r} exists; pass --force to replace it", path=dst)
    temp = f"{dst}.tmp-{writer_token()}"
    try:
        yield temp
        os.replace(temp, dst)
    except OSError as exc:
        raise CheckpointError(f"cannot write {dst!r}: {exc.strerror}", path=dst) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _metadata(ex: Exported) -> dict[str, str]:
    meta = {"format": "pt", "gpuckpt.format": FORMAT_TAG}
    aliases = {a: item.name for item in ex.items for a in item.aliases}
    if aliases:
        meta["gpuckpt.aliases"] = json.dumps(aliases, sort_keys=True)
    if ex.strings:
        meta["gpuckpt.strings"] = json.dumps(ex.strings, sort_keys=True)
    meta["gpuckpt.order"] = json.dumps(list(ex.order))
    return meta


def write_safetensors(reader: CheckpointReader, ex: Exported, dst: str, *, force: bool = False) -> None:
    """A safetensors file: the JSON header (tensors once each, aliases and strings in ``__metadata__``),
    then every tensor's bytes in header order."""
    header: dict = {"__metadata__": _metadata(ex)}
    offset = 0
    for item in ex.items:
        code = dtypes.check(dtypes.SAFETENSORS, item.entry.dtype.name, item.key, "safetensors")
        header[item.name] = {"dtype": code, "shape": list(item.entry.shape),
                             "data_offsets": [offset, offset + item.nbytes]}
        offset += item.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with placed(dst, force) as temp, open(temp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for item in ex.items:
            f.writelines(chunks(reader, item))


def write_npz(reader: CheckpointReader, ex: Exported, dst: str, *, force: bool = False) -> None:
    """An npz archive: one ``NAME.npy`` per tensor (bfloat16 and float8 stored as their unsigned
    integer bits, named in ``gpuckpt.json``), plus ``gpuckpt.json`` with aliases, strings and those dtypes."""
    bits = {}
    with placed(dst, force) as temp, zipfile.ZipFile(temp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for item in ex.items:
            dtype = np.dtype(item.entry.dtype.numpy)
            if dtype.kind == "V":  # ml_dtypes types: numpy's .npy cannot name them
                bits[item.name] = item.entry.dtype.name
                dtype = np.dtype(f"<u{dtype.itemsize}")
            info = zipfile.ZipInfo(item.name + ".npy")
            info.file_size = item.nbytes + 128
            with zf.open(info, "w", force_zip64=True) as f:
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                          "shape": tuple(item.entry.shape)}
                np.lib.format.write_array_header_2_0(f, header)
                for chunk in chunks(reader, item):
                    f.write(chunk)
        meta = _metadata(ex)
        if bits:
            meta["gpuckpt.dtypes"] = json.dumps(bits, sort_keys=True)
        zf.writestr("gpuckpt.json", json.dumps(meta, indent=1, sort_keys=True))


class _Storage:
    """A storage record of the torch file, written after the pickle."""

    def __init__(self, key: str, nbytes: int):
        self.key, self.nbytes = key, nbytes


class _Tensor:
    """Pickles as torch's own tensors do: ``_rebuild_tensor_v3(storage, 0, shape, stride, ...)``."""

    def __init__(self, storage: _Storage, shape: tuple[int, ...], dtype):
        self.storage, self.shape, self.dtype = storage, shape, dtype

    def __reduce__(self):
        torch = _torch.torch()
        stride = tuple(int(s) for s in np.cumprod((1, *self.shape[:0:-1]))[::-1]) if self.shape else ()
        return (torch._utils._rebuild_tensor_v3,
                (self.storage, 0, self.shape, stride, False, collections.OrderedDict(), self.dtype))


def write_torch(reader: CheckpointReader, ex: Exported, dst: str, *, force: bool = False) -> None:
    """A ``torch.save`` file of ``{name: tensor}``: aliases are entries sharing one storage (torch
    loads them tied), strings are ``bytes`` values (nested lists of them for arrays). Readable by
    ``torch.load(weights_only=True)`` and, being aligned, with ``mmap=True``."""
    torch = _torch.torch()

    import base64

    state: dict = {}
    storages: list[tuple[_Storage, Item]] = []
    by_name = {item.name: item for item in ex.items}
    for name in ex.order:  # entries in the order of their bytes: converted back, the files come back the same
        if name in ex.strings:
            value = ex.strings[name]
            state[name] = _nest([base64.b64decode(v) or _EMPTY_BYTES for v in value["base64"]], value["shape"])
            continue
        item = by_name[name]
        dtypes.check(dtypes.TORCH, item.entry.dtype.name, item.key, "torch")
        storage = _Storage(str(len(storages)), item.nbytes)
        storages.append((storage, item))
        tensor = _Tensor(storage, tuple(item.entry.shape), getattr(torch, dtypes.TORCH[item.entry.dtype.name]))
        state[item.name] = tensor
        for alias in item.aliases:
            state[alias] = tensor
    archive = os.path.splitext(os.path.basename(dst))[0] or "archive"

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", torch.UntypedStorage, obj.key, "cpu", obj.nbytes)
            return None

    with placed(dst, force) as temp, zipfile.ZipFile(temp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        import io

        buf = io.BytesIO()
        Pickler(buf, protocol=2).dump(state)
        _record(zf, f"{archive}/data.pkl", [buf.getvalue()])
        _record(zf, f"{archive}/.format_version", [b"1"])
        _record(zf, f"{archive}/.storage_alignment", [str(_ALIGN).encode()])
        _record(zf, f"{archive}/byteorder", [b"little"])
        for storage, item in storages:
            _record(zf, f"{archive}/data/{storage.key}", chunks(reader, item), storage.nbytes)
        _record(zf, f"{archive}/version", [b"3\n"])
        _record(zf, f"{archive}/.data/serialization_id", [os.urandom(20).hex().encode()[:40]])


class _EmptyBytes:
    """``b""``: pickle's protocol 2 (torch's) writes it as a call of ``bytes``, which
    ``torch.load(weights_only=True)`` refuses; ``_codecs.encode("", "latin1")`` is allowed and equal."""

    def __reduce__(self):
        import _codecs

        return (_codecs.encode, ("", "latin1"))


_EMPTY_BYTES = _EmptyBytes()


def _nest(flat: list, shape: list[int]):
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def _record(zf: zipfile.ZipFile, name: str, parts, size: int | None = None) -> None:
    """One stored zip member whose data starts on a ``_ALIGN``-byte boundary (padding in an extra field)."""
    parts = list(parts) if size is None else parts
    size = sum(len(p) for p in parts) if size is None else size
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT
    assert zf.fp is not None  # open for writing
    start = zf.fp.tell() + 30 + len(name.encode()) + (20 if zip64 else 0)
    pad = -(start + 4) % _ALIGN
    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # 'FB', as torch's own writer pads
    with zf.open(info, "w", force_zip64=zip64) as f:
        for part in parts:
            f.write(part)
