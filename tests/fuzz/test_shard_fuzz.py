"""Fuzzing shards: mutations of shard bytes, of members and of metadata values (Hypothesis, derandomized).

Every mutation either raises a ``ShardError`` naming the shard (and the sample, member and field where it is
inside one), or, in skip mode, is skipped and counted; a training stream never yields a sample that was not written,
and never one whose rendered loss is NaN (:mod:`tests.fuzz.oracle`).

Where integrity comes from: the manifest's SHA-256 covers every byte of a shard; without a manifest (a shard
pattern) the tar headers' checksums, the zip CRCs of the npz members and the zlib checksums of the PNG members do.
``meta.json`` text has no checksum of its own, so byte mutations without a manifest avoid it (a digit flipped in the
background colour is a valid, different sample); its values are fuzzed field by field instead.
"""

from __future__ import annotations

import functools
import io
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from avp.data.schema import META, META_FIELDS
from tests.data.samples import meta_edit, npz_edit
from tests.fuzz.oracle import (
    TARGET,
    TARGET_KEYS,
    Outcome,
    Pristine,
    build_pristine,
    edit_first,
    materialise,
    member_data_ranges,
    meta_data_ranges,
    outside,
    run_streams,
    shard_level,
    target_raws,
    write_raws,
)

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=list(HealthCheck))
KEY = TARGET_KEYS[0]


@functools.cache
def pristine() -> Pristine:
    return build_pristine()


def _run(target: bytes | None = None, *, manifest: bool = True, edit: Callable[[Path], None] | None = None,
         values_may_differ: bool = False, note: bool = True) -> Outcome:
    root = materialise(pristine(), target, manifest=manifest)
    try:
        if edit is not None:
            edit(root)
        outcome = run_streams(root, pristine(), pattern=not manifest, values_may_differ=values_may_differ)
    finally:
        shutil.rmtree(root)
    if note:  # `pytest --hypothesis-show-statistics` shows how the examples ended
        event(f"refused ({outcome.error.reason})" if outcome.error is not None else "accepted")
    return outcome


# ------------------------------------------------------------------------------------------------ shard bytes

def _apply(data: bytes, ops: list[tuple], allowed: np.ndarray | None = None) -> bytes:
    """Apply byte operations in order; ``allowed`` (a bool mask over the original bytes) limits the in-place ones."""
    out = bytearray(data)
    for op in ops:
        kind = op[0]
        if kind in ("flip", "overwrite", "zero"):
            pos = op[1] % max(len(out), 1)
            new = bytes([out[pos] ^ op[2]]) if kind == "flip" else op[2] if kind == "overwrite" else bytes(op[2])
            for i, b in enumerate(new[: len(out) - pos]):
                if allowed is None or (pos + i < len(allowed) and allowed[pos + i]):
                    out[pos + i] = b
        elif kind == "truncate":
            del out[op[1] % max(len(out), 1):]
        elif kind == "append":
            out += op[1]
        elif kind == "insert":
            out[op[1] % max(len(out), 1):op[1] % max(len(out), 1)] = op[2]
        elif kind == "delete":
            pos = op[1] % max(len(out), 1)
            del out[pos:pos + op[2]]
    return bytes(out)


def _pick(positions: np.ndarray) -> st.SearchStrategy:
    return st.integers(0, len(positions) - 1).map(lambda i: int(positions[i]))


def _byte_ops(size: int, positions: np.ndarray | None, *, shifting: bool,
              focus: np.ndarray | None = None) -> st.SearchStrategy:
    """1-3 byte operations at ``positions`` (all by default), half of them inside ``focus`` when given."""
    pos = st.integers(0, size - 1) if positions is None else _pick(positions)
    if focus is not None:
        pos = st.one_of(pos, _pick(focus))
    ops = [st.tuples(st.just("flip"), pos, st.integers(1, 255)),
           st.tuples(st.just("overwrite"), pos, st.binary(min_size=1, max_size=32)),
           st.tuples(st.just("zero"), pos, st.integers(1, 1536)),
           st.tuples(st.just("truncate"), st.integers(0, size - 1)),
           st.tuples(st.just("append"), st.binary(min_size=1, max_size=1100))]
    if shifting:
        ops += [st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=600)),
                st.tuples(st.just("delete"), pos, st.integers(1, 600))]
    return st.lists(st.one_of(ops), min_size=1, max_size=3)


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_any_change_to_a_listed_shard_refuses_the_whole_shard(data) -> None:
    original = pristine().files[TARGET]
    mutated = _apply(original, data.draw(_byte_ops(len(original), None, shifting=True)))
    outcome = _run(mutated)
    if mutated == original:
        assert outcome.error is None
    else:
        assert outcome.error is not None and shard_level(outcome.error), outcome


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_unlisted_shards_are_refused_or_read_exactly(data) -> None:
    """No manifest: the formats' own checksums must catch what the SHA-256 would have."""
    original = pristine().files[TARGET]
    allowed = outside(meta_data_ranges(original), len(original))
    mask = np.zeros(len(original), dtype=bool)
    mask[allowed] = True
    # most of a tiny shard is headers and padding: aim half the edits at the members' data
    members = np.intersect1d(allowed, np.setdiff1d(np.arange(len(original)),
                                                   outside(member_data_ranges(original), len(original))))
    mutated = _apply(original, data.draw(_byte_ops(len(original), allowed, shifting=False, focus=members)), mask)
    outcome = _run(mutated, manifest=False)
    if mutated == original:
        assert outcome.error is None


