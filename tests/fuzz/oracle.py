"""The fuzz oracle: a pristine tiny dataset, mutated copies of it, and the one property every mutation must meet.

The property, for strict and skip-mode training streams over the mutated dataset: every mutation either raises a
:class:`ShardError` naming the mutated shard (and the sample and member where the mutation is inside one), or is
skipped and counted in skip mode; a yielded sample is always one that was written (or, for mutations of values
the schema accepts, one whose every tensor is finite and whose rendered L1 loss is finite).
"""

from __future__ import annotations

import io
import math
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avp.data.manifest import MANIFEST_NAME, read_manifest, write_manifest
from avp.data.reader import ShardRef, file_sha256, iter_raw_samples
from avp.data.schema import ClipSample, ShardError
from avp.lit.data import AvatarDataModule
from avp.render import render
from avp.types import HEAD_PARAM_FIELDS, AvatarBatch
from tests.data.samples import write_dataset

TARGET = "train-000000.tar"
"""The shard every mutation touches; ``train-000001.tar`` beside it stays intact."""
TARGET_KEYS = ("subj000__seq", "subj001__seq")
INTACT_KEYS = ("subj002__seq",)
FRAMES, VIEWS, SIZE = 2, 2, 8
SHARD_REASONS = ("checksum", "tar", "duplicate", "manifest")
"""Reasons of the reader's errors about a whole shard (raised before any of its samples; ``manifest`` only for the
sample count, an error without a sample key: a sample that disagrees with the manifest is refused alone)."""


def shard_level(e: ShardError) -> bool:
    """Whether ``e`` refuses the whole shard (the reader's checks) rather than one sample (the schema's)."""
    return e.reason in ("checksum", "tar", "duplicate") or (e.reason == "manifest" and e.key is None)


@dataclass
class Pristine:
    """The dataset every example starts from: its files' bytes and the samples written."""

    files: dict[str, bytes]
    samples: dict[str, ClipSample]


def build_pristine() -> Pristine:
    """Three train subjects in two shards (two in :data:`TARGET`), one test subject (for leakage)."""
    root = Path(tempfile.mkdtemp(prefix="avp-fuzz-"))
    try:
        _, samples = write_dataset(root, {"train": 3, "test": 1}, per_shard=2, frames=FRAMES, views=VIEWS,
                                   size=SIZE)
        files = {p.name: p.read_bytes() for p in root.iterdir()}
    finally:
        shutil.rmtree(root)
    return Pristine(files=files, samples=samples)


def materialise(pristine: Pristine, target: bytes | None = None, *, manifest: bool = True) -> Path:
    """A fresh copy of the dataset (removed by the caller) with :data:`TARGET` replaced by ``target``."""
    root = Path(tempfile.mkdtemp(prefix="avp-fuzz-"))
    for name, data in pristine.files.items():
        if name == MANIFEST_NAME and not manifest:
            continue
        (root / name).write_bytes(target if (name == TARGET and target is not None) else data)
    return root


def _loss(batch: AvatarBatch) -> torch.Tensor:
    """L1 between the teacher rendered into the batch's views and the first frame (what a decoder fit computes)."""
    V = batch.cameras.Ks.shape[1]
    out = render(batch.teacher, batch.cameras, background=batch.background[:, None].expand(-1, V, -1),
                 backend="torch")
    return (out.rgb - batch.images[:, 0]).abs().mean()


def check_batch(batch: AvatarBatch, samples: dict[str, ClipSample], *, values_may_differ: bool = False) -> None:
    """``batch`` holds written samples, bit for bit; with ``values_may_differ`` (a mutation the schema may accept)
    only finite tensors, a background in 0..1 and a finite loss are required."""
    for name in ("portrait", "images", "background"):
        assert torch.isfinite(getattr(batch, name)).all(), name
    for t in (batch.teacher.means, batch.teacher.scales, batch.teacher.opacities, batch.teacher.quats,
              batch.teacher.sh, batch.cameras.Ks, batch.cameras.viewmats, *batch.head.as_dict().values()):
        assert torch.isfinite(t).all()
    assert ((batch.background >= 0) & (batch.background <= 1)).all()
    loss = _loss(batch)
    assert math.isfinite(float(loss)), f"NaN loss on {batch.keys}"
    if values_may_differ:
        return
    to_u8 = lambda x: (x * 255).round().to(torch.uint8)
    for i, key in enumerate(batch.keys):
        assert key in samples, f"a sample that was never written: {key!r}"
        s, g = samples[key], samples[key].gaussians
        n = g.n_points
        fi, vi = batch.frame_index[i].numpy(), batch.view_index[i].numpy()
        assert batch.subject[i] == s.meta["subject"] and int(batch.n_points[i]) == n
        assert torch.equal(batch.teacher.means[i, :n], torch.from_numpy(g.means))
        assert torch.equal(batch.binding[i, :n], torch.from_numpy(g.binding).long())
        assert torch.equal(batch.teacher.sh[i, :n], torch.from_numpy(g.sh))
        assert torch.equal(to_u8(batch.images[i]).permute(0, 1, 3, 4, 2), torch.from_numpy(s.frames[fi][:, vi]))
        assert torch.equal(to_u8(batch.portrait[i]).permute(1, 2, 0), torch.from_numpy(s.portrait))
        assert torch.equal(batch.cameras.Ks[i], torch.from_numpy(s.cameras.Ks[vi]))
        assert torch.equal(batch.cameras.viewmats[i], torch.from_numpy(s.cameras.viewmats[vi]))
        assert torch.equal(batch.background[i], torch.tensor(s.meta["background"], dtype=torch.float32))
        for field in HEAD_PARAM_FIELDS:
            want = s.head[field] if field == "shape" else s.head[field][fi]
            assert torch.equal(batch.head.as_dict()[field][i], torch.from_numpy(want))


