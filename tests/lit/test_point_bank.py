"""The generated-points bank (``DecoderModule(points="generated_bank")``, :mod:`avp.point_bank`): built once and
reused, invalidated by another generator or sampling setting, deterministic, stored clouds equal to what sampling
produced, features equal to the teacher-forced features of the stored tokens, a training step on bank clouds, and a
corrupt file sampled again with a warning naming it.

The generator checkpoint is a tiny random GeneratorModule saved like ``avp fit`` saves it (as in test_decoder.py);
two synthetic subjects make one batch.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from avp.data.synthetic.generate import SynthConfig, synthesize
from avp.lit.data import AvatarDataModule
from avp.lit.decoder import DecoderModule
from avp.lit.generator import GeneratorModule
from avp.point_bank import BankEntry, PointBank, bank_key, state_digest, subject_filename, subject_seed
from avp.types import AvatarBatch
from tests.lit.test_decoder import TINY_DECODER, _save

MAX_POINTS = 8


def _generator(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    gen = GeneratorModule(
        condition={"image": {"arch": "tiny", "image_size": 64, "freeze": False},
                   "mesh": {"n_points": 32, "n_layers": 1, "n_heads": 4}},
        model={"n_layers": 2, "width": 64, "n_heads": 4}, train_window=256)
    return _save(gen, path)


@pytest.fixture(scope="module")
def generator_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generator(tmp_path_factory.mktemp("gen") / "generator.ckpt", 0)


@pytest.fixture(scope="module")
def other_generator_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generator(tmp_path_factory.mktemp("gen-other") / "generator.ckpt", 1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    synthesize(SynthConfig(subjects=2, views=2, frames=1, size=32, portrait_size=64, points=(200, 300),
                           val_fraction=0.0, test_fraction=0.0), out, workers=1, progress=False)
    return out


def _datamodule(root: Path) -> AvatarDataModule:
    return AvatarDataModule(str(root), batch_size=2, num_workers=0, frames_per_sample=1, views_per_sample=1,
                            val_split="train")


@pytest.fixture(scope="module")
def batch(shards: Path) -> AvatarBatch:
    dm = _datamodule(shards)
    dm.setup("fit")
    out = next(iter(dm.train_dataloader()))
    assert len(set(out.subject)) == 2, out.subject
    return out


def _module(ckpt: Path, bank_dir: Path | None, **kw) -> DecoderModule:
    sampling = {"max_points": MAX_POINTS, "temperature": 1.0, **kw.pop("sampling", {})}
    return DecoderModule(str(ckpt), decoder=TINY_DECODER, loss={"lpips": 0.0},
                         feature_window=kw.pop("feature_window", 256), points=kw.pop("points", "generated_bank"),
                         sampling=sampling,
                         bank_dir=None if bank_dir is None else str(bank_dir), **kw)


def _count_sampling(module: DecoderModule, monkeypatch: pytest.MonkeyPatch) -> list:
    """Replace the frozen generator's ``sample`` by a recording wrapper; returns the list of (args, output)."""
    calls: list = []
    original = module.model.generator.sample

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    monkeypatch.setattr(module.model.generator, "sample", recording)
    return calls


def _files(module: DecoderModule) -> list[Path]:
    return sorted(module.point_bank.directory.glob("*.pt"))