# ------------------------------------------------------------------------------------------------ members

def _member_names() -> list[str]:
    from avp.data.schema import encode_sample

    return sorted(k for k in encode_sample(pristine().samples[KEY]) if not k.startswith("__") and k != META)


@st.composite
def _member_mutation(draw) -> tuple[str, str, Callable[[bytes], bytes | None]]:
    member = draw(st.sampled_from(_member_names()))
    kind = draw(st.sampled_from(["drop", "empty", "truncate", "flip", "garbage"]))
    if kind == "drop":
        fn: Callable[[bytes], bytes | None] = lambda b: None
    elif kind == "empty":
        fn = lambda b: b""
    elif kind == "truncate":
        cut = draw(st.integers(1, 10_000))
        fn = lambda b: b[: max(len(b) - cut, 0)]
    elif kind == "flip":
        pos, mask = draw(st.integers(0, 10_000)), draw(st.integers(1, 255))
        fn = lambda b: b[: pos % len(b)] + bytes([b[pos % len(b)] ^ mask]) + b[pos % len(b) + 1:]
    else:
        junk = draw(st.binary(min_size=1, max_size=200))
        fn = lambda b: junk
    return member, kind, fn


@settings(FUZZ, max_examples=60)
@given(mutation=_member_mutation())
def test_a_bad_member_is_named(mutation) -> None:
    """Member bytes written wrong (the manifest's checksum matches: a writer bug, not tampering)."""
    member, kind, fn = mutation

    def edit(raw: dict[str, bytes]) -> None:
        new = fn(raw[member])
        if new is None:
            del raw[member]
        else:
            raw[member] = new

    outcome = _run(edit=edit_first(edit))
    if kind != "flip":  # a flipped byte may land where the format does not look (a zip date, PNG chunk padding)
        assert outcome.error is not None
    if outcome.error is not None:
        e = outcome.error
        assert (e.key, e.member) == (KEY, member), str(e)
        assert KEY not in outcome.keys and TARGET_KEYS[1] in outcome.keys  # the sample goes, its neighbour stays


def _key_twice(root: Path) -> None:
    raws = target_raws(root)
    write_raws(root, [raws[0], raws[1], {**raws[0]}])  # the first sample again, after another one


def _member_twice(root: Path) -> None:
    raws = target_raws(root)
    write_raws(root, [raws[0], {"__key__": raws[0]["__key__"], "head.npz": raws[0]["head.npz"]}, raws[1]])


def _stray_member(root: Path) -> None:
    raws = target_raws(root)
    cameras = raws[0].pop("cameras.npz")
    write_raws(root, [raws[0], {"__key__": b"stray", "cameras.npz": cameras}, raws[1]])


STRUCTURE = {
    "a key twice": (_key_twice, "duplicate"),
    "a member twice": (_member_twice, "duplicate"),
    "a member under a key of its own": (_stray_member, "missing"),
    "an unknown extra member": (edit_first(lambda raw: raw.__setitem__("notes.txt", b"hello")), None),
}


@pytest.mark.parametrize("case", list(STRUCTURE))
def test_shard_structure(case) -> None:
    edit, reason = STRUCTURE[case]
    outcome = _run(edit=edit, note=False)
    assert (outcome.error.reason if outcome.error is not None else None) == reason, outcome


# ------------------------------------------------------------------------------------------------ values

