"""The index template (format/index_template.py): an index file differing from one of the last few parsed
only in CRCs is rebuilt from it, and gives exactly what a full parse gives, whatever the bytes; indexes of
other structures but the same length keep templates of their own."""

from __future__ import annotations

import random

import numpy as np
import pytest

import gpuckpt
from gpuckpt.errors import DataLossError
from gpuckpt.format import bundle, dtypes, index_template, sstable
from gpuckpt.format.bundle import BundleEntry, build_index, parse_index
from tests.conftest import FIXTURES, fixture_dirs, load_manifest

FLOAT = dtypes.BY_NAME["float32"]


@pytest.fixture(autouse=True)
def _fresh_templates():
    index_template.clear()
    yield
    index_template.clear()


@pytest.fixture
def decodes(monkeypatch) -> list[int]:
    """Counts the entries decoded one by one (a reused template decodes none)."""
    count: list[int] = []
    real = bundle.decode_entry

    def counting(*args, **kwargs):
        count.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(bundle, "decode_entry", counting)
    return count


def _index(crcs: list[int], shapes: list[tuple[int, ...]] | None = None) -> bytes:
    shapes = shapes or [(3, 5)] * len(crcs)
    entries, offset = {}, 0
    for i, (value, shape) in enumerate(zip(crcs, shapes)):
        size = int(np.prod(shape)) * 4
        entries[f"v/{i:03d}"] = BundleEntry(FLOAT, shape, 0, offset, size, value)
        offset += size
    return build_index(1, entries)


def _full_parse(raw: bytes):
    index_template.clear()
    try:
        return parse_index(raw)
    finally:
        index_template.clear()


def _same(a, b) -> bool:
    return a.num_shards == b.num_shards and a.entries == b.entries and a.slice_entries == b.slice_entries


def test_new_crcs_reuse_the_template(decodes) -> None:
    first = _index([0x1000 + i for i in range(40)])
    second = _index([0x9000000 + 7 * i for i in range(40)])
    assert len(first) == len(second)
    parse_index(first)
    decoded = len(decodes)
    reused = parse_index(second)
    assert len(decodes) == decoded  # nothing decoded one by one
    assert _same(reused, _full_parse(second))
    assert [e.crc32c for e in reused.entries.values()] == [0x9000000 + 7 * i for i in range(40)]


def test_another_structure_is_parsed_afresh(decodes) -> None:
    parse_index(_index([1] * 10))
    other = _index([2] * 10, shapes=[(5, 3)] * 10)  # same length, other shapes
    decoded = len(decodes)
    got = parse_index(other)
    assert len(decodes) > decoded
    assert all(e.shape == (5, 3) for e in got.entries.values())


def test_a_damaged_block_is_an_error_on_reuse_too() -> None:
    first, second = _index([5] * 30), bytearray(_index([6] * 30))
    parse_index(first)
    layout = sstable.TableLayout()
    table = [(k, v) for k, v in sstable.read_table(bytes(second), None, layout)]
    value_end = layout.values[3] + len(table[3][1])
    second[value_end - 1] ^= 0xFF  # an entry's CRC byte: the block trailer no longer matches
    with pytest.raises(DataLossError, match="block checksum mismatch"):
        parse_index(bytes(second))


def test_a_crc_lookalike_inside_another_field_is_never_replaced() -> None:
    """A value ending in what looks like the CRC field, but inside the shape (an unknown field 6 of
    TensorShapeProto): its last bytes are not the entry's CRC, and reusing must not say they are."""

    def table(tail: bytes) -> bytes:
        value = b"\x08\x01\x28\x04\x12\x05\x35" + tail  # dtype float, size 4, shape {unknown fixed32 field 6}
        return sstable.build_table([(b"", bundle.encode_header(1)), (b"x", value)])

    parse_index(table(b"\x00\x00\x00\x00"))
    changed = table(b"\x01\x00\x00\x00")
    assert parse_index(changed).entries["x"].crc32c == 0 == _full_parse(changed).entries["x"].crc32c


def test_every_byte_flip_gives_what_a_full_parse_gives() -> None:
    first = _index([0x2000 + i for i in range(25)])
    second = _index([0x7100 + 3 * i for i in range(25)])
    rng = random.Random(0)
    for position in sorted(rng.sample(range(len(second)), 120)):
        mutated = bytearray(second)
        mutated[position] ^= 1 << rng.randrange(8)
        expected = _outcome(_full_parse, bytes(mutated))
        parse_index(first)  # the template of the unmutated structure
        assert _outcome(parse_index, bytes(mutated)) == expected, position