def _assert_same_entry(a: BankEntry, b: BankEntry) -> None:
    for name in ("tokens", "lengths", "points", "binding", "n_points", "finished"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def _one(batch: AvatarBatch, i: int) -> AvatarBatch:
    """Sample ``i`` of a batch as a batch of one (the fields the point sources read)."""
    one = slice(i, i + 1)
    return dataclasses.replace(batch, subject=[batch.subject[i]], portrait=batch.portrait[one],
                               portrait_head=batch.portrait_head.map(lambda t: t[one]),
                               head=batch.head.map(lambda t: t[one]), teacher=batch.teacher[i],
                               binding=batch.binding[one])


def test_bank_is_built_once_and_reused(generator_ckpt: Path, batch: AvatarBatch, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    first = _module(generator_ckpt, tmp_path)
    calls = _count_sampling(first, monkeypatch)
    a = first.prepare_bank(batch)
    assert len(calls) == 2, "one batched sampling call per new subject"
    files = _files(first)
    assert [f.name for f in files] == sorted(subject_filename(s) for s in batch.subject)
    assert (first.point_bank.directory / "bank.json").is_file()
    assert first.point_bank.directory.parent == tmp_path
    first.prepare_bank(batch)
    assert len(calls) == 2, "a subject already in the bank is never sampled again"

    # a new module (a re-run) with the same generator and sampling reads the files and samples nothing
    second = _module(generator_ckpt, tmp_path)
    again = _count_sampling(second, monkeypatch)
    b = second.prepare_bank(batch)
    assert not again and second.point_bank.loaded == 2 and second.point_bank.key == first.point_bank.key
    for name in ("points", "binding", "mask", "n_points", "finished", "features"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_another_generator_or_sampling_invalidates_the_bank(generator_ckpt: Path, other_generator_ckpt: Path,
                                                            tmp_path: Path) -> None:
    key = _module(generator_ckpt, tmp_path).point_bank.key
    assert _module(generator_ckpt, tmp_path).point_bank.key == key, "same generator and sampling: same bank"
    variants = {
        "another generator checkpoint": _module(other_generator_ckpt, tmp_path),
        "another temperature": _module(generator_ckpt, tmp_path, sampling={"temperature": 0.8}),
        "another max_points": _module(generator_ckpt, tmp_path, sampling={"max_points": MAX_POINTS + 1}),
        "another bank seed": _module(generator_ckpt, tmp_path, bank_seed=1),
        "more samples per subject": _module(generator_ckpt, tmp_path, bank_samples=2),
        "another feature window (the sampling window)": _module(generator_ckpt, tmp_path, feature_window=128),
    }
    keys = {name: m.point_bank.key for name, m in variants.items()}
    for name, other in keys.items():
        assert other != key, f"{name} must not reuse the bank"
    assert len(set(keys.values())) == len(keys)
    assert all(m.point_bank.directory == tmp_path / m.point_bank.key for m in variants.values())
    # settings that do not change the clouds keep the bank (e.g. the decoder's size, points_mix)
    assert _module(generator_ckpt, tmp_path, points_mix=0.5, lr=1.0).point_bank.key == key


def test_stored_clouds_equal_what_sampling_produced(generator_ckpt: Path, batch: AvatarBatch, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    module = _module(generator_ckpt, tmp_path, bank_samples=3, bank_seed=7)
    calls = _count_sampling(module, monkeypatch)
    module.prepare_bank(batch)
    assert len(calls) == 2
    bank = PointBank(tmp_path, module.point_bank.key, samples=3)
    for subject, (args, _, out) in zip(batch.subject, list(calls), strict=True):
        assert args[0].shape[0] == 3, "the subject's samples are drawn in one batched call"
        entry = bank.load(subject)
        assert entry is not None
        _assert_same_entry(entry, BankEntry(tokens=out.tokens, lengths=out.lengths, points=out.points,
                                            binding=out.binding, n_points=out.n_points, finished=out.finished))
        # the same clouds come from sampling the subject alone with its seed (no dependence on the batch)
        i = list(batch.subject).index(subject)
        with torch.no_grad():
            one = _one(batch, i)
            condition = module.model.encode_condition(one.portrait, one.portrait_head)
            rngs = [torch.Generator().manual_seed(subject_seed(7, subject) + k) for k in range(3)]
            alone = module.model.generator.sample(condition.expand(3, -1, -1), module.model.sampling, rngs,
                                            shape=batch.portrait_head.shape[i : i + 1].expand(3, -1))
        assert torch.equal(alone.tokens, entry.tokens) and torch.equal(alone.points, entry.points)
        assert len({tuple(entry.body(k).tolist()) for k in range(3)}) > 1, "samples of a subject differ"


def test_bank_is_deterministic_and_independent_of_the_batch(generator_ckpt: Path, batch: AvatarBatch,
                                                            tmp_path: Path) -> None:
    a = _module(generator_ckpt, tmp_path / "a", bank_samples=2)
    a.prepare_bank(batch)
    b = _module(generator_ckpt, tmp_path / "b", bank_samples=2)
    def flip(t: torch.Tensor) -> torch.Tensor:
        return t.flip(0)

    reversed_batch = dataclasses.replace(batch, subject=list(reversed(batch.subject)), portrait=flip(batch.portrait),
                                         portrait_head=batch.portrait_head.map(flip), head=batch.head.map(flip))
    b.prepare_bank(reversed_batch)  # other order, other folder: the same clouds per subject
    for subject in batch.subject:
        ea, eb = a.point_bank.load(subject), b.point_bank.load(subject)
        assert ea is not None and eb is not None
        _assert_same_entry(ea, eb)


def test_bank_features_equal_teacher_forced_features_of_the_tokens(generator_ckpt: Path, batch: AvatarBatch,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    module = _module(generator_ckpt, tmp_path, bank_samples=2).eval()
    calls = _count_sampling(module, monkeypatch)
    draw = torch.tensor([1, 0])
    bank = module.prepare_bank(batch, use_teacher=torch.tensor([False, False]), draw=draw)
    tok = module.model.tokenizer
    for i, (_, _, out) in enumerate(calls):
        k, n = int(draw[i]), int(out.n_points[draw[i]])
        assert int(bank.n_points[i]) == n
        torch.testing.assert_close(bank.points[i, :n], out.points[k, :n], rtol=0, atol=0)
        assert torch.equal(bank.binding[i, :n], out.binding[k, :n])
        assert bool(bank.finished[i]) == bool(out.finished[k])
        # features of the sampled tokens (KV-cached, step by step) = teacher-forced features of the same tokens under
        # the same condition (a subject's condition is encoded alone when it is sampled, so compare a batch of one:
        # the condition encoder's eval-mode surface sampling draws differently for a batch of two)
        alone = module.prepare_bank(_one(batch, i), use_teacher=torch.tensor([False]), draw=draw[i : i + 1])
        torch.testing.assert_close(alone.features[0, :n], out.point_hidden[k, :n], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(alone.points[0, :n], bank.points[i, :n], rtol=0, atol=0)
        # bank points are bin centres in sequence order: re-tokenising them reproduces the sampled tokens exactly
        # (quantisation maps a centre to its own bin; the sort keeps the enforced order; no duplicates to drop)
        retok = tok.encode(out.points[k, :n], out.binding[k, :n])
        assert torch.equal(retok[:-1], out.tokens[k, : 1 + 4 * n]) and int(retok[-1]) == tok.eos_id
    # so the teacher path on the bank points gives the same points and features
    teacher = module.model.prepare(batch.portrait, batch.portrait_head, points="teacher", teacher_means=bank.points,
                             teacher_binding=bank.binding, teacher_mask=bank.mask, shape=batch.portrait_head.shape)
    for name in ("points", "binding", "mask", "n_points", "features"):
        assert torch.equal(getattr(teacher, name), getattr(bank, name)), name

    # points_mix: a row that takes its teacher cloud is exactly the teacher path's row
    mixed = module.prepare_bank(batch, use_teacher=torch.tensor([True, False]), draw=draw)
    truth = module.prepare_batch(batch, "teacher")
    n0 = int(truth.n_points[0])
    assert int(mixed.n_points[0]) == n0 and bool(mixed.finished[0])
    for name in ("points", "binding"):
        assert torch.equal(getattr(mixed, name)[0, :n0], getattr(truth, name)[0, :n0]), name
    # (features up to float rounding: the padded sequence length, so the kernels' blocking, differs)
    torch.testing.assert_close(mixed.features[0, :n0], truth.features[0, :n0], rtol=1e-5, atol=1e-5)
    n1 = int(bank.n_points[1])
    assert torch.equal(mixed.points[1, :n1], bank.points[1, :n1])
    torch.testing.assert_close(mixed.features[1, :n1], bank.features[1, :n1], rtol=1e-5, atol=1e-5)
    assert len(calls) == 2, "the bank is sampled once"


def test_training_step_on_bank_clouds(generator_ckpt: Path, shards: Path, tmp_path: Path) -> None:
    module = _module(generator_ckpt, None, points_mix=0.5, lr=1e-3, warmup_steps=1)
    assert module.eval_points_source == "generated", "trained on bank clouds, tested on generated ones"
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=2, limit_val_batches=0, num_sanity_val_steps=0,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(module, _datamodule(shards))
    loss = trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss), loss
    # the default folder is next to the run
    assert module.point_bank.directory.parent == tmp_path / "point_bank"
    assert len(_files(module)) == 2


def test_corrupt_bank_file_is_sampled_again_with_a_warning(generator_ckpt: Path, batch: AvatarBatch,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    first = _module(generator_ckpt, tmp_path)
    first.prepare_bank(batch)
    victim = first.point_bank.path(batch.subject[0])
    good = victim.read_bytes()
    original = first.point_bank.load(batch.subject[0])
    for damage in (good[: len(good) // 2], b"garbage"):
        victim.write_bytes(damage)
        module = _module(generator_ckpt, tmp_path)
        calls = _count_sampling(module, monkeypatch)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="avp.point_bank"):
            module.prepare_bank(batch)
        assert len(calls) == 1, "only the unreadable subject is sampled again"
        assert str(victim) in caplog.text, caplog.text
        rebuilt = module.point_bank.load(batch.subject[0])
        assert rebuilt is not None
        _assert_same_entry(rebuilt, original)  # seeded per subject: the same clouds again


def test_bank_file_of_another_key_or_subject_is_not_used(generator_ckpt: Path, batch: AvatarBatch,
                                                         tmp_path: Path) -> None:
    module = _module(generator_ckpt, tmp_path)
    module.prepare_bank(batch)
    s0, s1 = batch.subject[0], batch.subject[1]
    bank = module.point_bank
    # a file copied to another subject's name is refused (it holds the other subject)
    bank.path(s1).write_bytes(bank.path(s0).read_bytes())
    assert PointBank(tmp_path, bank.key).load(s1) is None
    # a folder whose files belong to another key is refused
    other = PointBank(tmp_path, "0" * 16)
    other.directory.mkdir()
    other.path(s0).write_bytes(bank.path(s0).read_bytes())
    assert other.load(s0) is None


def test_bad_settings_are_refused(generator_ckpt: Path, batch: AvatarBatch) -> None:
    with pytest.raises(ValueError, match="points_mix.*generated_bank"):
        _module(generator_ckpt, None, points="teacher", points_mix=0.5)
    with pytest.raises(ValueError, match=r"points_mix must be in \[0, 1\]"):
        _module(generator_ckpt, None, points_mix=1.5)
    with pytest.raises(ValueError, match="eval_points.*evaluate with 'generated'"):
        _module(generator_ckpt, None, eval_points="generated_bank")
    with pytest.raises(ValueError, match="bank_samples"):
        _module(generator_ckpt, None, bank_samples=0)
    with pytest.raises(ValueError, match="bank_dir"):
        _module(generator_ckpt, None).prepare_bank(batch)


def test_key_and_file_helpers() -> None:
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([True, False]), "s": torch.tensor(3)}
    digest = state_digest(state)
    assert digest == state_digest(dict(reversed(list(state.items()))))
    assert digest != state_digest({**state, "w": state["w"] + 1e-6})
    assert digest != state_digest({**state, "w": state["w"].double()})
    key, meta = bank_key(digest, {"temperature": 1.0}, 0, 1)
    assert len(key) == 16 and meta["generator"] == digest
    assert bank_key(digest, {"temperature": 1.0}, 0, 1)[0] == key
    assert bank_key(digest, {"temperature": 0.9}, 0, 1)[0] != key
    assert subject_seed(0, "a") != subject_seed(0, "b") != subject_seed(1, "b")
    assert 0 <= subject_seed(0, "a") < 2**63
    names = {subject_filename(s) for s in ("a/b", "a_b", "../x", "")}
    assert len(names) == 4 and all("/" not in n and not n.startswith(".") for n in names)


def test_bulk_fill_samples_every_training_subject_batched_and_independent_of_the_batch(
        generator_ckpt: Path, shards: Path, tmp_path: Path) -> None:
    from avp.data.reader import iter_raw_samples, resolve_shards
    from avp.data.schema import decode_sample

    refs, _ = resolve_shards(shards, "train")
    samples = [decode_sample(raw, shard=ref.name, decode_frames=False) for ref in refs for raw in iter_raw_samples(ref)]
    subjects = [s.meta["subject"] for s in samples]
    filled = {}
    for batch_size in (2, 1):
        module = _module(generator_ckpt, tmp_path / f"bank{batch_size}", bank_fill_batch=batch_size)
        assert module.fill_bank(iter(samples), total=len(samples)) == len(subjects)
        assert module.point_bank.missing(subjects) == []
        filled[batch_size] = [module.point_bank.load(s) for s in subjects]
        # a second fill finds everything on disk
        again = _module(generator_ckpt, tmp_path / f"bank{batch_size}", bank_fill_batch=batch_size)
        assert again.fill_bank(iter(samples)) == 0
    for a, b in zip(filled[2], filled[1]):  # batched with another subject or alone: the same clouds
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.points, b.points)
    # ranks split the subjects: two "ranks" together sample each subject once
    module = _module(generator_ckpt, tmp_path / "ranks", bank_fill_batch=2)
    assert sum(module.fill_bank(iter(samples), rank=r, world_size=2) for r in (0, 1)) == len(subjects)
