"""``gpuckpt verify`` catches what reading catches: single-bit flips across a checkpoint's files.

The bit-flip sweep of ``tests/format/test_bitflips.py`` (every bit of the index, three bits of
every data byte), with ``gpuckpt verify`` run on each flipped checkpoint. Verify must exit
non-zero exactly when reading every tensor raises ``DataLossError``, naming the corrupt tensor
or file; where it passes, the flip must be one that changes nothing a reader decodes (the
footer's padding). The detected fraction is printed (``pytest -s``) and held to the floors below.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

import gpuckpt
from gpuckpt import cli
from gpuckpt.saver import write_tensors
from tests.format.test_bitflips import _meaningless, _read_everything, _values

INDEX_BITS = range(8)
DATA_BITS = (0, 3, 7)
# Measured: all 1905 data flips, and 2503 of the 2776 index flips (90.2%). The 273 misses are
# in the footer's zero padding (34 bytes) and one varint continuation bit: no meaning, so
# 100% of the flips that change anything are detected.
MIN_DETECTED = {".index": 0.90, ".data-00000-of-00001": 1.0}


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    prefix = tmp_path_factory.mktemp("verify-flips") / "ck"
    write_tensors(prefix, _values())
    return prefix, {s: (prefix.parent / (prefix.name + s)).read_bytes() for s in MIN_DETECTED}


def verify(prefix: Path) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli.main(["verify", str(prefix)])
    return code, out.getvalue()


def reading_fails(prefix: Path) -> bool:
    try:
        _read_everything(prefix)
    except gpuckpt.DataLossError:
        return True
    return False


@pytest.mark.parametrize("suffix", list(MIN_DETECTED))
def test_verify_detects_every_meaningful_bit_flip(original, suffix: str) -> None:
    prefix, files = original
    path = prefix.parent / (prefix.name + suffix)
    pristine = files[suffix]
    keys = list(_values())
    detected, missed = 0, []
    for pos in range(len(pristine)):
        for bit in INDEX_BITS if suffix == ".index" else DATA_BITS:
            raw = bytearray(pristine)
            raw[pos] ^= 1 << bit
            path.write_bytes(bytes(raw))
            code, text = verify(prefix)
            where = f"{suffix}[{pos}] bit {bit}"
            assert (code != 0) == reading_fails(prefix), f"verify and reading disagree on the flip at {where}"
            if code == 0:
                missed.append(pos)
                continue
            detected += 1
            assert path.name in text or any(key in text for key in keys), f"{where}: {text!r} names nothing"
    path.write_bytes(pristine)
    total = detected + len(missed)
    print(f"\ngpuckpt verify detected {detected} of {total} single-bit flips in {suffix} ({detected / total:.1%}); "
          f"{len(missed)} passed, each leaving every decoded value unchanged")
    assert all(_meaningless(pristine, pos) for pos in missed), sorted(set(missed))
    assert detected / total >= MIN_DETECTED[suffix]