@dataclass
class Outcome:
    """What the streams did with a mutated dataset."""

    error: ShardError | None
    """The strict stream's error (None: it read the whole epoch)."""
    skipped: int
    """Samples the skip-mode stream skipped in its epoch."""
    reasons: dict[str, int]
    keys: list[str]
    """What the skip-mode stream yielded."""


def run_streams(root: Path, pristine: Pristine, *, pattern: bool = False,
                values_may_differ: bool = False) -> Outcome:
    """Strict, then skip-mode, training epochs over ``root`` (every frame and view decoded), each batch checked as
    it arrives; then the property that ties the two together."""
    source = str(root / "train-*.tar") if pattern else str(root)
    kwargs = dict(batch_size=1, num_workers=0, frames_per_sample=FRAMES, views_per_sample=VIEWS, shuffle_buffer=0)
    error = None
    try:
        for batch in AvatarDataModule(source, **kwargs).train_dataloader():
            check_batch(batch, pristine.samples, values_may_differ=values_may_differ)
    except ShardError as e:
        error = e
    keys: list[str] = []
    last = None
    for batch in AvatarDataModule(source, skip_corrupt=True, max_corrupt_fraction=1.0,
                                  **kwargs).train_dataloader():
        check_batch(batch, pristine.samples, values_may_differ=values_may_differ)
        keys += batch.keys
        last = batch
    assert last is not None and set(INTACT_KEYS) <= set(keys)  # the intact shard is always read in full
    outcome = Outcome(error=error, skipped=last.corrupt.total, reasons=dict(last.corrupt.reasons_total), keys=keys)
    if error is not None:
        assert error.shard == TARGET and TARGET in str(error), str(error)
        assert outcome.skipped >= 1 and error.reason in outcome.reasons, (str(error), outcome.reasons)
        if shard_level(error):  # a bad shard is skipped whole: none of its samples reaches training
            assert not set(TARGET_KEYS) & set(keys), keys
    else:
        assert outcome.skipped == 0, outcome.reasons
    return outcome


def member_data_ranges(shard: bytes, suffix: str = "") -> list[tuple[int, int]]:
    """Byte ranges of the data of the members whose names end with ``suffix`` in a shard."""
    with tarfile.open(fileobj=io.BytesIO(shard)) as tar:
        return [(m.offset_data, m.offset_data + m.size) for m in tar.getmembers() if m.name.endswith(suffix)]


def meta_data_ranges(shard: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the ``meta.json`` members' data in a shard (JSON text has no integrity check of its own)."""
    return member_data_ranges(shard, ".meta.json")


def outside(ranges: list[tuple[int, int]], size: int) -> np.ndarray:
    """Every byte offset of ``[0, size)`` outside ``ranges``."""
    keep = np.ones(size, dtype=bool)
    for a, b in ranges:
        keep[a:b] = False
    return np.flatnonzero(keep)


# ------------------------------------------------------------------------------ writing mutated samples

def write_raws(root: Path, raws: list[dict[str, bytes]]) -> None:
    """Write :data:`TARGET` from raw samples as they are (no schema: a writer with a bug); the manifest is updated
    (checksum, sample count) as a writer would."""
    path = root / TARGET
    with tarfile.open(path, "w") as tar:
        for raw in raws:
            key = raw["__key__"].decode()
            for name in sorted(k for k in raw if not k.startswith("__")):
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size = len(raw[name])
                tar.addfile(info, io.BytesIO(raw[name]))
    m = read_manifest(root)
    for s in m.shards:
        if s.path == TARGET:
            s.sha256, s.bytes, s.samples = file_sha256(path), path.stat().st_size, len(raws)
    write_manifest(root, m)


def target_raws(root: Path) -> list[dict[str, bytes]]:
    return list(iter_raw_samples(ShardRef(path=str(root / TARGET), name=TARGET), verify=False))


def edit_first(edit: Callable[[dict[str, bytes]], None]) -> Callable[[Path], None]:
    """Rewrite :data:`TARGET` with ``edit`` applied to its first sample, as raw bytes (the manifest re-hashed)."""

    def apply(root: Path) -> None:
        raws = target_raws(root)
        edit(raws[0])
        write_raws(root, raws)

    return apply
