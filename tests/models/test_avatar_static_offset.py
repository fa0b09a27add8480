"""``AvatarModel`` with a tracked subject's static offset: a batch's ``static_offset`` makes the template points, the
binding and the posing use the offset mesh (checked against ``HeadModel.forward(..., static_offset)``), survives
``avatar()`` and the avatar files, and a zero offset gives exactly what no offset gives."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from avp.head import (
    HeadConfig,
    closest_point_on_triangle,
    face_frames,
    load_head_model,
    local_to_world_points,
    world_to_local_points,
)
from avp.head.framing import view_cameras
from avp.models.avatar import AvatarModel
from avp.models.conditional import ConditionalPointGenerator
from avp.models.decoder import DecoderConfig, GaussianDecoder
from avp.models.encoders import ConditionConfig, ImageEncoderConfig, MeshEncoderConfig
from avp.models.generator import GeneratorConfig
from avp.models.sampling import SamplingConfig
from avp.types import AvatarBatch, Cameras, GaussianCloud, HeadParams

pytestmark = pytest.mark.usefixtures("one_thread")
B, T, N = 2, 2, 24


@pytest.fixture(scope="module")
def model() -> AvatarModel:
    torch.manual_seed(0)
    head = load_head_model()
    condition = ConditionConfig(image=ImageEncoderConfig(arch="tiny", image_size=64, freeze=False),
                                mesh=MeshEncoderConfig(n_points=32, n_layers=1, n_heads=4))
    generator = ConditionalPointGenerator(head, condition=condition, model=GeneratorConfig(n_layers=1, width=32,
                                                                                          n_heads=4))
    decoder = GaussianDecoder(DecoderConfig(width=32, n_layers=1, n_heads=4, feature_hidden=64, n_frequencies=4),
                              feature_dim=32, bounds=generator.tokenizer.bounds, condition_dim=32)
    return AvatarModel(generator, decoder, HeadConfig(), sampling=SamplingConfig(max_points=40), feature_window=256,
                       template_points=64, render_backend="torch").eval()


def _offset(head, seed: int = 1) -> torch.Tensor:
    """``[B, V, 3]``: a shift (moves the joints regressed from the mesh) plus per-vertex noise, ~1 cm."""
    g = torch.Generator().manual_seed(seed)
    shift = torch.tensor([[0.0, 0.006, 0.01], [0.008, -0.004, 0.0]])[:, None]
    return shift + 0.002 * torch.randn(B, head.n_vertices, 3, generator=g)


def _batch(head, static_offset: torch.Tensor | None, seed: int = 0) -> AvatarBatch:
    """Teacher points on the subjects' neutral heads *with* their offsets (where a converted shard's teacher lives)."""
    g = torch.Generator().manual_seed(seed)
    shape = 0.5 * torch.randn(B, head.n_shape, generator=g)
    verts = head.canonical(shape, static_offset)
    faces = torch.randint(0, head.n_faces, (B, N), generator=g)
    bary = torch.rand(B, N, 3, generator=g) + 0.2
    bary = bary / bary.sum(-1, keepdim=True)
    means = (bary[..., None] * verts[torch.arange(B)[:, None, None], head.faces[faces]]).sum(-2)
    frames = HeadParams.zeros(B, T, n_shape=head.n_shape, n_expr=head.n_expr)
    frames.shape = shape
    for name, scale in (("expr", 0.5), ("global_rot", 0.2), ("neck_pose", 0.15), ("jaw_pose", 0.15)):
        setattr(frames, name, scale * torch.randn(getattr(frames, name).shape, generator=g))
    portrait_head = HeadParams.zeros(B, n_shape=head.n_shape, n_expr=head.n_expr)
    portrait_head.shape = shape
    quats = torch.zeros(B, N, 4)
    quats[..., 0] = 1
    teacher = GaussianCloud(means=means, quats=quats, scales=torch.full((B, N, 3), 0.003),
                            opacities=torch.ones(B, N), sh=torch.zeros(B, N, 1, 3))
    return AvatarBatch(
        subject=["a", "b"], portrait=torch.rand(B, 3, 64, 64, generator=g), portrait_head=portrait_head,
        teacher=teacher, binding=faces, images=torch.zeros(B, T, 0, 3, 8, 8),
        cameras=Cameras(Ks=torch.eye(3).expand(B, 0, 3, 3), viewmats=torch.eye(4).expand(B, 0, 4, 4), width=8,
                        height=8),
        head=frames, static_offset=static_offset)


def test_the_batchs_static_offset_poses_the_points_on_the_offset_mesh(model) -> None:
    head = model.head_model
    offset = _offset(head)
    batch = _batch(head, offset)
    inputs = model.prepare_batch(batch, "teacher")
    rig = inputs.rig
    assert torch.equal(rig.static_offset, offset)
    params = batch.head
    per_frame = dataclasses.replace(params, shape=params.shape[:, None].expand(B, T, -1))
    posed = head(per_frame, static_offset=offset[:, None]).vertices  # [B, T, V, 3]: the tracked mesh, posed
    canonical = head.canonical(batch.head.shape, offset)  # [B, V, 3]
    mask = inputs.mask

    # face frames (GaussianAvatars): each point keeps its coordinates in its triangle's frame of the offset mesh
    local = world_to_local_points(inputs.points, face_frames(canonical, head.faces).gather(inputs.binding))
    expected = local_to_world_points(local[:, None], face_frames(posed, head.faces).gather(inputs.binding[:, None]))
    got = rig.deform(params, mode="face_frame").means
    torch.testing.assert_close(got[mask[:, None].expand(B, T, -1)], expected[mask[:, None].expand(B, T, -1)],
                               atol=2e-5, rtol=0)

    # LBS: a point on the surface moves with the posed offset mesh (the blend of its triangle's corners)
    b = torch.arange(B)[:, None]
    corners = head.faces[inputs.binding]  # [B, N, 3]
    tri0 = canonical[b[..., None], corners]  # [B, N, 3, 3]
    bary = closest_point_on_triangle(inputs.points, tri0)  # [B, N, 3]
    off_surface = inputs.points - (bary[..., None] * tri0).sum(-2)
    assert float(off_surface[mask].norm(dim=-1).max()) < 2e-3  # the points are the teacher's, dequantised
    tri_t = posed[b[:, :, None, None], torch.arange(T)[None, :, None, None], corners[:, None]]  # [B, T, N, 3, 3]
    on_posed = (bary[:, None, ..., None] * tri_t).sum(-2)
    lbs = rig.deform(params).means
    err = (lbs - on_posed).norm(dim=-1)[mask[:, None].expand(B, T, -1)]
    without = model.head_model.rig(inputs.binding, inputs.points, batch.head.shape).deform(params).means
    err_without = (without - on_posed).norm(dim=-1)[mask[:, None].expand(B, T, -1)]
    # (LBS blends the corners' transforms, not their posed positions: ~0.1 mm apart here; the bare mesh's rig ~3 mm)
    assert float(err.max()) < 1e-3 and float(err.mean()) < 0.1 * float(err_without.mean()), (err, err_without)


def test_template_points_sit_on_the_offset_mesh(model) -> None:
    head = model.head_model
    offset = _offset(head)
    shape = 0.5 * torch.randn(B, head.n_shape)
    with_offset, binding = model.template_cloud(shape, offset)
    plain, _ = model.template_cloud(shape)
    corners = head.faces[model.template_face_idx]  # [M, 3]
    moved = (model.template_bary[None, :, :, None] * offset[:, corners]).sum(-2)
    torch.testing.assert_close(with_offset - plain, moved, atol=1e-6, rtol=0)
    inputs = model.prepare(_batch(head, offset).portrait, _batch(head, offset).portrait_head, points="template",
                           shape=shape, static_offset=offset)
    assert torch.equal(inputs.rig.static_offset, offset)


def test_avatars_keep_the_offset_through_rebinding_and_files(model, tmp_path) -> None:
    from avp.export.avatar import load_avatar, save_avatar

    head = model.head_model
    offset = _offset(head)
    batch = _batch(head, offset)
    inputs = model.prepare_batch(batch, "teacher")
    decoded = model.decode(inputs)
    params = batch.head.map(lambda t: t[1])  # subject 1's frames [T] (shape [S])
    avatar = model.avatar(inputs, decoded, 1, portrait_head=batch.portrait_head.map(lambda t: t[1:]))
    assert torch.equal(avatar.static_offset, offset[1])
    n = int(inputs.n_points[1])
    expected = model.head_model.rig(inputs.binding[1:, :n], inputs.points[1:, :n], batch.head.shape[1:],
                                    offset[1:]).deform(params.map(lambda t: t[None]), avatar.cloud.means).means[0]
    torch.testing.assert_close(avatar.animate(params).means, expected, atol=1e-6, rtol=0)
    loaded = load_avatar(save_avatar(avatar, tmp_path / "avatar"))
    assert torch.equal(loaded.static_offset, offset[1])
    torch.testing.assert_close(loaded.animate(params).means, avatar.animate(params).means, atol=1e-6, rtol=0)


@pytest.mark.parametrize("points", ["teacher", "template"])
def test_a_zero_offset_is_bit_identical_to_none(model, points) -> None:
    head = model.head_model
    batch = _batch(head, None)
    zeros = dataclasses.replace(batch, static_offset=torch.zeros(B, head.n_vertices, 3))
    cameras = view_cameras([0.0, 30.0], size=16)
    outputs = []
    for b in (batch, zeros):
        inputs = model.prepare_batch(b, points)
        decoded = model.decode(inputs)
        rgb = model.render_batch(decoded.cloud, inputs.rig, b.head, cameras, torch.ones(3))
        avatar = model.avatar(inputs, decoded, 1)
        posed = avatar.animate(b.head.map(lambda t: t[1]))
        outputs.append((inputs.points, decoded.cloud.means, rgb, inputs.rig.deform(b.head, mode="face_frame").means,
                        posed.means, posed.quats))
    assert outputs[0][2].abs().sum() > 0
    for a, z in zip(*outputs):
        assert torch.equal(a, z)
