"""The protobuf messages of TensorFlow's checkpoint format, declared here without protoc.

The descriptors are built at import time in a private pool, under the package name
``gpuckpt.tf``, so they never clash with TensorFlow's own classes when both are loaded.
Field numbers and types follow TensorFlow's ``.proto`` files (docs/format.md §§4, 8 and 9); enum
fields are declared ``int32``, which has the same wire encoding and keeps unknown values.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_TYPES = {
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
    "double": _F.TYPE_DOUBLE,
    "fixed32": _F.TYPE_FIXED32,
}

# message name -> [(field name, number, type or ".gpuckpt.tf.Message", repeated?, oneof index)]
_Field = tuple[str, int, str, bool] | tuple[str, int, str, bool, int]
_MESSAGES: dict[str, list[_Field]] = {
    "VersionDef": [("producer", 1, "int32", False), ("min_consumer", 2, "int32", False),
                   ("bad_consumers", 3, "int32", True)],
    "TensorShapeProto.Dim": [("size", 1, "int64", False), ("name", 2, "string", False)],
    "TensorShapeProto": [("dim", 2, "TensorShapeProto.Dim", True), ("unknown_rank", 3, "bool", False)],
    "TensorSliceProto.Extent": [("start", 1, "int64", False), ("length", 2, "int64", False, 0)],
    "TensorSliceProto": [("extent", 1, "TensorSliceProto.Extent", True)],
    "BundleHeaderProto": [("num_shards", 1, "int32", False), ("endianness", 2, "int32", False),
                          ("version", 3, "VersionDef", False)],
    "BundleEntryProto": [("dtype", 1, "int32", False), ("shape", 2, "TensorShapeProto", False),
                         ("shard_id", 3, "int32", False), ("offset", 4, "int64", False),
                         ("size", 5, "int64", False), ("crc32c", 6, "fixed32", False),
                         ("slices", 7, "TensorSliceProto", True)],
    "BoolValue": [("value", 1, "bool", False)],
    "TrackableObjectGraph.TrackableObject.ObjectReference": [
        ("node_id", 1, "int32", False), ("local_name", 2, "string", False)],
    "TrackableObjectGraph.TrackableObject.SerializedTensor": [
        ("name", 1, "string", False), ("full_name", 2, "string", False),
        ("checkpoint_key", 3, "string", False)],
    "TrackableObjectGraph.TrackableObject.SlotVariableReference": [
        ("original_variable_node_id", 1, "int32", False), ("slot_name", 2, "string", False),
        ("slot_variable_node_id", 3, "int32", False)],
    "RegisteredSaver": [("name", 1, "string", False), ("object_name", 2, "string", False)],
    "TrackableObjectGraph.TrackableObject": [
        ("children", 1, "TrackableObjectGraph.TrackableObject.ObjectReference", True),
        ("attributes", 2, "TrackableObjectGraph.TrackableObject.SerializedTensor", True),
        ("slot_variables", 3, "TrackableObjectGraph.TrackableObject.SlotVariableReference", True),
        ("registered_saver", 4, "RegisteredSaver", False),
        ("has_checkpoint_values", 5, "BoolValue", False)],
    "TrackableObjectGraph": [("nodes", 1, "TrackableObjectGraph.TrackableObject", True)],
    # Paths are declared bytes so text-format octal/hex escapes decode to UTF-8 bytes, not code points.
    "CheckpointState": [("model_checkpoint_path", 1, "bytes", False),
                        ("all_model_checkpoint_paths", 2, "bytes", True),
                        ("all_model_checkpoint_timestamps", 3, "double", True),
                        ("last_preserved_timestamp", 4, "double", False)],
}

_PACKAGE = "gpuckpt.tf"


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name="gpuckpt_tf.proto", package=_PACKAGE, syntax="proto3")
    protos: dict[str, descriptor_pb2.DescriptorProto] = {}
    for full in sorted(_MESSAGES, key=lambda n: n.count(".")):  # parents before nested types
        *outer, name = full.split(".")
        parent = protos[".".join(outer)].nested_type if outer else fdp.message_type
        protos[full] = parent.add(name=name)
    for full, fields in _MESSAGES.items():
        msg = protos[full]
        for name, number, ftype, repeated, *oneof in fields:
            field = msg.field.add(name=name, number=number, label=_REP if repeated else _OPT)
            if ftype in _TYPES:
                field.type = _TYPES[ftype]
            else:
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".{_PACKAGE}.{ftype}"
            if oneof:
                if not msg.oneof_decl:
                    msg.oneof_decl.add(name=f"has_{name}")
                field.oneof_index = oneof[0]
    return fdp


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_build_file())


def _cls(name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


VersionDef = _cls("VersionDef")
TensorShapeProto = _cls("TensorShapeProto")
TensorSliceProto = _cls("TensorSliceProto")
BundleHeaderProto = _cls("BundleHeaderProto")
BundleEntryProto = _cls("BundleEntryProto")
TrackableObjectGraph = _cls("TrackableObjectGraph")
CheckpointState = _cls("CheckpointState")
