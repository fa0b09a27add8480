"""Gaussian ply files: GaussianAvatars' point_cloud.ply layout, the INRIA 3DGS world-space layout, flame_param.npz."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData

from avp.export.ply import (
    PlyError,
    PlySplats,
    cloud_from_splats,
    from_gaussian_avatars,
    gaussian_avatars_fields,
    read_flame_param_npz,
    read_gaussian_avatars_ply,
    read_splat_ply,
    splat_fields,
    splats_from_cloud,
    to_gaussian_avatars,
    write_flame_param_npz,
    write_gaussian_avatars_ply,
    write_splat_ply,
)
from avp.head import load_head_model
from avp.types import GaussianCloud, HeadParams
from tests.fixtures.face_frames import face_frames, quat_matrix
from tests.fixtures.gaussian_avatars import write_point_cloud_ply

# GaussianAvatars' GaussianModel.construct_list_of_attributes for SH degree 1, spelled out
GA_DEGREE_1 = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "f_rest_0", "f_rest_1", "f_rest_2",
               "f_rest_3", "f_rest_4", "f_rest_5", "f_rest_6", "f_rest_7", "f_rest_8", "opacity", "scale_0",
               "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3", "binding_0"]


@pytest.fixture(scope="module")
def head():
    return load_head_model()


def random_splats(n: int, degree: int, n_faces: int, seed: int = 0) -> PlySplats:
    g = np.random.default_rng(seed)
    k = (degree + 1) ** 2
    f = lambda *s: g.normal(size=s).astype(np.float32)
    return PlySplats(xyz=f(n, 3), f_dc=f(n, 3), f_rest=f(n, 3 * (k - 1)), opacity=f(n), scale=f(n, 3) - 5,
                     rot=f(n, 4), binding=g.integers(0, n_faces, n))


def random_cloud(head, n: int, degree: int, seed: int = 0,
                 static_offset: torch.Tensor | None = None) -> tuple[GaussianCloud, torch.Tensor, torch.Tensor]:
    """Canonical splats near the surface of a random subject's neutral head (plus ``static_offset [V, 3]``), with
    their faces."""
    g = torch.Generator().manual_seed(seed)
    shape = torch.randn(head.n_shape, generator=g)
    verts = head.canonical(shape[None], None if static_offset is None else static_offset[None])[0]
    faces = torch.randint(0, head.n_faces, (n,), generator=g)
    bary = torch.rand(n, 3, generator=g)
    bary = bary / bary.sum(-1, keepdim=True)
    means = (bary[..., None] * verts[head.faces[faces]]).sum(-2) + 0.002 * torch.randn(n, 3, generator=g)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    cloud = GaussianCloud(means=means, quats=quats, scales=torch.rand(n, 3, generator=g) * 0.01 + 1e-4,
                          opacities=torch.rand(n, generator=g) * 0.98 + 0.01,
                          sh=torch.randn(n, (degree + 1) ** 2, 3, generator=g))
    return cloud.map(lambda t: t[None]), faces, shape


def header(path) -> list[tuple[str, str]]:
    return [(p.name, p.val_dtype) for p in PlyData.read(str(path))["vertex"].properties]


def test_field_names_and_order_match_gaussian_avatars(tmp_path, head):
    assert gaussian_avatars_fields(1) == GA_DEGREE_1
    assert gaussian_avatars_fields(0) == [n for n in GA_DEGREE_1 if not n.startswith("f_rest")]
    assert len([n for n in gaussian_avatars_fields(3) if n.startswith("f_rest")]) == 45
    padded = write_gaussian_avatars_ply(tmp_path / "padded.ply", random_splats(7, 1, head.n_faces))
    # GaussianAvatars' loader asserts 45 f_rest (its models are degree 3): padded with zeros by default
    assert [n for n, _ in header(padded)] == gaussian_avatars_fields(3)
    again = read_gaussian_avatars_ply(padded)
    assert again.sh_degree == 3 and np.all(again.f_rest.reshape(7, 3, 15)[:, :, 3:] == 0)
    np.testing.assert_array_equal(again.f_rest.reshape(7, 3, 15)[:, :, :3],
                                  random_splats(7, 1, head.n_faces).f_rest.reshape(7, 3, 3))
    ours = write_gaussian_avatars_ply(tmp_path / "ours.ply", random_splats(7, 1, head.n_faces), sh_degree=None)
    assert [n for n, _ in header(ours)] == GA_DEGREE_1
    assert {t for _, t in header(ours)} == {"f4"}  # every property float, binding included
    # the same header as the independent writer of GaussianAvatars' format in tests/fixtures
    s = random_splats(7, 1, head.n_faces)
    theirs = write_point_cloud_ply(tmp_path / "theirs.ply", xyz=s.xyz, f_dc=s.f_dc, f_rest=s.f_rest,
                                   opacity=s.opacity, scale=s.scale, rot=s.rot, binding=s.binding)
    assert header(ours) == header(theirs)
    # ...and the same values: our reader on their file reproduces every array
    back = read_gaussian_avatars_ply(theirs)
    for name in ("xyz", "f_dc", "f_rest", "opacity", "scale", "rot", "binding"):
        np.testing.assert_array_equal(getattr(back, name), getattr(s, name))
    # and the dataset converter's independent reader of GaussianAvatars files reads ours
    from avp.data.convert_gaussian_avatars import read_point_cloud_ply

    fit = read_point_cloud_ply(ours)
    mine = read_gaussian_avatars_ply(ours)
    np.testing.assert_array_equal(fit.binding, mine.binding)
    np.testing.assert_allclose(fit.sh[:, 1:, :].transpose(0, 2, 1).reshape(7, -1), mine.f_rest)


def test_world_ply_is_inria_layout(tmp_path, head):
    cloud, _, _ = random_cloud(head, 9, 0)
    path = write_splat_ply(tmp_path / "world.ply", cloud)
    names = [n for n, _ in header(path)]
    assert names == splat_fields(3) and "binding_0" not in names  # degree 0 padded to INRIA's degree 3
    back = read_splat_ply(path)
    assert back.binding is None and back.sh_degree == 3
    np.testing.assert_array_equal(back.f_rest, 0)
    kept = write_splat_ply(tmp_path / "kept.ply", cloud, sh_degree=None)
    assert [n for n, _ in header(kept)] == splat_fields(0)


def test_plyfile_round_trip_reproduces_every_value(tmp_path, head):
    s = random_splats(50, 2, head.n_faces, seed=3)
    path = write_gaussian_avatars_ply(tmp_path / "point_cloud.ply", s, sh_degree=None)
    vertex = PlyData.read(str(path))["vertex"]
    table = np.stack([np.asarray(vertex[n]) for n in gaussian_avatars_fields(2)], 1)
    np.testing.assert_array_equal(table, s.columns())  # bit-exact float32 columns, normals zero
    np.testing.assert_array_equal(table[:, 3:6], 0)
    back = read_gaussian_avatars_ply(path)
    for name in ("xyz", "f_dc", "f_rest", "opacity", "scale", "rot", "binding"):
        np.testing.assert_array_equal(getattr(back, name), getattr(s, name))


def test_cloud_conversion_round_trip(head):
    cloud, _, _ = random_cloud(head, 30, 1)
    back = cloud_from_splats(splats_from_cloud(cloud))
    for name in ("means", "quats", "scales", "opacities", "sh"):
        torch.testing.assert_close(getattr(back, name), getattr(cloud, name), atol=2e-6, rtol=1e-5)
    # colour layout: f_rest is channel-major (coefficient k of channel c at c * (K - 1) + k - 1)
    s = splats_from_cloud(cloud)
    assert s.f_rest[0, 1 * 3 + 2] == pytest.approx(float(cloud.sh[0, 0, 3, 1]))
    assert s.f_dc[0, 2] == pytest.approx(float(cloud.sh[0, 0, 0, 2]))


def test_opacity_one_and_padding(head):
    cloud, _, _ = random_cloud(head, 4, 0)
    cloud.opacities[0, 0] = 1.0
    cloud.mask = torch.tensor([[True, True, False, True]])
    s = splats_from_cloud(cloud)
    assert s.n_points == 3 and np.isfinite(s.opacity).all()


def test_gaussian_avatars_local_round_trip(tmp_path, head):
    cloud, faces, shape = random_cloud(head, 40, 1, seed=5)
    splats = to_gaussian_avatars(cloud, faces, head, shape)
    path = write_gaussian_avatars_ply(tmp_path / "point_cloud.ply", splats, sh_degree=None)
    back, binding = from_gaussian_avatars(read_gaussian_avatars_ply(path), head, shape)
    assert torch.equal(binding[0], faces)
    torch.testing.assert_close(back.means, cloud.means, atol=1e-6, rtol=0)
    torch.testing.assert_close(back.scales, cloud.scales, atol=1e-8, rtol=1e-5)
    dot = (back.quats * cloud.quats).sum(-1).abs()  # q and -q are the same rotation
    torch.testing.assert_close(dot, torch.ones_like(dot), atol=1e-5, rtol=0)
    # face-local positions really are local: small next to the head, of the order of a triangle
    assert np.abs(splats.xyz).max() < 20 and np.abs(splats.xyz).max() > 0.01


def _ga_world(verts: np.ndarray, faces: np.ndarray, splats: PlySplats) -> tuple[np.ndarray, ...]:
    """GaussianAvatars' world-space splats on the mesh ``verts`` (tests/fixtures/face_frames.py):
    ``(means, scales, rotation matrices)``."""
    R, s, centre = face_frames(verts, faces, splats.binding)
    means = np.einsum("nij,nj->ni", R, splats.xyz) * s[:, None] + centre
    return means, np.exp(splats.scale) * s[:, None], R @ quat_matrix(splats.rot)


def test_a_tracked_subjects_export_carries_its_static_offset(tmp_path, head):
    g = torch.Generator().manual_seed(7)
    offset = torch.tensor([0.01, 0.02, 0.03]) + 0.003 * torch.randn(head.n_vertices, 3, generator=g)  # [V, 3]
    cloud, faces, shape = random_cloud(head, 40, 1, seed=6, static_offset=offset)
    splats = to_gaussian_avatars(cloud, faces, head, shape, static_offset=offset)
    ply = write_gaussian_avatars_ply(tmp_path / "point_cloud.ply", splats)
    params = HeadParams.zeros(3, n_shape=head.n_shape, n_expr=head.n_expr)
    params.shape[:] = shape
    npz = write_flame_param_npz(tmp_path / "flame_param.npz", params, head.n_vertices, static_offset=offset)
    arrays = read_flame_param_npz(npz)
    assert arrays["static_offset"].shape == (1, head.n_vertices, 3) and arrays["static_offset"].dtype == np.float32
    np.testing.assert_array_equal(arrays["static_offset"][0], offset.numpy())

    # GaussianAvatars' own formulas on its mesh (the neutral head of the npz's shape plus its static offset) give
    # back our canonical splats
    read = read_gaussian_avatars_ply(ply)
    mesh = head.canonical(torch.from_numpy(arrays["shape"]).double()[None])[0].numpy() + arrays["static_offset"][0]
    means, scales, rotations = _ga_world(mesh, head.faces.numpy(), read)
    np.testing.assert_allclose(means, cloud.means[0].double().numpy(), atol=2e-6, rtol=0)
    np.testing.assert_allclose(scales, cloud.scales[0].double().numpy(), atol=1e-8, rtol=1e-5)
    np.testing.assert_allclose(rotations, quat_matrix(cloud.quats[0].double().numpy()), atol=1e-5, rtol=0)
    # without the offset GaussianAvatars would put them ~3.7 cm away: the npz and the ply belong together
    bare, _, _ = _ga_world(mesh - arrays["static_offset"][0], head.faces.numpy(), read)
    assert np.linalg.norm(bare - cloud.means[0].numpy(), axis=-1).min() > 0.02

    # and read back with the npz's offset
    back, binding = from_gaussian_avatars(read, head, shape, static_offset=arrays["static_offset"])
    assert torch.equal(binding[0], faces)
    torch.testing.assert_close(back.means, cloud.means, atol=2e-6, rtol=0)
    torch.testing.assert_close(back.scales, cloud.scales, atol=1e-8, rtol=1e-5)
    with pytest.raises(ValueError, match=r"static_offset must be \[V, 3\] or \[1, V, 3\]"):
        to_gaussian_avatars(cloud, faces, head, shape, static_offset=offset[:-1])


def test_flame_param_npz(tmp_path, head):
    T = 5
    params = HeadParams.zeros(T, n_shape=head.n_shape, n_expr=head.n_expr)
    params.jaw_pose[:, 0] = torch.linspace(0, 0.3, T)
    path = write_flame_param_npz(tmp_path / "flame_param.npz", params, head.n_vertices)
    arrays = read_flame_param_npz(path)
    assert {k: v.shape for k, v in arrays.items()} == {
        "shape": (head.n_shape,), "expr": (T, head.n_expr), "rotation": (T, 3), "neck_pose": (T, 3),
        "jaw_pose": (T, 3), "eyes_pose": (T, 6), "translation": (T, 3), "static_offset": (1, head.n_vertices, 3),
        "dynamic_offset": (T, head.n_vertices, 3)}
    assert all(v.dtype == np.float32 for v in arrays.values())  # GaussianAvatars' motion loader keeps float32 only
    np.testing.assert_allclose(arrays["jaw_pose"][:, 0], np.linspace(0, 0.3, T), rtol=1e-6)


def test_bad_files_are_named(tmp_path, head):
    s = random_splats(3, 0, head.n_faces)
    path = write_splat_ply(tmp_path / "world.ply", s, sh_degree=None)
    with pytest.raises(PlyError, match=r"world\.ply: missing property 'binding_0'"):
        read_gaussian_avatars_ply(path)
    with pytest.raises(PlyError, match="binding_0 reaches face"):
        bad = random_splats(3, 0, head.n_faces)
        bad.binding[0] = head.n_faces + 5
        from_gaussian_avatars(bad, head, torch.zeros(head.n_shape))
    (tmp_path / "junk.ply").write_bytes(b"not a ply")
    with pytest.raises(PlyError, match=r"junk\.ply: cannot read"):
        read_splat_ply(tmp_path / "junk.ply")
    with pytest.raises(FileNotFoundError, match="missing.ply"):
        read_splat_ply(tmp_path / "missing.ply")
