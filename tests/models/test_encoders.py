"""Condition encoders: DINOv2 weight files in three formats, freezing, surface sampling, token layout."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from avp.models.encoders import (
    DINOV2_ARCHS,
    ConditionConfig,
    ConditionEncoder,
    ImageEncoder,
    ImageEncoderConfig,
    MeshEncoderConfig,
    MeshPointEncoder,
    condition_vertices,
    sample_surface,
)
from avp.models.layers import fourier_features
from avp.types import HeadParams

BOUNDS = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def cube() -> tuple[torch.Tensor, torch.Tensor]:
    """The [-1, 1]^3 cube as 12 outward-facing triangles."""
    v = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)])
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = torch.tensor([f for a, b, c, d in quads for f in ((a, b, c), (a, c, d))])
    return v, faces


def timm_to_hub(state: dict[str, torch.Tensor], registers: bool) -> dict[str, torch.Tensor]:
    """timm DINOv2 keys -> the original torch-hub layout (mask token; with registers, cls inside pos_embed)."""
    out = dict(state)
    width = state["cls_token"].shape[-1]
    out["mask_token"] = torch.zeros(1, width)
    if registers:
        out["register_tokens"] = out.pop("reg_token")
        out["pos_embed"] = torch.cat([torch.zeros(1, 1, width), state["pos_embed"]], dim=1)
    return out


def hub_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torch-hub DINOv2 keys -> Hugging Face ``Dinov2Model`` keys (query/key/value split apart)."""
    out = {}
    names = {"cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token",
             "pos_embed": "embeddings.position_embeddings", "register_tokens": "embeddings.register_tokens",
             "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
             "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
             "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
    for key, value in state.items():
        if key in names:
            out[names[key]] = value
            continue
        _, i, rest = key.split(".", 2)
        base = f"encoder.layer.{i}."
        if rest.startswith("attn.qkv."):
            for part, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[base + f"attention.attention.{part}.{rest.rsplit('.', 1)[1]}"] = chunk
        elif rest.startswith("attn.proj."):
            out[base + "attention.output.dense." + rest.rsplit(".", 1)[1]] = value
        elif rest.startswith("ls"):
            out[base + f"layer_scale{rest[2]}.lambda1"] = value
        else:
            out[base + rest] = value
    return {"dinov2." + k: v for k, v in out.items()}


@pytest.mark.parametrize("fmt", ["timm", "hub", "hf"])
@pytest.mark.parametrize("registers", [False, True])
def test_pretrained_files_in_every_format_reproduce_the_source_model(tmp_path, fmt: str, registers: bool) -> None:
    g = torch.Generator().manual_seed(0)
    config = ImageEncoderConfig(arch="tiny", image_size=112, registers=registers)
    source = ImageEncoder(config, out_dim=16)
    state = source.backbone.state_dict()
    if fmt != "timm":
        state = timm_to_hub(state, registers)
    if fmt == "hf":
        state = hub_to_hf(state)
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "weights.pth"
        torch.save({"model": state} if fmt == "timm" else state, path)
    loaded = ImageEncoder(ImageEncoderConfig(arch="tiny", image_size=112, registers=registers,
                                             pretrained_path=str(path)), out_dim=16)
    image = torch.rand(2, 3, 112, 112, generator=g)
    with torch.no_grad():
        a = source.backbone.forward_features((image - source.mean) / source.std)
        b = loaded.backbone.forward_features((image - loaded.mean) / loaded.std)
    assert torch.allclose(a, b, atol=1e-5)


def test_position_embeddings_are_resampled_to_the_configured_size(tmp_path) -> None:
    big = ImageEncoder(ImageEncoderConfig(arch="tiny", image_size=224), out_dim=8)
    path = tmp_path / "hub.pth"
    torch.save(timm_to_hub(big.backbone.state_dict(), registers=False), path)
    small = ImageEncoder(ImageEncoderConfig(arch="tiny", image_size=112, pretrained_path=str(path)), out_dim=8)
    assert small.backbone.pos_embed.shape[1] == 1 + 7 * 7
    assert torch.equal(small.backbone.blocks[0].attn.qkv.weight, big.backbone.blocks[0].attn.qkv.weight)


def test_mismatched_or_missing_weights_name_the_file_and_keys(tmp_path) -> None:
    other = ImageEncoder(ImageEncoderConfig(arch="tiny", image_size=112, tiny_depth=3, tiny_width=48,
                                            tiny_heads=2), out_dim=8)
    path = tmp_path / "wrong.pth"
    torch.save(other.backbone.state_dict(), path)
    with pytest.raises(ValueError, match=r"wrong\.pth do not match.*unexpected keys: blocks\.2\..*shape mismatches"):
        ImageEncoder(ImageEncoderConfig(arch="tiny", image_size=112, pretrained_path=str(path)), out_dim=8)
    with pytest.raises(FileNotFoundError, match="nowhere.pth does not exist"):
        ImageEncoder(ImageEncoderConfig(arch="tiny", pretrained_path=str(tmp_path / "nowhere.pth")), out_dim=8)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read .*junk.pth"):
        ImageEncoder(ImageEncoderConfig(arch="tiny", pretrained_path=str(tmp_path / "junk.pth")), out_dim=8)


def test_dinov2_architectures_exist_in_timm_and_build() -> None:
    for pair in DINOV2_ARCHS.values():
        assert all(timm.is_model(name) for name in pair)
    enc = ImageEncoder(ImageEncoderConfig(arch="dinov2_vits14", registers=True, image_size=112), out_dim=8)
    assert enc.embed_dim == 384 and enc.n_tokens == 1 + 4 + 8 * 8
    with pytest.raises(ValueError, match="multiple of DINOv2's patch size 14"):
        ImageEncoder(ImageEncoderConfig(arch="dinov2_vits14", image_size=100), out_dim=8)
    with pytest.raises(ValueError, match="arch must be one of"):
        ImageEncoder(ImageEncoderConfig(arch="resnet50"), out_dim=8)


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_backbone_gets_no_gradients_and_stays_in_eval_mode(freeze: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    enc = ImageEncoder(ImageEncoderConfig(arch="tiny", image_size=64, freeze=freeze), out_dim=8).train()
    assert enc.backbone.training is not freeze
    enc(torch.rand(2, 3, 80, 60, generator=gen)).sum().backward()
    backbone_grads = [p.grad for p in enc.backbone.parameters()]
    assert all(g is None for g in backbone_grads) is freeze
    assert enc.proj.weight.grad is not None


def test_surface_samples_lie_on_the_mesh_and_follow_area() -> None:
    v, f = cube()
    points, normals = sample_surface(v[None], f, 4000, torch.Generator().manual_seed(0))
    assert torch.allclose(points.abs().max(-1).values, torch.ones(1, 4000), atol=1e-6)  # on the cube's surface
    on_face = points.abs().argmax(-1)  # the axis of the face a point lies on
    assert torch.allclose((normals.abs().argmax(-1) == on_face).float().mean(), torch.tensor(1.0))
    assert ((points * normals).sum(-1) > 0).all()  # outward normals
    # stretch the cube along x: the two x faces keep their area, the other four double theirs
    stretched = v * torch.tensor([2.0, 1.0, 1.0])
    points, _ = sample_surface(stretched[None], f, 20000, torch.Generator().manual_seed(1))
    on_x = (points[0, :, 0].abs() > 2 - 1e-5).float().mean()
    assert abs(float(on_x) - 2 / (2 + 4 * 2)) < 0.015


def test_mesh_encoder_is_deterministic_in_eval_and_resamples_in_training() -> None:
    v, f = cube()
    enc = MeshPointEncoder(MeshEncoderConfig(n_points=64, n_layers=1, n_heads=4), out_dim=32, bounds=BOUNDS)
    enc.eval()
    a, b = enc(v[None] * 0.5, f), enc(v[None] * 0.5, f)
    assert a.shape == (1, 64, 32) and torch.equal(a, b)
    enc.train()
    assert not torch.equal(enc(v[None] * 0.5, f), enc(v[None] * 0.5, f))
    assert fourier_features(torch.zeros(2, 5, 3), 4).shape == (2, 5, 3 + 3 * 2 * 4)


def test_condition_tokens_are_image_then_mesh_with_type_embeddings() -> None:
    g = torch.Generator().manual_seed(0)
    v, f = cube()
    config = ConditionConfig(image=ImageEncoderConfig(arch="tiny", image_size=64),
                             mesh=MeshEncoderConfig(n_points=10, n_layers=1, n_heads=4))
    enc = ConditionEncoder(config, width=32, bounds=BOUNDS).eval()
    portrait = torch.rand(2, 3, 64, 64, generator=g)
    tokens = enc(portrait, v[None].expand(2, -1, -1), f)
    n_img = enc.image.n_tokens
    assert tokens.shape == (2, n_img + 10, 32) and enc.n_tokens == n_img + 10
    assert torch.allclose(tokens[:, :n_img], enc.image(portrait) + enc.type_embedding.weight[0])
    assert torch.allclose(tokens[:, n_img:], enc.mesh(v[None].expand(2, -1, -1), f) + enc.type_embedding.weight[1])
    mesh_only = ConditionEncoder(ConditionConfig(mesh=config.mesh, use_image=False), width=32, bounds=BOUNDS)
    assert mesh_only.eval()(portrait, v[None].expand(2, -1, -1), f).shape == (2, 10, 32)
    with pytest.raises(ValueError, match="at least one of use_image / use_mesh"):
        ConditionEncoder(ConditionConfig(use_image=False, use_mesh=False), width=32, bounds=BOUNDS)


class RecordingHead(nn.Module):
    """Returns the cube, scaled by 1 + shape[0], and remembers the parameters it was called with."""

    def __init__(self):
        super().__init__()
        self.register_buffer("faces", cube()[1])
        self.calls: list[HeadParams] = []

    def forward(self, params: HeadParams):
        self.calls.append(params)
        verts = cube()[0][None] * (1 + params.shape[:, :1, None])

        class Out:
            vertices = verts

        return Out()


def test_condition_mesh_uses_the_portrait_identity_in_neutral_pose_by_default() -> None:
    head = RecordingHead()
    params = HeadParams.zeros(2, n_shape=4, n_expr=3)
    params.shape[:, 0] = torch.tensor([0.5, 1.0])
    params.expr += 1
    params.jaw_pose += 0.2
    verts = condition_vertices(head, params)
    assert verts[0].abs().max() == pytest.approx(1.5) and verts[1].abs().max() == pytest.approx(2.0)
    seen = head.calls[-1]
    assert torch.equal(seen.shape, params.shape) and seen.expr.abs().sum() == 0 and seen.jaw_pose.abs().sum() == 0
    condition_vertices(head, params, space="portrait")
    assert torch.equal(head.calls[-1].expr, params.expr)
    with pytest.raises(ValueError, match="space must be one of"):
        condition_vertices(head, params, space="world")


def test_the_cnn_encoder_gives_one_token_per_cell_and_trains() -> None:
    gen = torch.Generator().manual_seed(0)
    enc = ImageEncoder(ImageEncoderConfig(arch="cnn", image_size=64, freeze=False, cnn_channels=(8, 16, 16)),
                       out_dim=12).train()
    assert enc.n_tokens == 8 * 8
    image = torch.rand(2, 3, 64, 64, generator=gen)
    tokens = enc(image)
    assert tokens.shape == (2, 64, 12)
    # portraits of other sizes are resized first, as for the ViTs
    assert enc(torch.rand(1, 3, 100, 80, generator=gen)).shape == (1, 64, 12)
    tokens.square().mean().backward()
    assert all(p.grad is not None for p in enc.backbone.parameters())


def test_bad_cnn_configs_name_the_field() -> None:
    with pytest.raises(ValueError, match="cnn_channels"):
        ImageEncoder(ImageEncoderConfig(arch="cnn", image_size=60, freeze=False), out_dim=8)
    with pytest.raises(ValueError, match="pretrained_path"):
        ImageEncoder(ImageEncoderConfig(arch="cnn", image_size=64, freeze=False, pretrained_path="w.pth"), out_dim=8)
