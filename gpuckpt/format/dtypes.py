"""TensorFlow's ``DataType`` enum and the NumPy / ml_dtypes types with the same byte layout."""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class DType:
    """One TensorFlow dtype: its enum value, TF names and NumPy layout (None for strings)."""

    enum: int
    name: str  # TF's Python name, e.g. "float32", "float16"
    tf_enum_name: str  # e.g. "DT_FLOAT", "DT_HALF"
    numpy: np.dtype | None

    @property
    def itemsize(self) -> int:
        """Bytes per element; 0 for variable-length strings."""
        return 0 if self.numpy is None else self.numpy.itemsize

    @property
    def is_string(self) -> bool:
        return self.enum == STRING_ENUM

    def __repr__(self) -> str:
        return f"DType({self.name})"


STRING_ENUM = 7

_TABLE = [
    (1, "float32", "DT_FLOAT", np.float32),
    (2, "float64", "DT_DOUBLE", np.float64),
    (3, "int32", "DT_INT32", np.int32),
    (4, "uint8", "DT_UINT8", np.uint8),
    (5, "int16", "DT_INT16", np.int16),
    (6, "int8", "DT_INT8", np.int8),
    (7, "string", "DT_STRING", None),
    (8, "complex64", "DT_COMPLEX64", np.complex64),
    (9, "int64", "DT_INT64", np.int64),
    (10, "bool", "DT_BOOL", np.bool_),
    (11, "qint8", "DT_QINT8", np.int8),
    (12, "quint8", "DT_QUINT8", np.uint8),
    (13, "qint32", "DT_QINT32", np.int32),
    (14, "bfloat16", "DT_BFLOAT16", ml_dtypes.bfloat16),
    (15, "qint16", "DT_QINT16", np.int16),
    (16, "quint16", "DT_QUINT16", np.uint16),
    (17, "uint16", "DT_UINT16", np.uint16),
    (18, "complex128", "DT_COMPLEX128", np.complex128),
    (19, "float16", "DT_HALF", np.float16),
    (22, "uint32", "DT_UINT32", np.uint32),
    (23, "uint64", "DT_UINT64", np.uint64),
    (24, "float8_e5m2", "DT_FLOAT8_E5M2", ml_dtypes.float8_e5m2),
    (25, "float8_e4m3fn", "DT_FLOAT8_E4M3FN", ml_dtypes.float8_e4m3fn),
    (26, "float8_e4m3fnuz", "DT_FLOAT8_E4M3FNUZ", ml_dtypes.float8_e4m3fnuz),
    (27, "float8_e4m3b11fnuz", "DT_FLOAT8_E4M3B11FNUZ", ml_dtypes.float8_e4m3b11fnuz),
    (28, "float8_e5m2fnuz", "DT_FLOAT8_E5M2FNUZ", ml_dtypes.float8_e5m2fnuz),
    (29, "int4", "DT_INT4", ml_dtypes.int4),
    (30, "uint4", "DT_UINT4", ml_dtypes.uint4),
    (31, "int2", "DT_INT2", ml_dtypes.int2),
    (32, "uint2", "DT_UINT2", ml_dtypes.uint2),
    (33, "float4_e2m1fn", "DT_FLOAT4_E2M1FN", ml_dtypes.float4_e2m1fn),
]

BY_ENUM: dict[int, DType] = {
    e: DType(e, n, tn, None if t is None else np.dtype(t)) for e, n, tn, t in _TABLE
}
BY_NAME: dict[str, DType] = {d.name: d for d in BY_ENUM.values()}
BY_NAME.update({"half": BY_ENUM[19], "float": BY_ENUM[1], "double": BY_ENUM[2]})
STRING = BY_ENUM[STRING_ENUM]

# NumPy dtype -> TF dtype. The quantized types share NumPy layouts with plain integers,
# so a NumPy array maps to the plain type; quantized ones are only used when read from disk.
_BY_NUMPY: dict[np.dtype, DType] = {}
for _d in BY_ENUM.values():
    if _d.numpy is not None and not _d.name.startswith(("qint", "quint")):
        _BY_NUMPY.setdefault(_d.numpy, _d)


def from_numpy(dtype) -> DType:
    """The DType with the same layout as a NumPy dtype (object/str/bytes arrays map to string)."""
    dt = np.dtype(dtype)
    if dt.kind in ("O", "S", "U"):
        return STRING
    try:
        return _BY_NUMPY[dt.newbyteorder("=") if dt.byteorder == "<" else dt]
    except KeyError:
        raise InvalidArgumentError(f"NumPy dtype {dt} has no TensorFlow equivalent") from None


def as_dtype(value) -> DType:
    """Coerce a DType, a TF name (``"float32"``, ``"bfloat16"``) or a NumPy dtype to a DType."""
    if isinstance(value, DType):
        return value
    if isinstance(value, str) and value in BY_NAME:
        return BY_NAME[value]
    name = getattr(value, "name", None)  # e.g. a tf.DType
    if isinstance(name, str) and name in BY_NAME and not isinstance(value, np.dtype):
        return BY_NAME[name]
    return from_numpy(value)
