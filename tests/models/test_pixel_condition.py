"""Pixel-aligned mesh tokens (``mesh.pixel_lifts``): the portrait is read where each token's point, posed as in the
portrait and lifted along its normal, projects; off (the default) the condition does not depend on the camera."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from avp.head import load_head_model
from avp.models.conditional import ConditionalPointGenerator
from avp.models.encoders import (
    ConditionConfig,
    ImageEncoderConfig,
    MeshEncoderConfig,
    MeshPointEncoder,
    PortraitView,
    surface_points,
    surface_samples,
)
from avp.models.generator import GeneratorConfig
from avp.models.pixel_aligned import project_points
from avp.types import Cameras, HeadParams

pytestmark = pytest.mark.usefixtures("one_thread")
BOUNDS = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
SIZE = 64


def _camera(B: int, distance: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A camera on the +z axis looking down -z at the origin (OpenCV: y down): ``Ks [B, 3, 3]``, ``viewmats``."""
    K = torch.tensor([[SIZE * 1.2, 0.0, SIZE / 2], [0.0, SIZE * 1.2, SIZE / 2], [0.0, 0.0, 1.0]])
    view = torch.eye(4)
    view[:3, :3] = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    view[2, 3] = distance
    return K.expand(B, 3, 3).clone(), view.expand(B, 4, 4).clone()


