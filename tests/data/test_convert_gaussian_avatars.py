"""Converter: a GaussianAvatars fit + VHAP export in exactly their formats -> a shard whose canonical teacher points
land on the right faces of the subject's neutral head."""

from __future__ import annotations

import json

import numpy as np
import pytest

from avp.data.cli import validate
from avp.data.convert_gaussian_avatars import ConversionError, build_sample, convert, opencv_viewmat
from avp.data.manifest import read_manifest
from avp.data.synthetic.geometry import closest_on_triangles
from avp.head import HeadConfig, load_head_model
from tests.fixtures.face_frames import face_frames, quat_matrix
from tests.fixtures.flame import write_flame_pickle
from tests.fixtures.gaussian_avatars import (
    FlameSequence,
    look_at_gl,
    random_flame,
    write_gaussian_avatars_output,
    write_small_clip,
    write_vhap_export,
    write_vhap_union,
)

T, C, H, W, N = 3, 3, 24, 32, 240


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    path = write_flame_pickle(tmp_path_factory.mktemp("flame") / "flame2023.pkl", version="2023")
    return load_head_model(HeadConfig(flame_path=str(path), teeth=True))


_look_at_gl = look_at_gl


def _flame(rng: np.random.Generator, n_vertices: int, t: int = T) -> FlameSequence:
    return random_flame(rng, n_vertices, t)


@pytest.fixture(scope="module")
def fixture_dirs(tmp_path_factory, head):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("ga")
    flame = _flame(rng, 5143)  # FLAME's 5,023 vertices + 120 teeth vertices, as real VHAP/GaussianAvatars files
    binding = rng.integers(0, head.n_faces, N)
    binding[:10] = np.arange(head.n_faces - 10, head.n_faces)  # teeth faces too
    # face-local: a little off the centroid in the triangle's plane (axes 0 and 2) and along its normal (axis 1)
    xyz = np.stack([rng.uniform(-0.05, 0.05, N), rng.uniform(-0.03, 0.03, N), rng.uniform(-0.05, 0.05, N)], -1)
    fit = dict(xyz=xyz, f_dc=rng.normal(0, 1, (N, 3)), f_rest=rng.normal(0, 0.1, (N, 45)),
               opacity=rng.normal(0, 2, N), scale=rng.normal(-1, 0.3, (N, 3)), rot=rng.normal(0, 1, (N, 4)),
               binding=binding)
    ga = write_gaussian_avatars_output(root / "074_EMO-1", flame, **fit)
    images = np.full((T, C, H, W, 3), 255, np.uint8)
    images[:, :, 8:16, 12:20] = rng.integers(0, 255, (T, C, 1, 1, 3), dtype=np.uint8)
    masks = np.zeros((T, C, H, W), np.uint8)
    masks[:, :, 8:16, 12:20] = 255
    eyes = [np.array([np.sin(a), 0.0, np.cos(a)]) for a in np.deg2rad([-30.0, 0.0, 30.0])]
    Ks = np.array([[[40.0, 0, W / 2 + 1], [0, 40.0, H / 2 - 1], [0, 0, 1]]] * C)
    export = write_vhap_export(root / "074_EMO-1_v16_DS4_whiteBg_staticOffset", flame=flame, images=images,
                               masks=masks, Ks=Ks, c2w_gl=np.stack([_look_at_gl(e) for e in eyes]))
    return ga, export, fit, flame


def _ga_reference(verts: np.ndarray, faces: np.ndarray, fit: dict) -> tuple[np.ndarray, ...]:
    """GaussianAvatars' teacher in the neutral head's frames (tests/fixtures/face_frames.py)."""
    R, s, centre = face_frames(verts, faces, fit["binding"])
    means = np.einsum("nij,nj->ni", R, fit["xyz"]) * s[:, None] + centre
    return means, fit["scale"] + np.log(s)[:, None], R, s


