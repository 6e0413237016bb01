"""How checkpoint keys become ``state_dict``-style names in other formats, and back.

The rule (also in docs/cli.md), chosen so that the mapping is one-to-one:

* ``P/.ATTRIBUTES/VARIABLE_VALUE`` where the object path ``P`` is not empty and holds no ``.``
  (no local name needed escaping) becomes ``P`` with ``/`` replaced by ``.``:
  ``model/layers/0/weight/.ATTRIBUTES/VARIABLE_VALUE`` -> ``model.layers.0.weight``.
* Any other key that holds a ``/`` and does not start with one keeps its key as its name
  (optimizer slots, other attributes, name-based keys such as ``dense/kernel``).
* Any other key (no ``/``, like ``global_step``, or a leading ``/``) gets a leading ``/``.

Names from the first rule hold no ``/``, names from the second hold one but do not start with
it, names from the third start with it; so every name maps back to exactly one key.
"""

from __future__ import annotations

VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def key_to_name(key: str) -> str:
    """The name a checkpoint key gets in safetensors, torch and npz files."""
    if key.endswith(VALUE_SUFFIX):
        path = key[: -len(VALUE_SUFFIX)]
        if path and "." not in path:
            return path.replace("/", ".")
    if "/" in key and not key.startswith("/"):
        return key
    return "/" + key


def name_to_key(name: str) -> str:
    """The checkpoint key a name stands for (the inverse of ``key_to_name``)."""
    if name.startswith("/"):
        return name[1:]
    if "/" in name:
        return name
    return name.replace(".", "/") + VALUE_SUFFIX


def object_path_of(name: str) -> tuple[str, ...] | None:
    """The local names of the object a first-rule name stands for; None for other names."""
    if "/" in name or not name:
        return None
    return tuple(name.split("."))
