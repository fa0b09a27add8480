"""FLAME loader and GaussianAvatars' teeth on FLAME-format pickles written by tests/fixtures/flame.py."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch

from avp.head import FlameFileError, HeadConfig, HeadModel, load_head_model, read_flame_pickle, teeth_faces
from avp.head.flame import (
    FLAME_N_FACES,
    FLAME_N_VERTICES,
    LIP_OUTSIDE_RING_LOWER,
    LIP_OUTSIDE_RING_UPPER,
    FlameVersionError,
    check_flame_version,
    flame_version_from_path,
)
from avp.types import HeadParams
from tests.fixtures.flame import flame_like_model, write_flame_pickle
from tests.head.params import random_params


def test_fixture_pickles_hold_chumpy_objects_and_old_module_paths(flame2020_path: Path) -> None:
    raw = flame2020_path.read_bytes()
    assert b"chumpy.ch\nCh" in raw and b"numpy.core.multiarray" in raw and b"scipy.sparse.csc" in raw
    assert "chumpy" not in sys.modules  # nothing here has chumpy installed
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(raw, encoding="latin1")  # a plain unpickler cannot read it


@pytest.mark.parametrize("version", ["2020", "2023"])
def test_loader_reads_exactly_what_was_written(flame2020_path: Path, flame2023_path: Path, version: str) -> None:
    path, seed = (flame2020_path, 0) if version == "2020" else (flame2023_path, 1)
    reference = flame_like_model(seed=seed)
    m = load_head_model(HeadConfig(flame_path=str(path), teeth=False))
    assert m.name == f"flame{version}"
    assert (m.n_vertices, m.n_faces, m.n_shape, m.n_expr) == (FLAME_N_VERTICES, FLAME_N_FACES, 300, 100)
    assert torch.equal(m.faces, torch.as_tensor(reference["f"].astype(np.int64)))
    assert np.allclose(m.v_template.numpy(), reference["v_template"], atol=1e-7)
    assert np.allclose(m.shapedirs.numpy(), reference["shapedirs"][..., :300], atol=1e-7)
    assert np.allclose(m.exprdirs.numpy(), reference["shapedirs"][..., 300:], atol=1e-7)
    assert np.allclose(m.J_regressor.numpy(), reference["J_regressor"].toarray(), atol=1e-7)
    V = FLAME_N_VERTICES
    # FLAME's [V, 3, 36] pose correctives become [36, V * 3] (feature-major), as FLAME's own code reshapes them
    assert np.allclose(m.posedirs.numpy(), reference["posedirs"].reshape(V * 3, 36).T, atol=1e-7)
    assert m.parents == [-1, 0, 1, 1, 1]


@pytest.mark.parametrize("with_offset", [False, True])
def test_forward_matches_a_direct_implementation_of_flame(flame2020_path: Path, with_offset: bool) -> None:
    """Our LBS against FLAME's formula written out with numpy on the fixture's arrays; a static offset is added to the
    shaped template before joint regression, pose correctives and skinning (GaussianAvatars' ``FlameHead.forward``:
    ``v_shaped += static_offset`` then ``lbs``)."""
    ref = flame_like_model(seed=0)
    m = load_head_model(HeadConfig(flame_path=str(flame2020_path), teeth=False, n_shape=300, n_expr=100))
    p = random_params(m, 1, dtype=torch.float64, seed=4)
    offset = np.random.default_rng(3).normal(0, 0.004, (FLAME_N_VERTICES, 3)) if with_offset else None
    out = (m(p, static_offset=torch.from_numpy(offset)[None]) if with_offset else m(p)).vertices[0].numpy()
    betas = np.concatenate([p.shape[0].numpy(), p.expr[0].numpy()])
    v_shaped = ref["v_template"] + np.einsum("vck,k->vc", ref["shapedirs"], betas)
    if offset is not None:
        v_shaped = v_shaped + offset
    J = ref["J_regressor"] @ v_shaped
    pose = np.concatenate([p.global_rot[0], p.neck_pose[0], p.jaw_pose[0], p.eyes_pose[0]]).reshape(5, 3)

    def rodrigues(w: np.ndarray) -> np.ndarray:
        t = np.linalg.norm(w)
        k = w / t
        K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * K @ K

    R = np.stack([rodrigues(w) for w in pose])
    feature = (R[1:] - np.eye(3)).ravel()
    v_posed = v_shaped + np.einsum("vcp,p->vc", ref["posedirs"], feature)
    parents = [-1, 0, 1, 1, 1]
    G = [None] * 5
    for j in range(5):
        local = np.eye(4)
        local[:3, :3] = R[j]
        local[:3, 3] = J[j] - (J[parents[j]] if j else 0)
        G[j] = local if j == 0 else G[parents[j]] @ local
    A = np.stack([g - np.pad((g[:3, :3] @ J[j])[:, None], ((0, 1), (3, 0))) for j, g in enumerate(G)])
    T = np.einsum("vj,jab->vab", ref["weights"], A)
    verts = np.einsum("vab,vb->va", T[:, :3, :3], v_posed) + T[:, :3, 3] + p.translation[0].numpy()
    assert np.allclose(out, verts, atol=2e-6)  # the model stores float32 arrays


def test_teeth_extension_reproduces_gaussian_avatars(flame_model: HeadModel) -> None:
    m = flame_model
    ref = flame_like_model(seed=0)
    V0, F0 = FLAME_N_VERTICES, FLAME_N_FACES
    assert m.name == "flame2020+teeth" and (m.n_vertices, m.n_faces) == (5143, 10144)
    assert torch.equal(m.faces[:F0], torch.as_tensor(ref["f"].astype(np.int64)))  # FLAME's faces keep their ids
    teeth = m.faces[F0:] - V0
    assert teeth.min() == 0 and teeth.max() == 119
    # spot checks of GaussianAvatars' face order (its flame.py lists them): first, where the diagonal flips, last
    for row, expected in ((0, (0, 31, 30)), (14, (7, 8, 37)), (15, (8, 38, 37)), (28, (60, 75, 76)),
                          (56, (75, 30, 76)), (83, (88, 44, 89)), (84, (45, 46, 15)), (112, (90, 106, 105)),
                          (140, (105, 106, 45)), (167, (118, 119, 59))):
        assert tuple(teeth[row].tolist()) == expected, row
    assert np.array_equal(teeth_faces(), teeth.numpy())
    # rows of 15: upper root 0, lower root 15, upper edge 30, lower edge 45, then the backs 60/75 (upper), 90/105
    upper = np.concatenate([np.arange(0, 15), np.arange(30, 45), np.arange(60, 90)]) + V0
    lower = np.concatenate([np.arange(15, 30), np.arange(45, 60), np.arange(90, 120)]) + V0
    W = m.lbs_weights.numpy()
    assert (W[upper, 1] == 1).all() and (W[lower, 2] == 1).all()  # neck and jaw
    assert np.isin(teeth[:84].numpy() + V0, upper).all() and np.isin(teeth[84:].numpy() + V0, lower).all()
    lips = (ref["shapedirs"][list(LIP_OUTSIDE_RING_UPPER), :, :20] + ref["shapedirs"][list(LIP_OUTSIDE_RING_LOWER), :,
                                                                                       :20]) / 2
    assert np.allclose(m.shapedirs[V0:].numpy().reshape(8, 15, 3, 20), lips[None], atol=1e-7)
    assert m.exprdirs[V0:].abs().max() == 0 and m.posedirs.view(36, -1, 3)[:, V0:].abs().max() == 0
    assert m.J_regressor[:, V0:].abs().max() == 0
    # geometry: 1.5 lip gaps behind the lips, upper edge 0.1 gap above the middle, lower teeth 0.4 gaps further back
    v = m.v_template.numpy().astype(np.float64)
    up, lo = ref["v_template"][list(LIP_OUTSIDE_RING_UPPER)], ref["v_template"][list(LIP_OUTSIDE_RING_LOWER)]
    gap = np.linalg.norm(up - lo, axis=1).mean()
    middle = (up + lo) / 2
    assert np.allclose(v[V0 + 30:V0 + 45, 2], middle[:, 2] - 1.5 * gap, atol=1e-6)
    assert np.allclose(v[V0 + 30:V0 + 45, 1], middle[:, 1].mean() + 0.1 * gap, atol=1e-6)
    assert np.allclose(v[V0 + 45:V0 + 60, 2], middle[:, 2] - 1.9 * gap, atol=1e-6)
    assert np.allclose(v[V0 + 60:V0 + 75, 2], v[V0:V0 + 15, 2] - gap, atol=1e-6)
    assert set(m.face_regions) >= {"teeth", "upper_teeth", "lower_teeth"}


def test_jaw_moves_the_lower_teeth_only(flame_model: HeadModel) -> None:
    m = flame_model
    p = HeadParams.zeros(1, n_shape=m.n_shape, n_expr=m.n_expr)
    rest = m(p).vertices[0]
    p.jaw_pose[0, 0] = 0.3
    moved = (m(p).vertices[0] - rest).norm(dim=-1)
    assert moved[FLAME_N_VERTICES + 15:FLAME_N_VERTICES + 30].min() > 1e-3
    assert moved[FLAME_N_VERTICES:FLAME_N_VERTICES + 15].max() == 0


def test_points_at_corners_follow_flame_vertices_with_pose_correctives(flame_model: HeadModel) -> None:
    m = flame_model
    assert m.posedirs is not None
    B, T, N = 1, 3, 40
    g = torch.Generator().manual_seed(0)
    face = torch.randint(0, m.n_faces, (B, N), generator=g)
    face[0, :8] = torch.arange(FLAME_N_FACES, FLAME_N_FACES + 8)  # teeth too
    shape = torch.randn(B, m.n_shape, generator=g, dtype=torch.float64)
    corner = m.faces[face][..., 2]
    rig = m.rig(face, m.canonical(shape)[torch.arange(B)[:, None], corner], shape)
    p = random_params(m, B, T, dtype=torch.float64, seed=2)
    p.shape = shape[:, None].expand(B, T, m.n_shape)
    full = m(p).vertices
    expected = full[torch.arange(B)[:, None, None], torch.arange(T)[None, :, None], corner[:, None, :]]
    assert torch.allclose(rig.deform(p).means, expected, atol=1e-10)


def test_masks_file_gives_semantic_regions(flame_model: HeadModel, flame_masks_path: Path) -> None:
    m = flame_model
    regions = m.face_regions
    assert {"face", "scalp", "neck", "nose", "lips", "ears", "forehead", "teeth"} <= set(regions)
    masks = read_flame_pickle(flame_masks_path)
    nose = set(masks["nose"].tolist())
    assert all(set(f) <= nose for f in m.faces[regions["nose"]].tolist())


def test_fixture_follows_flames_published_vertex_layout(flame_model: HeadModel) -> None:
    """Eyeballs at 3931-4476 (left) and 4477-5022 (right), closed and referenced, each skinned to its eye joint alone
    (the layout tests/fixtures/flame.py cites); the eyeballs region of the masks therefore holds their faces."""
    m = flame_model
    faces = m.faces[:FLAME_N_FACES]
    assert torch.equal(torch.unique(faces), torch.arange(FLAME_N_VERTICES))  # every vertex is referenced
    eyeballs = m.face_regions["eyeballs"]
    corners = m.faces[eyeballs]
    assert eyeballs.numel() == 2 * 1088 and bool(((corners >= 3931) & (corners < 5023)).all())
    for joint, (lo, hi) in ((3, (3931, 4477)), (4, (4477, 5023))):
        assert torch.equal(m.lbs_weights[lo:hi].argmax(-1), torch.full((hi - lo,), joint))
        assert bool((m.lbs_weights[lo:hi, joint] == 1).all()) and bool((m.lbs_weights[:3931, joint] == 0).all())
    # turning the left eye moves the left eyeball and nothing else
    p = HeadParams.zeros(1, n_shape=m.n_shape, n_expr=m.n_expr)
    rest = m(p).vertices[0]
    p.eyes_pose[0, :3] = torch.tensor([0.0, 0.3, 0.0])
    moved = (m(p).vertices[0] - rest).norm(dim=-1) > 1e-6
    assert bool(moved[3931:4477].any()) and not bool(moved[:3931].any()) and not bool(moved[4477:].any())


@pytest.mark.parametrize(("name", "version"), [("flame2023.pkl", "2023"), ("generic_model.pkl", "2020"),
                                               ("FLAME2020/model.pkl", "2020"), ("flame2023_no_jaw.pkl", "2023"),
                                               ("head.pkl", ""), ("flame2021.pkl", "")])
def test_flame_release_is_read_from_the_file_name(name: str, version: str) -> None:
    assert flame_version_from_path(name) == version


def test_flame_release_is_recorded_and_checked(flame2020_path: Path, tmp_path: Path) -> None:
    m = load_head_model(HeadConfig(flame_path=str(flame2020_path), teeth=False))
    assert (m.flame_version, m.source) == ("2020", str(flame2020_path))
    check_flame_version(m, "2020", what="fit.npz")  # the same release: fine
    check_flame_version(m, None, what="fit.npz")  # nothing to check
    with pytest.raises(FlameVersionError) as e:
        check_flame_version(m, "2023", what="the fit fit.npz")
    assert "fit.npz" in str(e.value) and str(flame2020_path) in str(e.value)
    assert "FLAME 2023" in str(e.value) and "FLAME 2020" in str(e.value)
    unnamed = write_flame_pickle(tmp_path / "head.pkl", version="2023")
    unknown = load_head_model(HeadConfig(flame_path=str(unnamed), teeth=False))
    assert unknown.flame_version == "" and unknown.name == "flame"
    with pytest.raises(FlameVersionError, match="head.pkl.*flame_version"):
        check_flame_version(unknown, "2023", what="fit.npz")
    named = load_head_model(HeadConfig(flame_path=str(unnamed), teeth=False, flame_version="2023"))
    assert named.flame_version == "2023" and named.name == "flame2023"
    with pytest.raises(FlameVersionError, match="not a FLAME model"):
        check_flame_version(load_head_model(), "2023", what="fit.npz")
    assert load_head_model().flame_version is None
    with pytest.raises(FlameFileError, match="flame_version must be one of"):
        load_head_model(HeadConfig(flame_path=str(unnamed), teeth=False, flame_version="2021"))


def test_missing_file_and_garbage_are_named(tmp_path: Path) -> None:
    with pytest.raises(FlameFileError, match="does not exist"):
        load_head_model(HeadConfig(flame_path=str(tmp_path / "nope.pkl")))
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"this is not a pickle at all")
    with pytest.raises(FlameFileError, match="junk.pkl"):
        load_head_model(HeadConfig(flame_path=str(junk)))
    listing = tmp_path / "list.pkl"
    listing.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(FlameFileError, match="dict"):
        read_flame_pickle(listing)


def test_truncated_file_is_named(flame2020_path: Path, tmp_path: Path) -> None:
    cut = tmp_path / "truncated.pkl"
    raw = flame2020_path.read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FlameFileError, match="truncated.pkl.*truncated or corrupt"):
        load_head_model(HeadConfig(flame_path=str(cut)))


def test_a_file_rewritten_in_place_is_read_again(tmp_path: Path) -> None:
    path = _write_small(tmp_path / "generic_model.pkl")
    first = load_head_model(HeadConfig(flame_path=str(path), teeth=False))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(FlameFileError):
        load_head_model(HeadConfig(flame_path=str(path), teeth=False))
    assert first.n_vertices == 60


def _write_small(path: Path, overrides: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A FLAME-format pickle of a 60-vertex mesh (FLAME's layout, not its counts): quick bad-input cases."""
    g = np.random.default_rng(0)
    V = 60
    faces = np.array([(i, (i + 1) % V, (i + 7) % V) for i in range(V)], dtype=np.uint32)
    weights = g.random((V, 5))
    data = {
        "f": faces, "v_template": g.normal(size=(V, 3)) * 0.05, "shapedirs": g.normal(size=(V, 3, 400)) * 1e-3,
        "posedirs": g.normal(size=(V, 3, 36)) * 1e-4, "weights": weights / weights.sum(1, keepdims=True),
        "J_regressor": scipy.sparse.csc_matrix(np.full((5, V), 1.0 / V)),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
    }
    data.update(overrides or {})
    for key in drop:
        data.pop(key)
    path.write_bytes(pickle.dumps(data, protocol=2))
    return path