def test_teacher_points_land_on_their_faces_of_the_neutral_head(head, fixture_dirs, tmp_path) -> None:
    ga, export, fit, flame = fixture_dirs
    shard = convert(head, ga, export, tmp_path, size=32, portrait_size=24, split="train")
    report = validate(str(tmp_path), progress=False)
    assert report["samples"] == 1 and report["errors"] == []
    sample = build_sample(head, ga, export, size=32, portrait_size=24)
    g = sample.gaussians
    assert shard.name == "train-074__EMO-1.tar" and sample.meta["subject"] == "074"
    assert read_manifest(tmp_path).shards[0].subjects == ["074"]

    import torch

    assert flame.static_offset.shape[1] == head.n_vertices == 5143
    neutral = head.canonical(torch.from_numpy(flame.shape[None]).float())[0].double().numpy() + flame.static_offset[0]
    faces = head.faces.numpy()
    means, log_scales, R_face, face_scale = _ga_reference(neutral, faces, fit)
    np.testing.assert_array_equal(g.binding, fit["binding"])
    np.testing.assert_allclose(g.means, means, atol=1e-6)
    np.testing.assert_allclose(g.log_scales, log_scales, atol=1e-5)
    # rotation q(R_face) * q_local: as matrices R_face @ R_local
    np.testing.assert_allclose(quat_matrix(g.quats.astype(np.float64)),
                               R_face @ quat_matrix(fit["rot"]), atol=1e-5)
    # SH: f_dc are the DC coefficients, f_rest is channel-major
    np.testing.assert_allclose(g.sh[:, 0], fit["f_dc"], atol=1e-6)
    np.testing.assert_allclose(g.sh[:, 1:, 1], fit["f_rest"][:, 15:30], atol=1e-6)

    # every point sits next to the triangle it is bound to: within its offset (<= 0.1 face scales) of it, and that
    # triangle (or one sharing a vertex with it, where the offset crosses an edge) is the nearest of the whole mesh
    tri = neutral[faces]
    own = np.linalg.norm(closest_on_triangles(g.means, tri[g.binding]) - g.means, axis=-1)
    assert np.all(own <= 0.1 * face_scale + 1e-6)
    nearest = np.zeros(len(g.means), np.int64)
    best = np.full(len(g.means), np.inf)
    for start in range(0, len(faces), 2048):
        q = closest_on_triangles(g.means[:, None].astype(np.float64), tri[None, start:start + 2048])
        d = np.linalg.norm(q - g.means[:, None], axis=-1)
        better = d.min(1) < best
        nearest[better], best[better] = d.argmin(1)[better] + start, d.min(1)[better]
    same_or_adjacent = [len(set(faces[a]) & set(faces[b])) > 0 for a, b in zip(nearest, g.binding)]
    assert np.mean(nearest == g.binding) > 0.8 and np.mean(same_or_adjacent) > 0.95


@pytest.mark.parametrize("principal_point", ["calibrated", "centred"])
def test_cameras_frames_and_head_parameters(head, fixture_dirs, principal_point) -> None:
    ga, export, fit, flame = fixture_dirs
    s = build_sample(head, ga, export, size=32, portrait_size=24, max_frames=2, principal_point=principal_point)
    assert s.meta["frames"] == 2 and s.meta["views"] == C and s.meta["extra"]["timesteps"] == [0, 2]
    assert s.meta["extra"]["principal_point"] == principal_point
    # the world origin projects onto each camera's (padded, resized) principal point, in front of the camera:
    # VHAP's calibrated one (written as OpenGL H - cy, read back as OpenCV), or the image centre GaussianAvatars uses
    principal = [W / 2 + 1, H / 2 - 1] if principal_point == "calibrated" else [W / 2, H / 2]
    for v in range(C):
        p = s.cameras.viewmats[v] @ np.array([0, 0, 0, 1.0])
        assert p[2] > 0.9
        uv = (s.cameras.Ks[v] @ (p[:3] / p[2]))[:2]
        np.testing.assert_allclose(uv, [principal[0], principal[1] + (W - H) / 2], atol=1e-4)
        assert s.cameras.Ks[v][0, 0] == pytest.approx(s.cameras.Ks[v][1, 1])  # fl_y = fl_x in both fixtures
    # the coloured square stays where the cameras say (pad 24 -> 32 rows: +4)
    assert (s.frames[0, 0, 12:20, 12:20] != 255).all() and (s.frames[0, 0, :4] == 255).all()
    assert s.masks[0, 0, 12:20, 12:20].min() == 255 and s.masks[0, 0, :4].max() == 0
    for key, src in (("global_rot", flame.rotation), ("expr", flame.expr), ("jaw_pose", flame.jaw_pose)):
        np.testing.assert_allclose(s.head[key], src[[0, 2]], atol=1e-6)
    np.testing.assert_allclose(s.head["shape"], flame.shape, atol=1e-6)
    # the portrait comes from the frontal camera (index 1) at the first timestep
    assert s.meta["extra"]["portrait"] == {"timestep": 0, "camera": 1}
    np.testing.assert_allclose(s.portrait_camera.viewmats[0], opencv_viewmat(_look_at_gl(np.array([0, 0, 1.0]))),
                               atol=1e-6)


