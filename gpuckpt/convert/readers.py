"""Reading safetensors and torch files into a checkpoint, tensor by tensor and memory-mapped.

Names become keys by ``names.name_to_key``. A file that ``convert --to`` wrote carries the
checkpoint's object graph, so the checkpoint comes back as it was; for any other file an object
graph is made from the names (``model.layers.0.weight`` becomes the variable at object path
``model/layers/0/weight``), with tied weights (entries sharing one torch storage) as one
variable reached by each of their paths, as TensorFlow records aliases.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import struct
from dataclasses import dataclass

import ml_dtypes  # noqa: F401  (registers the dtypes numpy needs below)
import numpy as np

from ..errors import CheckpointError, DataLossError, InvalidArgumentError, NotFoundError
from ..format import dtypes as tf_dtypes
from ..format.objgraph import OBJECT_GRAPH_KEY, AttributeRef, ChildRef, GraphNode, ObjectGraph, decode, encode
from ..saver import write_tensors
from . import _torch, dtypes
from .names import key_to_name, name_to_key, object_path_of

MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit


@dataclass(frozen=True)
class Loaded:
    """A foreign file as checkpoint values: ``{key: array or bytes}`` and the aliases found
    (alias name -> name of the tensor it shares)."""

    values: dict[str, object]
    aliases: dict[str, str]


def _string_value(shape: list[int], elements: list[bytes]):
    if not shape:
        return elements[0]
    out = np.empty(len(elements), dtype=object)
    out[:] = elements
    return out.reshape(shape)


def _strings_from(meta: dict, path: str) -> dict[str, object]:
    try:
        table = json.loads(meta.get("gpuckpt.strings", "{}"))
        return {name_to_key(n): _string_value(v["shape"], [base64.b64decode(x) for x in v["base64"]])
                for n, v in table.items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise DataLossError(f"{path!r}: malformed gpuckpt.strings metadata: {exc}", path=path) from exc


def load_safetensors(path: str) -> Loaded:
    """Parse and check the header (sizes, offsets inside the file, no overlaps) before mapping any data."""
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise DataLossError(f"{path!r} is too short to be a safetensors file", path=path)
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise DataLossError(f"{path!r}: header length {n} exceeds the file", path=path)
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise NotFoundError(f"no file {path!r}", path=path) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path!r}: {exc.strerror}", path=path) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataLossError(f"{path!r}: the safetensors header is not JSON: {exc}", path=path) from exc
    if not isinstance(header, dict):
        raise DataLossError(f"{path!r}: the safetensors header is not a JSON object", path=path)
    meta = header.pop("__metadata__", None) or {}
    base = 8 + n
    values: dict[str, object] = {}
    spans = []
    for name, info in header.items():
        key = _key(name, path)
        try:
            dtype = np.dtype(tf_dtypes.BY_NAME[dtypes.FROM_SAFETENSORS[info["dtype"]]].numpy)
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataLossError(f"{path!r}: tensor {name!r} has a malformed or unsupported header entry ({exc})",
                                path=path, key=name) from exc
        nbytes = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
        if min(shape, default=0) < 0 or begin < 0 or end - begin != nbytes or base + end > size:
            raise DataLossError(f"{path!r}: tensor {name!r} ({info['dtype']} {shape}) has data offsets "
                                f"[{begin}, {end}] that do not fit its shape or the file", path=path, key=name)
        spans.append((begin, end, name))
        values[key] = (np.memmap(path, dtype=dtype, mode="r", offset=base + begin, shape=tuple(shape))
                       if nbytes else np.zeros(shape, dtype))
    spans.sort()
    for (_, end, a), (begin, _, b) in itertools.pairwise(spans):
        if begin < end:
            raise DataLossError(f"{path!r}: the data of tensors {a!r} and {b!r} overlap", path=path, key=b)
    values.update(_strings_from(meta, path))
    try:
        aliases = json.loads(meta.get("gpuckpt.aliases", "{}"))
        order = [name_to_key(n) for n in json.loads(meta.get("gpuckpt.order", "[]"))]
    except (ValueError, AttributeError, TypeError) as exc:
        raise DataLossError(f"{path!r}: malformed gpuckpt metadata", path=path) from exc
    if sorted(order) == sorted(values):  # the checkpoint's own order of bytes, when it is complete
        values = {k: values[k] for k in order}
    return Loaded(values, aliases)


def _key(name: str, path: str) -> str:
    if not isinstance(name, str) or not name:
        raise DataLossError(f"{path!r} holds a tensor with an empty name", path=path)
    return name_to_key(name)


def load_torch(path: str) -> Loaded:
    """``torch.load(weights_only=True)``, memory-mapped where the file allows it; nested dicts and
    lists are flattened with ``.``; Python numbers become scalars, ``bytes``/``str`` string tensors."""
    torch = _torch.torch()

    if not os.path.exists(path):
        raise NotFoundError(f"no file {path!r}", path=path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a zip-format file: retry without mmap, then report
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DataLossError(f"{path!r} is not a file torch.load(weights_only=True) reads: {exc}",
                                path=path) from exc
    flat: dict[str, object] = {}
    _flatten(obj, "", flat, path)
    groups: dict[tuple, list[str]] = {}
    values: dict[str, object] = {}
    for name in flat:  # in the file's order
        value = flat[name]
        if isinstance(value, torch.Tensor) and value.numel():
            ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape),
                     value.stride(), value.dtype)
            groups.setdefault(ident, []).append(name)
        else:
            values[_key(name, path)] = _numpy(value, name, path) if isinstance(value, torch.Tensor) else value
    graph_keys = _graph_keys(values.get(OBJECT_GRAPH_KEY), path)
    aliases: dict[str, str] = {}
    primaries = set()
    for names in groups.values():
        # the tensor is stored once: under the name its object graph uses, else the first name
        primary = next((n for n in names if name_to_key(n) in graph_keys), names[0])
        primaries.add(primary)
        aliases.update({n: primary for n in names if n != primary})
    ordered: dict[str, object] = {}
    for name, value in flat.items():  # the file's order, each stored tensor once
        key = _key(name, path)
        if key in values:
            ordered[key] = values[key]
        elif name in primaries:
            ordered[key] = _numpy(value, name, path)
    return Loaded(ordered, aliases)


def _graph_keys(graph, path: str) -> set[str]:
    """The checkpoint keys a carried object graph names (empty without one)."""
    if not isinstance(graph, bytes):
        return set()
    nodes = decode(graph, path=path).nodes
    return {a.checkpoint_key for node in nodes for a in node.attributes}


def _flatten(obj, prefix: str, out: dict, path: str) -> None:
    torch = _torch.torch()

    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out, path)
    elif isinstance(obj, list) and _is_bytes_tree(obj):  # a string tensor (an empty list: of shape [0])
        elements, shape = _bytes_tree(obj)
        out[prefix] = _string_value(shape, elements)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}.{i}" if prefix else str(i), out, path)
    elif isinstance(obj, (torch.Tensor, bytes, str, bool, int, float)):
        if not prefix:
            raise InvalidArgumentError(f"{path!r} holds a single value, not a dict of tensors", path=path)
        out[prefix] = np.asarray(obj) if isinstance(obj, (bool, int, float)) else obj
    else:
        raise InvalidArgumentError(f"{path!r}: entry {prefix!r} is a {type(obj).__name__}, which a checkpoint "
                                   "cannot hold", path=path, key=prefix)


def _is_bytes_tree(x) -> bool:
    return isinstance(x, bytes) or isinstance(x, list) and all(_is_bytes_tree(y) for y in x)


def _bytes_tree(x) -> tuple[list[bytes], list[int]]:
    if isinstance(x, bytes):
        return [x], []
    parts = [_bytes_tree(y) for y in x]
    if not parts:
        return [], [0]
    shapes = {tuple(s) for _, s in parts}
    if len(shapes) != 1:
        raise InvalidArgumentError("a nested list of bytes is ragged; it cannot be a string tensor")
    return [e for p, _ in parts for e in p], [len(x), *next(iter(shapes))]


def _numpy(t, name: str, path: str) -> np.ndarray:
    """A torch tensor's bytes as a NumPy array of the same dtype, without a copy when contiguous."""
    torch = _torch.torch()

    dtype_name = dtypes.FROM_TORCH.get(str(t.dtype).removeprefix("torch."))
    if dtype_name is None:
        raise InvalidArgumentError(f"{path!r}: tensor {name!r} has dtype {t.dtype}, which a checkpoint cannot hold",
                                   path=path, key=name)
    np_dtype = np.dtype(tf_dtypes.BY_NAME[dtype_name].numpy)
    t = t.detach().contiguous()
    raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)
    return raw.view(np_dtype).reshape(tuple(t.shape))