def _sphere(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """A unit-radius UV sphere (closed, outward-facing triangles): ``vertices [V, 3]``, ``faces [F, 3]``."""
    rings, segs = n, 2 * n
    theta = torch.linspace(0, torch.pi, rings + 1)[1:-1]
    phi = torch.arange(segs) * 2 * torch.pi / segs
    ring = torch.stack([torch.sin(theta)[:, None] * torch.cos(phi), torch.cos(theta)[:, None].expand(-1, segs),
                        torch.sin(theta)[:, None] * torch.sin(phi)], dim=-1).reshape(-1, 3)
    vertices = torch.cat([torch.tensor([[0.0, 1.0, 0.0]]), ring, torch.tensor([[0.0, -1.0, 0.0]])])
    last = len(vertices) - 1
    faces = [(0, 1 + (j + 1) % segs, 1 + j) for j in range(segs)]
    for i in range(rings - 2):
        for j in range(segs):
            a, b = 1 + i * segs + j, 1 + i * segs + (j + 1) % segs
            faces += [(a, b, b + segs), (a, b + segs, a + segs)]
    faces += [(last, 1 + (rings - 2) * segs + j, 1 + (rings - 2) * segs + (j + 1) % segs) for j in range(segs)]
    return vertices * 0.5, torch.tensor(faces)


def test_the_lifted_points_read_the_portrait_where_they_project() -> None:
    """A portrait whose red channel is the column (a linear ramp, which bilinear sampling reproduces) and whose green
    channel is the row: the sharp level of each lift's colours is exactly its point's projection, lifted along the
    outward normal."""
    vertices, faces = _sphere()
    lifts = (0.0, 0.1)
    enc = MeshPointEncoder(MeshEncoderConfig(n_points=40, n_layers=1, n_heads=4, pixel_lifts=lifts, pixel_levels=2),
                           out_dim=32, bounds=BOUNDS).eval()
    u = (torch.arange(SIZE) + 0.5) / SIZE
    portrait = torch.stack([u[None].expand(SIZE, -1), u[:, None].expand(-1, SIZE), torch.zeros(SIZE, SIZE)])[None]
    Ks, viewmats = _camera(1)
    posed = vertices[None] + torch.tensor([0.1, -0.05, 0.0])  # the portrait's pose differs from the token mesh's
    face, weights = surface_samples(vertices[None], faces, 40, torch.Generator().manual_seed(0))
    features = enc._pixel(PortraitView(portrait, posed, Ks, viewmats), faces, face, weights)  # [1, 40, 2 * 8]
    assert features.shape == (1, 40, 2 * (3 * 2 + 2))
    points, normals = surface_points(posed, faces, face, weights)
    assert ((points - posed.mean(1, keepdim=True)) * normals).sum(-1).gt(0).all()  # outward normals
    for i, lift in enumerate(lifts):
        uv, _ = project_points(points + lift * normals, Ks, viewmats)
        block = features[0, :, i * 8 : (i + 1) * 8]
        assert torch.allclose(block[:, 0], uv[0, :, 0] / SIZE, atol=1e-5)
        assert torch.allclose(block[:, 1], uv[0, :, 1] / SIZE, atol=1e-5)
        assert torch.equal(block[:, 6], torch.ones(40))  # inside the image
    # lifted points project further from the sphere's centre in the image than the surface points they come from
    centre = project_points(posed.mean(1, keepdim=True), Ks, viewmats)[0][0, 0] / SIZE
    r0 = (features[0, :, 0:2] - centre).norm(dim=-1)
    r1 = (features[0, :, 8:10] - centre).norm(dim=-1)
    facing = normals[0, :, 2] > 0.3  # facing the camera: the lift moves their projection outwards or not at all
    assert (r1[facing] >= r0[facing] - 1e-6).all() and (r1 > r0 + 1e-3).any()


def _generator(lifts: tuple[float, ...]) -> ConditionalPointGenerator:
    torch.manual_seed(0)
    condition = ConditionConfig(image=ImageEncoderConfig(arch="tiny", image_size=32, freeze=False),
                                mesh=MeshEncoderConfig(n_points=16, n_layers=1, n_heads=4, pixel_lifts=lifts))
    return ConditionalPointGenerator(load_head_model(), condition=condition,
                                     model=GeneratorConfig(n_layers=1, width=32, n_heads=4)).eval()


def _portrait_inputs(B: int = 2) -> tuple[torch.Tensor, HeadParams, Cameras]:
    g = torch.Generator().manual_seed(1)
    portrait = torch.rand(B, 3, SIZE, SIZE, generator=g)
    head = HeadParams.zeros(B, n_shape=load_head_model().n_shape, n_expr=load_head_model().n_expr)
    Ks, viewmats = _camera(B, distance=0.6)
    return portrait, head, Cameras(Ks=Ks[:, None], viewmats=viewmats[:, None], width=SIZE, height=SIZE)


def test_pixel_aligned_mesh_tokens_change_only_with_the_portrait_and_its_camera() -> None:
    portrait, head, camera = _portrait_inputs()
    other = torch.flip(portrait, dims=[-1])
    moved = dataclasses.replace(camera, Ks=camera.Ks + torch.tensor([[4.0, 0, 0], [0, 0, 0], [0, 0, 0]]))
    n_img = _generator(()).condition.image.n_tokens
    with torch.no_grad():
        paper = _generator(())  # the paper's condition: the camera is not an input
        assert torch.equal(paper.encode_condition(portrait, head, portrait_camera=camera),
                           paper.encode_condition(portrait, head))
        pix = _generator((0.0, 0.02))
        a = pix.encode_condition(portrait, head, portrait_camera=camera)
        b = pix.encode_condition(other, head, portrait_camera=camera)
        c = pix.encode_condition(portrait, head, portrait_camera=moved)
        assert torch.equal(a, pix.encode_condition(portrait, head, portrait_camera=camera))  # eval: deterministic
    # the image tokens see the flipped portrait either way; the mesh tokens see it only through their pixels
    assert not torch.allclose(a[:, n_img:], b[:, n_img:])
    assert torch.equal(a[:, :n_img], c[:, :n_img]) and not torch.allclose(a[:, n_img:], c[:, n_img:])
    # each subject's tokens read its own portrait only
    one = portrait.clone()
    one[1] = other[1]
    with torch.no_grad():
        d = pix.encode_condition(one, head, portrait_camera=camera)
    assert torch.equal(d[0], a[0]) and not torch.allclose(d[1, n_img:], a[1, n_img:])


def test_pixel_aligned_tokens_without_a_camera_say_what_is_missing() -> None:
    portrait, head, _ = _portrait_inputs()
    with pytest.raises(ValueError, match="pixel_lifts needs the portrait's camera"):
        _generator((0.0,)).encode_condition(portrait, head)
    with pytest.raises(ValueError, match="pixel_levels must be >= 1"):
        MeshEncoderConfig(pixel_lifts=(0.0,), pixel_levels=0)