def test_bad_inputs_are_named(head, fixture_dirs, tmp_path) -> None:
    ga, export, fit, flame = fixture_dirs
    from plyfile import PlyData, PlyElement

    ply = next(ga.rglob("point_cloud.ply"))
    data = PlyData.read(str(ply))["vertex"].data
    names = [n for n in data.dtype.names if n != "binding_0"]
    broken = tmp_path / "broken"
    broken.mkdir()
    without = np.empty(len(data), dtype=[(n, "f4") for n in names])
    for n in names:
        without[n] = data[n]
    PlyData([PlyElement.describe(without, "vertex")]).write(str(broken / "point_cloud.ply"))
    with pytest.raises(ConversionError, match=r"point_cloud.ply: missing property 'binding_0'"):
        build_sample(head, broken, export)

    moved = tmp_path / "074_EMO-2"
    import shutil

    shutil.copytree(export, moved)
    db = json.loads((moved / "transforms_train.json").read_text())
    for f in db["frames"]:
        if f["timestep_index"] == 1:  # as in a combined export, where each sequence is re-centred
            f["transform_matrix"][0][3] += 0.1
    (moved / "transforms_train.json").write_text(json.dumps(db))
    with pytest.raises(ConversionError, match="camera 0 moves between timesteps"):
        build_sample(head, ga, moved)


@pytest.fixture(scope="module")
def union_dirs(tmp_path_factory, head):
    """Two sequences of one subject, their combined export, and a GaussianAvatars fit trained on it (one FLAME row per
    combined timestep: sequence EMO-1's T rows, then FREE's 2 rows)."""
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("union")
    images = np.full((T, C, H, W, 3), 255, np.uint8)
    eyes = [np.array([np.sin(a), 0.0, np.cos(a)]) for a in np.deg2rad([-30.0, 0.0, 30.0])]
    Ks = np.array([[[40.0, 0, W / 2], [0, 40.0, H / 2], [0, 0, 1]]] * C)
    c2w = np.stack([_look_at_gl(e) for e in eyes])
    union_flame = _flame(rng, 5143, t=T + 2)
    parts = {"074_EMO-1_v16_DS4_whiteBg_staticOffset": slice(0, T), "074_FREE_v16_DS4_whiteBg_staticOffset":
             slice(T, T + 2)}
    folders = []
    for name, rows in parts.items():
        flame = FlameSequence(**{k: (v if k in ("shape", "static_offset") else v[rows])
                                 for k, v in vars(union_flame).items()})
        n = rows.stop - rows.start
        folders.append(write_vhap_export(root / name, flame=flame, images=images[:n], masks=None, Ks=Ks, c2w_gl=c2w))
    union = write_vhap_union(root / "074_UNION_v16_DS4_whiteBg_staticOffset", train=folders[:1], test=folders[1:])
    fit = dict(xyz=np.zeros((8, 3)), f_dc=np.zeros((8, 3)), f_rest=np.zeros((8, 45)), opacity=np.zeros(8),
               scale=np.full((8, 3), -3.0), rot=np.tile([1.0, 0, 0, 0], (8, 1)), binding=np.arange(8))
    ga = write_gaussian_avatars_output(root / "ga_union", union_flame, **fit)
    return ga, union, folders, union_flame