def _outcome(parse, raw: bytes):
    try:
        index = parse(raw)
    except DataLossError as exc:
        return type(exc).__name__
    return index.num_shards, tuple(index.entries.items()), tuple(index.slice_entries.items())


@pytest.mark.parametrize("fixture", fixture_dirs())
def test_tensorflow_written_indexes_reuse_exactly(fixture: str) -> None:
    for prefix in load_manifest(fixture)["checkpoints"]:
        raw = (FIXTURES / fixture / (prefix + ".index")).read_bytes()
        full = _full_parse(raw)
        parse_index(raw)
        assert _same(parse_index(raw), full)  # the second parse is the template's


def test_two_structures_of_one_length_restored_in_turn_keep_their_templates(decodes) -> None:
    """As two checkpoints whose keys differ only in letters (``model/...``, ``state/...``) read in turn."""
    first, second = [(3, 5)] * 10, [(5, 3)] * 10
    files = [(_index([value] * 10, shapes), shapes) for value in range(1, 6) for shapes in (first, second)]
    assert len({len(raw) for raw, _ in files}) == 1
    expected = [_full_parse(raw) for raw, _ in files]
    parse_index(files[0][0])
    parse_index(files[1][0])
    decoded = len(decodes)
    for (raw, _), want in zip(files, expected):  # the two structures in turn, new CRCs each time
        assert _same(parse_index(raw), want)
    assert len(decodes) == decoded  # every one rebuilt from its own structure's template
    assert len(index_template._templates) == 2


def test_a_structure_remembered_again_replaces_its_template() -> None:
    raw = _index([1] * 10)
    index = _full_parse(raw)
    for _ in range(2):
        layout = sstable.TableLayout()
        table = sstable.read_table(sstable.BytesSource(raw), None, layout)
        index_template.remember(raw, layout, table, index)
    assert len(index_template._templates) == 1


def test_templates_are_bounded() -> None:
    for count in range(1, index_template.SLOTS + 4):
        parse_index(_index([1] * count))
    assert len(index_template._templates) == index_template.SLOTS


def test_large_indexes_keep_no_template(monkeypatch) -> None:
    monkeypatch.setattr(index_template, "MAX_BYTES", 100)
    raw = _index([1] * 20)
    assert len(raw) > 100
    parse_index(raw)
    assert not index_template._templates


def test_checkpoint_reads_after_saves_of_new_values(tmp_path, decodes) -> None:
    """The public path: each restore of a newly saved checkpoint gets that checkpoint's values."""
    holder = gpuckpt.Module()
    for i in range(30):
        setattr(holder, f"v{i}", gpuckpt.Variable(np.full(7, float(i), np.float32)))
    target = gpuckpt.Module()
    for i in range(30):
        setattr(target, f"v{i}", gpuckpt.Variable(np.zeros(7, np.float32)))
    saving, loading = gpuckpt.Checkpoint(model=holder), gpuckpt.Checkpoint(model=target)
    for round_ in range(3):
        for i in range(30):
            getattr(holder, f"v{i}").assign(np.full(7, float(i + 100 * round_), np.float32))
        path = saving.write(str(tmp_path / f"ck{round_}"))
        before = len(decodes)
        loading.read(path).assert_consumed()
        if round_:
            assert len(decodes) == before
        assert all(getattr(target, f"v{i}").numpy()[0] == i + 100 * round_ for i in range(30))


def _kept_lengths() -> list[int]:
    return sorted(t.masked.size for t in index_template._templates.values())


def test_the_least_recently_used_template_goes_first(decodes) -> None:
    first = _index([1] * 3)
    parse_index(first)
    for count in range(4, 3 + index_template.SLOTS):
        parse_index(_index([1] * count))
    parse_index(_index([2] * 3))  # reuses, and so refreshes, the first template
    parse_index(_index([1] * 50))  # one template more than the slots: the oldest unused one goes
    assert len(first) in _kept_lengths() and len(_index([1] * 4)) not in _kept_lengths()
    decoded = len(decodes)
    parse_index(_index([3] * 3))
    assert len(decodes) == decoded
