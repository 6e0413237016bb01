"""Plain Python values in a checkpoint: a typed, non-executable JSON encoding, and ``PythonState``.

Numbers, strings, bools, ``None``, bytes, NumPy scalars and lists, tuples and dicts of them are
saved as one string attribute (``py_state``) holding JSON in which every type survives the round
trip: ints stay ints, floats keep every bit (``repr``; NaN and infinities tagged), tuples stay
tuples, dict keys keep their type and order. Nothing is pickled and decoding never runs code:
it accepts only the tags below. Anything else is refused when saving with an
``InvalidArgumentError`` naming its path.

Encoding of one value (a JSON document ``{"gpuckpt.pystate": 1, "value": <node>}``)::

    None, True, False, "str", 3, 2.5   as JSON            float NaN/inf  {"float": "nan"}
    [a, b]                             JSON array         (a, b)         {"tuple": [a, b]}
    {k: v}                             {"dict": [[k, v], ...]}    bytes   {"bytes": "<base64>"}
    numpy scalar                       {"numpy": ["<f4", <node>]}
    a tensor kept beside the JSON      {"tensor": ["name", "torch" | "numpy", "cpu"]}  (state_dict trackables)
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .errors import DataLossError, InvalidArgumentError
from .trackable.base import Trackable

PY_STATE = "py_state"
FORMAT = "gpuckpt.pystate"
VERSION = 1

__all__ = ["PythonState", "decode", "encode", "is_plain"]

# A hook that takes (value, path) and returns a JSON node for a value the encoder does not know,
# or None to refuse it; state_dict trackables use it to put tensors beside the JSON.
Extra = Callable[[Any, str], Any]


def is_plain(value: Any) -> bool:
    """True for values the encoding saves: plain scalars and lists, tuples and dicts of them."""
    try:
        to_node(value, "", None)
    except InvalidArgumentError:
        return False
    return True


def to_node(value: Any, path: str, extra: Extra | None) -> Any:
    """The JSON node of ``value`` (see the module docstring); ``path`` names it in errors."""
    kind = type(value)
    if value is None or kind in (bool, str):
        return value
    if kind is int:
        return value
    if kind is float:
        return value if math.isfinite(value) else {"float": repr(value)}
    if kind is list:
        return [to_node(v, f"{path}[{i}]", extra) for i, v in enumerate(value)]
    if kind is tuple:
        return {"tuple": [to_node(v, f"{path}[{i}]", extra) for i, v in enumerate(value)]}
    if kind is dict:
        return {"dict": [[to_node(k, f"{path} key {k!r}", extra), to_node(v, f"{path}[{k!r}]", extra)]
                         for k, v in value.items()]}
    if kind is bytes:
        return {"bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, np.generic) and value.dtype.kind in "biufc" and value.dtype.isbuiltin:
        return {"numpy": [value.dtype.str, to_node(value.item(), path, None)]}
    if extra is not None:
        node = extra(value, path)
        if node is not None:
            return node
    raise InvalidArgumentError(
        f"cannot checkpoint {path or 'the value'}: it is a {kind.__module__}.{kind.__qualname__}; gpuckpt saves "
        "numbers, strings, bools, None, bytes, NumPy scalars and lists, tuples and dicts of them as Python "
        "state (never pickled), tensors and arrays as variables (gpuckpt.Variable), and objects with "
        "state_dict()/load_state_dict()", key=path or None)


def from_node(node: Any, where: str, tensor: Callable[[list[str]], Any] | None = None) -> Any:
    """The value a JSON node stands for; ``DataLossError`` (naming ``where``) for anything unknown."""
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [from_node(n, where, tensor) for n in node]
    if isinstance(node, dict) and len(node) == 1:
        (tag, body), = node.items()
        if tag == "tuple" and isinstance(body, list):
            return tuple(from_node(n, where, tensor) for n in body)
        if tag == "dict" and isinstance(body, list) and all(isinstance(p, list) and len(p) == 2 for p in body):
            return {_hashable(from_node(k, where, tensor), where): from_node(v, where, tensor) for k, v in body}
        if tag == "float" and body in ("nan", "inf", "-inf"):
            return float(body)
        if tag == "bytes" and isinstance(body, str):
            return base64.b64decode(body.encode("ascii"), validate=True)
        if tag == "numpy" and isinstance(body, list) and len(body) == 2 and isinstance(body[0], str):
            dtype = np.dtype(body[0]) if body[0][1:] in _NUMPY_CODES else None
            if dtype is not None:
                return dtype.type(from_node(body[1], where, None))
        if (tag == "tensor" and tensor is not None and isinstance(body, list) and len(body) == 3
                and all(isinstance(b, str) for b in body) and body[1] in ("torch", "numpy")):
            return tensor(body)
    raise DataLossError(f"{where}: Python state holds an unknown node {str(node)[:80]!r}; it was not written by "
                        "gpuckpt or is damaged")


_NUMPY_CODES = {f"{k}{n}" for k in "biuf" for n in (1, 2, 4, 8)} | {"c8", "c16", "f16"}


def _hashable(key: Any, where: str) -> Any:
    try:
        hash(key)
    except TypeError as exc:
        raise DataLossError(f"{where}: Python state has an unhashable dict key") from exc
    return key


def encode(value: Any, path: str = "", extra: Extra | None = None) -> bytes:
    """``value`` as the encoding's UTF-8 JSON bytes; ``InvalidArgumentError`` naming the path of what cannot be
    saved."""
    document = {FORMAT: VERSION, "value": to_node(value, path, extra)}
    return json.dumps(document, allow_nan=False, separators=(",", ":")).encode("utf-8")


def decode(data: Any, where: str, tensor: Callable[[list[str]], Any] | None = None) -> Any:
    """The value ``encode`` wrote; ``DataLossError`` naming ``where`` for anything else."""
    if isinstance(data, np.ndarray) and data.shape == ():
        data = data.item()
    if not isinstance(data, (bytes, str)):
        raise DataLossError(f"{where}: Python state is a {type(data).__name__}, not a string")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise DataLossError(f"{where}: Python state is not valid JSON ({exc})") from exc
    if not isinstance(document, dict) or document.get(FORMAT) != VERSION or "value" not in document:
        raise DataLossError(f"{where}: Python state lacks the {FORMAT!r} version {VERSION} header")
    try:
        return from_node(document["value"], where, tensor)
    except RecursionError as exc:
        raise DataLossError(f"{where}: Python state is nested too deeply") from exc


class PythonState(Trackable):
    """Plain Python values saved in a checkpoint (TensorFlow's ``PythonState`` idea, without pickle).

    ``gpuckpt.Checkpoint(meta=gpuckpt.PythonState({"epoch": 3}))`` saves the dict as typed JSON
    under ``meta/.ATTRIBUTES/py_state``. A restore sets :attr:`value`; a dict or list held is
    updated in place, so references to it see the restored contents.
    """

    def __init__(self, value: Any = None):
        self._self_value = value

    @property
    def value(self) -> Any:
        return self._self_value

    @value.setter
    def value(self, value: Any) -> None:
        self._self_value = value

    def _checkpoint_validate(self, path: str) -> None:
        """Before a save: refuse what the encoding cannot hold, naming it by its path in the checkpoint."""
        encode(self._self_value, path)

    def _serialize_tensors(self) -> Mapping[str, Any]:
        return {PY_STATE: encode(self._self_value, type(self).__name__)}

    def _restore_tensors(self, values: Mapping[str, Any]) -> None:
        restored = decode(values[PY_STATE], f"{type(self).__name__} attribute {PY_STATE!r}")
        current = self._self_value
        if type(current) is dict and type(restored) is dict:
            current.clear()
            current.update(restored)
        elif type(current) is list and type(restored) is list:
            current[:] = restored
        else:
            self._self_value = restored

    def __repr__(self) -> str:
        return f"<gpuckpt.PythonState {self._self_value!r}>"