def test_a_union_fit_pairs_its_rows_with_a_sequence_of_the_union_export(head, union_dirs) -> None:
    ga, union, folders, flame = union_dirs
    s = build_sample(head, ga, union, size=32, portrait_size=24, source_sequence=folders[1].name)
    assert (s.meta["subject"], s.meta["sequence"]) == ("074", "FREE")
    assert s.meta["extra"]["flame_source"] == "gaussian_avatars" and s.meta["extra"]["timesteps"] == [T, T + 1]
    # the second sequence's frames get the fit's rows T and T+1 (the combined numbering), not rows 0 and 1
    np.testing.assert_allclose(s.head["expr"], flame.expr[T:T + 2], atol=1e-6)
    np.testing.assert_allclose(s.head["jaw_pose"], flame.jaw_pose[T:T + 2], atol=1e-6)
    with pytest.raises(ConversionError, match=r"combined \(UNION\) VHAP export of 2 sequences.*--source-sequence"):
        build_sample(head, ga, union)
    with pytest.raises(ConversionError, match="not one of its sequences"):
        build_sample(head, ga, union, source_sequence="074_EXP-2_v16")
    with pytest.raises(ConversionError, match="single-sequence VHAP export"):
        build_sample(head, ga, folders[1], source_sequence=folders[1].name)


def test_a_union_fit_is_never_paired_with_one_sequence_export(head, union_dirs) -> None:
    ga, union, folders, flame = union_dirs
    # the FREE sequence's own export numbers its timesteps 0, 1: rows 0, 1 of the union fit belong to EMO-1
    s = build_sample(head, ga, folders[1], size=32, portrait_size=24)
    assert s.meta["extra"]["flame_source"] == "vhap"
    assert f"has {T + 2} timesteps but" in s.meta["extra"]["flame_source_note"]
    np.testing.assert_allclose(s.head["expr"], flame.expr[T:T + 2], atol=1e-6)  # VHAP's own per-frame files
    with pytest.raises(ConversionError, match=r"has 5 timesteps but .* numbers 2.*UNION folder and --source-sequence"):
        build_sample(head, ga, folders[1], flame_source="ga")


