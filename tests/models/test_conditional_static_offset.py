"""The first stage with a tracked subject's static offset: the condition's head-mesh tokens and nearest-face sampling
(``bind_nearest``) use the offset mesh (``HeadModel.forward/canonical(..., static_offset)``), ``AvatarModel.prepare``
passes its ``static_offset`` to both, and a zero offset gives exactly what no offset gives."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from avp.head import HeadConfig, load_head_model
from avp.models.avatar import AvatarModel
from avp.models.conditional import ConditionalPointGenerator
from avp.models.decoder import DecoderConfig, GaussianDecoder
from avp.models.encoders import ConditionConfig, ImageEncoderConfig, MeshEncoderConfig, condition_vertices
from avp.models.generator import GeneratorConfig
from avp.models.sampling import SamplingConfig
from avp.types import HeadParams

pytestmark = pytest.mark.usefixtures("one_thread")
B = 2
SAMPLING = SamplingConfig(max_points=12, min_points=12, bind_nearest=1)


def _generator(space: str = "canonical") -> ConditionalPointGenerator:
    torch.manual_seed(0)
    condition = ConditionConfig(image=ImageEncoderConfig(arch="tiny", image_size=32, freeze=False),
                                mesh=MeshEncoderConfig(n_points=32, n_layers=1, n_heads=4, space=space))
    return ConditionalPointGenerator(load_head_model(), condition=condition,
                                     model=GeneratorConfig(n_layers=1, width=32, n_heads=4)).eval()


@pytest.fixture(scope="module")
def generator() -> ConditionalPointGenerator:
    return _generator()


def _inputs(head, seed: int = 0) -> tuple[torch.Tensor, HeadParams, torch.Tensor]:
    """Portraits, their head fits (some expression and pose) and a ~3 cm offset (a shift plus per-vertex noise)."""
    g = torch.Generator().manual_seed(seed)
    params = HeadParams.zeros(B, n_shape=head.n_shape, n_expr=head.n_expr)
    params.shape = 0.5 * torch.randn(B, head.n_shape, generator=g)
    params.expr = 0.5 * torch.randn(B, head.n_expr, generator=g)
    params.jaw_pose = 0.1 * torch.randn(B, 3, generator=g)
    params.global_rot = 0.1 * torch.randn(B, 3, generator=g)
    shift = torch.tensor([[0.0, 0.02, 0.03], [0.025, -0.02, 0.0]])[:, None]
    offset = shift + 0.002 * torch.randn(B, head.n_vertices, 3, generator=g)
    return torch.rand(B, 3, 32, 32, generator=g), params, offset


@pytest.mark.parametrize("space", ["canonical", "portrait"])
def test_the_mesh_tokens_come_from_the_offset_mesh(space) -> None:
    net = _generator(space)
    head = net.head_model
    portrait, params, offset = _inputs(head)
    got = condition_vertices(head, params, space, offset)
    if space == "canonical":
        expected = head.canonical(params.shape, offset)
    else:
        expected = head(params, static_offset=offset).vertices
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(got, condition_vertices(head, params, space), atol=1e-3)
    with torch.no_grad():
        tokens = net.encode_condition(portrait, params, offset)
        mesh = net.condition.mesh(got, head.faces) + net.condition.type_embedding.weight[1]
        assert torch.equal(tokens[:, -mesh.shape[1]:], mesh)  # image tokens first, then the offset mesh's
        assert not torch.allclose(tokens, net.encode_condition(portrait, params), atol=1e-4)


def test_nearest_faces_are_those_of_the_offset_mesh(generator) -> None:
    head = generator.head_model
    portrait, params, offset = _inputs(head)
    centers = generator.face_centers(params.shape, offset)
    torch.testing.assert_close(centers, head.canonical(params.shape, offset)[:, head.faces].mean(-2), atol=0, rtol=0)
    with torch.no_grad():
        condition = generator.encode_condition(portrait, params, offset)
        out = generator.sample(condition, SAMPLING, torch.Generator().manual_seed(0), shape=params.shape,
                               static_offset=offset)
    assert bool(out.mask.all())
    dist = torch.cdist(out.points, centers)  # [B, N, F]
    bound = dist.gather(-1, out.binding[..., None])[..., 0]
    torch.testing.assert_close(bound, dist.min(-1).values, atol=1e-6, rtol=0)  # bound to a nearest face, every point
    bare = torch.cdist(out.points, generator.face_centers(params.shape))
    assert bool((bare.argmin(-1) != out.binding).any())  # (the bare mesh's nearest faces differ: the test can fail)


def test_a_zero_offset_gives_identical_tokens_and_condition(generator) -> None:
    head = generator.head_model
    portrait, params, _ = _inputs(head)
    zeros = torch.zeros(B, head.n_vertices, 3)
    with torch.no_grad():
        outputs = []
        for offset in (None, zeros):
            condition = generator.encode_condition(portrait, params, offset)
            out = generator.sample(condition, SAMPLING, torch.Generator().manual_seed(1), shape=params.shape,
                                   static_offset=offset)
            outputs.append((condition, out.tokens, out.hidden))
    for a, z in zip(*outputs):
        assert torch.equal(a, z)


def test_avatar_model_prepare_passes_its_static_offset(monkeypatch) -> None:
    net = _generator()
    head = net.head_model
    decoder = GaussianDecoder(DecoderConfig(width=32, n_layers=1, n_heads=4, feature_hidden=64, n_frequencies=4),
                              feature_dim=32, bounds=net.tokenizer.bounds, condition_dim=32)
    model = AvatarModel(net, decoder, HeadConfig(), sampling=SAMPLING, feature_window=256, template_points=16,
                        render_backend="torch").eval()
    portrait, params, offset = _inputs(head)
    seen = []
    sample = net.sample
    monkeypatch.setattr(net, "sample", lambda *a, **kw: seen.append(kw.get("static_offset")) or sample(*a, **kw))
    for points in ("generated", "template"):
        inputs = model.prepare(portrait, params, points=points, generator=torch.Generator().manual_seed(0),
                               static_offset=offset)
        assert torch.equal(inputs.condition, net.encode_condition(portrait, params, offset))
        assert torch.equal(inputs.rig.static_offset, offset)
    assert len(seen) == 1 and seen[0] is offset
    plain = model.prepare(portrait, params, points="template")
    assert not torch.allclose(plain.condition, inputs.condition, atol=1e-4)
    zero = model.prepare(portrait, dataclasses.replace(params), points="template",
                         static_offset=torch.zeros_like(offset))
    assert torch.equal(plain.condition, zero.condition) and torch.equal(plain.features, zero.features)
