"""The dtypes each foreign format can hold, by gpuckpt's (TensorFlow's) dtype name."""

from __future__ import annotations

from ..errors import InvalidArgumentError

# gpuckpt name -> safetensors dtype code
SAFETENSORS = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL", "complex64": "C64",
}
FROM_SAFETENSORS = {code: name for name, code in SAFETENSORS.items()}

# gpuckpt name -> torch dtype attribute name
TORCH = {
    "float64": "float64", "float32": "float32", "float16": "float16", "bfloat16": "bfloat16",
    "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2",
    "int64": "int64", "int32": "int32", "int16": "int16", "int8": "int8",
    "uint64": "uint64", "uint32": "uint32", "uint16": "uint16", "uint8": "uint8", "bool": "bool",
    "complex64": "complex64", "complex128": "complex128",
}
FROM_TORCH = {torch_name: name for name, torch_name in TORCH.items()}


def check(table: dict[str, str], dtype_name: str, key: str, fmt: str) -> str:
    """The format's code for a dtype; InvalidArgumentError naming the key when it has none."""
    try:
        return table[dtype_name]
    except KeyError:
        raise InvalidArgumentError(f"tensor {key!r} has dtype {dtype_name}, which {fmt} files cannot hold "
                                   "(leave it out with --filter)", key=key) from None