def test_small_flame_like_models_load_without_teeth(tmp_path: Path) -> None:
    m = load_head_model(HeadConfig(flame_path=str(_write_small(tmp_path / "m.pkl")), teeth=False))
    assert (m.n_vertices, m.n_faces, m.name) == (60, 60, "flame")
    assert torch.allclose(m(HeadParams.zeros(1, n_shape=300, n_expr=100)).vertices[0], m.v_template, atol=1e-7)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"drop": ("weights",)}, "missing key 'weights'"),
        ({"overrides": {"v_template": np.zeros((60, 2))}}, "'v_template' has shape"),
        ({"overrides": {"shapedirs": np.zeros((60, 3, 50))}}, "'shapedirs' has 50 directions"),
        ({"overrides": {"f": np.zeros((60, 3), dtype=np.float64)}}, "'f' has dtype float64"),
        ({"overrides": {"f": np.full((60, 3), 600, dtype=np.uint32)}}, "'f' indexes vertices outside"),
        ({"overrides": {"kintree_table": np.array([[4294967295, 0, 0, 1, 1], [0, 1, 2, 3, 4]])}}, "kintree_table"),
        ({"overrides": {"weights": np.full((60, 5), 0.5)}}, "'weights' rows must sum to 1"),
        ({"overrides": {"posedirs": np.zeros((60, 3, 35))}}, "'posedirs' has shape"),
        ({"overrides": {"shapedirs": np.full((60, 3, 400), np.nan)}}, "'shapedirs' holds non-finite"),
        ({"overrides": {"weights": [["a"] * 5] * 60}}, "'weights' has dtype"),
    ],
)
def test_bad_arrays_are_named(tmp_path: Path, change: dict, message: str) -> None:
    path = _write_small(tmp_path / "generic_model.pkl", **change)
    with pytest.raises(FlameFileError, match=message):
        load_head_model(HeadConfig(flame_path=str(path), teeth=False))


def test_teeth_need_flame_topology(tmp_path: Path) -> None:
    path = _write_small(tmp_path / "flame2023.pkl")
    with pytest.raises(FlameFileError, match="teeth extension needs FLAME's topology"):
        load_head_model(HeadConfig(flame_path=str(path)))