_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                  max_size=3), max_leaves=6)
_NEAR = {
    "background": st.lists(st.floats(-0.5, 1.5) | st.sampled_from([math.nan, math.inf, 1, 0, True]), min_size=0,
                           max_size=4),
    "width": st.integers(-2, 20), "height": st.integers(-2, 20), "views": st.integers(-1, 4),
    "frames": st.integers(-1, 4) | st.just(10**30), "n_points": st.integers(-1, 100),
    "sh_degree": st.integers(-1, 5),
    "n_faces": st.integers(-1, 60), "n_shape": st.integers(-1, 6), "n_expr": st.integers(-1, 6),
    # not "subj001": the other subject of the same shard is listed for it (only a key <-> subject rule could tell)
    "schema": st.integers(0, 3), "subject": st.sampled_from(["subj002", "subj003", "x", ""]),
    "split": st.sampled_from(["val", "test", "train", ""]), "frame_format": st.sampled_from(["jpg", "png", "gif"]),
    "masks": st.booleans(), "portrait_width": st.integers(-1, 20), "portrait_height": st.integers(-1, 20),
}
_DELETE = object()
_HARMLESS = ("sequence", "source", "extra", "masks", "background")
"""Fields whose other valid values change no tensor the model trains on except the background (checked in 0..1)."""


@settings(FUZZ, max_examples=100)
@given(field=st.sampled_from(sorted(META_FIELDS)), data=st.data())
def test_metadata_values_are_refused_or_harmless(field, data) -> None:
    choices = [_JSON, st.just(_DELETE)] + ([_NEAR[field]] * 3 if field in _NEAR else [])
    value = data.draw(st.one_of(choices))

    def edit(raw: dict[str, bytes]) -> None:
        meta = json.loads(raw[META])
        if value is _DELETE:
            del meta[field]
        else:
            meta[field] = value
        raw[META] = json.dumps(meta).encode()

    outcome = _run(edit=edit_first(edit), values_may_differ=True)
    if outcome.error is not None:
        assert outcome.error.key == KEY and outcome.error.member is not None, str(outcome.error)
        assert KEY not in outcome.keys
    elif field not in _HARMLESS:  # accepted: then it is what was written
        original = pristine().samples[KEY].meta[field]
        assert type(value) is type(original) and value == original, (field, value)
    valid_background = isinstance(value, list) and len(value) == 3 and all(
        isinstance(c, (int, float)) and not isinstance(c, bool) and 0 <= c <= 1 for c in value)
    if value is _DELETE or (field == "background" and not valid_background):
        assert outcome.error is not None and outcome.error.field == field, (value, outcome)


_ARRAY_OPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "nan": lambda a: np.where(np.arange(a.size).reshape(a.shape) == a.size // 2, np.nan, a).astype(a.dtype),
    "inf": lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, -np.inf, a).astype(a.dtype),
    "float64": lambda a: a.astype(np.float64),
    "float16": lambda a: a.astype(np.float16),
    "drop_row": lambda a: a[:-1] if a.ndim else a[None],
    "add_axis": lambda a: a[None],
    "zeros": np.zeros_like,
    "scale_1e3": lambda a: (a * 1000).astype(a.dtype),
    "scale_1e9": lambda a: (a * 1e9).astype(a.dtype) if a.dtype.kind == "f" else a * 1000,
    "negate": lambda a: -a,
}
_MUST_FAIL = ("nan", "inf", "float64", "float16", "drop_row", "add_axis")


def _arrays() -> list[tuple[str, str]]:
    from avp.data.schema import encode_sample

    raw = encode_sample(pristine().samples[KEY])
    out = []
    for member in sorted(m for m in raw if m.endswith(".npz")):
        with np.load(io.BytesIO(raw[member])) as z:
            out += [(member, name) for name in z.files]
    return out


def _npz(member: str, name: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict[str, bytes]], None]:
    def edit(raw: dict[str, bytes]) -> None:
        with np.errstate(all="ignore"):
            npz_edit(member, name, fn)(raw)

    return edit


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_array_values_are_refused_or_harmless(data) -> None:
    member, name = data.draw(st.sampled_from(_arrays()))
    op = data.draw(st.sampled_from(sorted(_ARRAY_OPS)))
    fn = _ARRAY_OPS[op]
    with np.errstate(all="ignore"):
        outcome = _run(edit=edit_first(_npz(member, name, fn)), values_may_differ=True)
    is_float = name not in ("binding", "width", "height")
    if op in _MUST_FAIL and (is_float or op in ("float16", "drop_row", "add_axis")):
        assert outcome.error is not None, (member, name, op)
    if outcome.error is not None:
        assert (outcome.error.key, outcome.error.member) == (KEY, member), str(outcome.error)


def test_the_meta_edit_helper_writes_nan_as_a_buggy_writer_would() -> None:
    raw = {META: b'{"background": [1, 1, 1]}'}
    meta_edit(background=[math.nan, 1, 1])(raw)
    assert b"NaN" in raw[META]