def graph_for(keys: list[str], aliases: dict[str, str]) -> bytes:
    """An object graph for keys named by the first rule: one node per object path, a variable node
    per key, and each alias as a further edge to its tensor's node (TF's tied-weight layout)."""
    paths: dict[tuple[str, ...], str] = {}
    for key in keys:
        p = object_path_of(key_to_name(key))
        if p is not None:
            paths[p] = key
    edges: dict[tuple, dict[str, tuple]] = {(): {}}

    def ensure(p: tuple) -> None:
        for i in range(1, len(p) + 1):
            edges.setdefault(p[:i], {})
            edges[p[: i - 1]].setdefault(p[i - 1], p[:i])

    for p in paths:
        ensure(p)
    for alias, target in aliases.items():
        a, t = object_path_of(alias), object_path_of(target)
        if a is None or t is None or t not in paths:
            continue
        if a in edges:
            raise InvalidArgumentError(f"tied name {alias!r} is also the path of other tensors")
        ensure(a[:-1])
        edges[a[:-1]][a[-1]] = t
    ids: dict[tuple, int] = {(): 0}
    order: list[tuple[str, ...]] = [()]
    for node_path in order:
        for child_path in edges[node_path].values():
            if child_path not in ids:
                ids[child_path] = len(order)
                order.append(child_path)
    nodes = []
    for p in order:
        attrs = (AttributeRef("VARIABLE_VALUE", key_to_name(paths[p]), paths[p]),) if p in paths else ()
        children = tuple(ChildRef(ids[t], local) for local, t in edges[p].items())
        nodes.append(GraphNode(children=children, attributes=attrs, has_checkpoint_values=True))
    return encode(ObjectGraph(tuple(nodes)))


def write_checkpoint(loaded: Loaded, dst: str, *, force: bool = False) -> str:
    """Write the loaded values as a checkpoint at prefix ``dst`` (atomically, like every save)."""
    if os.path.lexists(dst + ".index") and not force:
        raise InvalidArgumentError(f"checkpoint {dst!r} exists; pass --force to replace it", path=dst + ".index")
    values = dict(loaded.values)
    if OBJECT_GRAPH_KEY not in values:
        values[OBJECT_GRAPH_KEY] = graph_for(list(values), loaded.aliases)
    return write_tensors(dst, values)  # in the loaded order: a checkpoint's own order comes back as it was