def test_the_convert_verb_writes_a_shard_of_one_union_sequence(head, union_dirs, tmp_path, capsys) -> None:
    from avp.data.cli import main
    from avp.data.reader import iter_raw_samples, resolve_shards
    from avp.data.schema import decode_sample

    ga, union, folders, flame = union_dirs
    pkl = write_flame_pickle(tmp_path / "flame2023.pkl", version="2023")
    out = tmp_path / "shards"
    code = main(["convert", str(ga), str(union), "--out", str(out), "--flame", str(pkl), "--size", "32",
                 "--portrait-size", "24", "--split", "train", "--source-sequence", folders[0].name,
                 "--principal-point", "calibrated"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["subject"] == "074" and printed["split"] == "train"
    (ref,), _ = resolve_shards(out, "train")
    (sample,) = [decode_sample(raw, shard=ref.name, decode_frames=False) for raw in iter_raw_samples(ref)]
    extra = sample.meta["extra"]
    assert extra["union_sequence"] == folders[0].name and extra["principal_point"] == "calibrated"
    assert extra["flame_source"] == "gaussian_avatars" and extra["timesteps"] == list(range(T))
    np.testing.assert_allclose(sample.head["expr"], flame.expr[:T], atol=1e-6)


def test_the_static_offset_travels_with_the_subject_and_poses_the_teacher_as_gaussian_avatars(
        head, fixture_dirs) -> None:
    """The sample carries the fit's static offset (``head["static_offset"]``, beside the shape); binding the teacher
    on the tracked neutral mesh and posing it (face frames) with that offset gives GaussianAvatars' posed Gaussians:
    ``R_f xyz s_f + c_f`` on the posed *offset* mesh, the one the frames were tracked on."""
    import torch

    from avp.types import HeadParams

    ga, export, fit, flame = fixture_dirs
    s = build_sample(head, ga, export, size=32, portrait_size=24)
    offset = s.head["static_offset"]
    assert offset.dtype == np.float32 and offset.shape == (head.n_vertices, 3) == flame.static_offset.shape[1:]
    np.testing.assert_array_equal(offset, flame.static_offset[0])
    assert s.meta["extra"]["static_offset"] is True
    assert "static_offset" not in build_sample(head, ga, export, size=32, portrait_size=24,
                                               static_offset=False).head

    f64 = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))
    shape, off = f64(s.head["shape"])[None], f64(offset)[None]
    rig = head.rig(torch.from_numpy(s.gaussians.binding.astype(np.int64))[None], f64(s.gaussians.means)[None], shape,
                   static_offset=off)
    t = 1
    p = HeadParams(shape[:, None], *(f64(s.head[k][t])[None, None] for k in
                                     ("expr", "global_rot", "neck_pose", "jaw_pose", "eyes_pose", "translation")))
    posed = head(p, static_offset=off[:, None]).vertices[0, 0].numpy()
    expected, *_ = _ga_reference(posed, head.faces.numpy(), fit)
    got = rig.deform(p, mode="face_frame").means[0, 0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_fits_flame_release_is_checked_and_recorded(head, fixture_dirs, tmp_path) -> None:
    ga, export, fit, flame = fixture_dirs
    s = build_sample(head, ga, export, size=32, portrait_size=24)  # GaussianAvatars/VHAP default: FLAME 2023
    assert (s.meta["extra"]["flame_version"], s.meta["extra"]["fit_flame_version"]) == ("2023", "2023")
    assert s.meta["head_model"] == "flame2023+teeth"
    from avp.head.flame import FlameVersionError

    with pytest.raises(FlameVersionError) as e:
        build_sample(head, ga, export, fit_flame_version="2020")
    message = str(e.value)
    assert "point_cloud.ply" in message and head.source in message and "FLAME 2020" in message
    assert "FLAME 2023" in message
    old = load_head_model(HeadConfig(flame_path=str(write_flame_pickle(tmp_path / "generic_model.pkl")), teeth=True))
    with pytest.raises(FlameVersionError, match="generic_model.pkl"):
        build_sample(old, ga, export)
    assert build_sample(old, ga, export, size=32, portrait_size=24,
                        fit_flame_version="2020").meta["extra"]["flame_version"] == "2020"


def test_the_convert_verb_passes_the_fits_flame_release(tmp_path, capsys) -> None:
    """``avp data convert --fit-flame-version``: a 2020 fit against a 2020 FLAME file converts (and records both
    releases); the default (2023) against a 2020 file, or 2020 against a 2023 file, is refused naming both."""
    from avp.data.cli import main
    from avp.data.reader import iter_raw_samples, resolve_shards
    from avp.data.schema import decode_sample

    old = write_flame_pickle(tmp_path / "generic_model.pkl")  # FLAME 2020
    new = write_flame_pickle(tmp_path / "flame2023.pkl", version="2023")
    n_faces = load_head_model(HeadConfig(flame_path=str(old), teeth=True)).n_faces
    ga, export, flame = write_small_clip(tmp_path / "in", n_faces, points=20)
    args = [str(ga), str(export), "--size", "32", "--portrait-size", "24", "--split", "train"]
    out = tmp_path / "shards"
    assert main(["convert", *args, "--out", str(out), "--flame", str(old), "--fit-flame-version", "2020"]) == 0
    (ref,), _ = resolve_shards(out, "train")
    (sample,) = [decode_sample(raw, shard=ref.name, decode_frames=False) for raw in iter_raw_samples(ref)]
    assert (sample.meta["extra"]["flame_version"], sample.meta["extra"]["fit_flame_version"]) == ("2020", "2020")
    assert sample.meta["head_model"] == "flame2020+teeth"
    capsys.readouterr()
    for flame_file, release in ((old, None), (new, "2020")):
        refused = tmp_path / f"refused-{flame_file.stem}"
        extra = [] if release is None else ["--fit-flame-version", release]
        assert main(["convert", *args, "--out", str(refused), "--flame", str(flame_file), *extra]) == 2
        err = capsys.readouterr().err
        fit_release, file_release = ("2023", "2020") if release is None else ("2020", "2023")
        assert f"FLAME {fit_release}" in err and f"FLAME {file_release}" in err and flame_file.name in err, err
        assert not refused.exists() or not list(refused.glob("*.tar"))
