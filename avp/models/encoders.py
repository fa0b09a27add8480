"""Condition encoders: portrait image tokens (DINOv2 ViT) and head-mesh point tokens, joined with a type embedding.

- :class:`ImageEncoder`: a DINOv2 ViT from timm (S/B/L/g, optionally with 4 registers) or a tiny ViT for CPU configs.
  ``pretrained_path`` loads a local weights file (timm, original torch-hub DINOv2 or Hugging Face ``Dinov2Model``
  state dicts, ``.pth``/``.pt``/``.bin``/``.safetensors``); without it the backbone is randomly initialised (never
  downloaded). Frozen (no gradients, always in eval mode) or fine-tuned. Output: every token (CLS, registers,
  patches) projected to the model width.
- :class:`MeshPointEncoder`: points sampled on the portrait's head-model mesh (area-weighted), normalised into the
  tokenizer's box, Fourier features of position plus the surface normal, a linear embedding and a few bidirectional
  Transformer blocks; one token per sampled point.
- :class:`ConditionEncoder`: both, each plus its type embedding, concatenated ``[image tokens, mesh tokens]``.

With ``mesh.pixel_lifts`` (an extension of ours, off by default) every mesh token also reads the portrait where its
point, and copies of it lifted along the surface normal, project with the portrait's camera
(:class:`PortraitView`): the geometry the portrait shows (how far hair reaches beyond the scalp) arrives in the tokens
without the image encoder having to learn to see it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avp.models.layers import EncoderBlock, fourier_features, init_transformer_weights
from avp.models.pixel_aligned import pixel_feature_dim, pixel_features
from avp.types import HeadParams

# arch name -> timm model name (without / with 4 registers)
DINOV2_ARCHS = {
    "dinov2_vits14": ("vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"),
    "dinov2_vitb14": ("vit_base_patch14_dinov2", "vit_base_patch14_reg4_dinov2"),
    "dinov2_vitl14": ("vit_large_patch14_dinov2", "vit_large_patch14_reg4_dinov2"),
    "dinov2_vitg14": ("vit_giant_patch14_dinov2", "vit_giant_patch14_reg4_dinov2"),
}
ARCHS = (*DINOV2_ARCHS, "tiny", "cnn")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MESH_SPACES = ("canonical", "portrait")


@dataclass
class ImageEncoderConfig:
    """The portrait encoder."""

    arch: str = "dinov2_vitb14"
    """``dinov2_vits14`` | ``dinov2_vitb14`` | ``dinov2_vitl14`` | ``dinov2_vitg14`` (timm DINOv2), ``tiny`` (a small
    ViT, random init) or ``cnn`` (:class:`ConvBackbone`: a small convolutional net for from-scratch training at toy
    scale, where it learns the portrait's geometry faster than a ViT; an extension of ours)."""
    registers: bool = False
    """Use the DINOv2 variant with 4 register tokens (needs weights trained with registers)."""
    image_size: int = 224
    """Portraits are resized to this square size (a multiple of the patch size: 14 for DINOv2)."""
    pretrained_path: str | None = None
    """Local weights file (timm / torch-hub / Hugging Face DINOv2 state dict); None = random initialisation."""
    freeze: bool = True
    """Keep the backbone fixed (no gradients, eval mode); the projection to the model width always trains."""
    tiny_width: int = 96
    """``tiny`` only: ViT width."""
    tiny_depth: int = 2
    """``tiny`` only: ViT blocks."""
    tiny_heads: int = 3
    """``tiny`` only: attention heads."""
    tiny_patch: int = 16
    """``tiny`` only: patch size."""
    cnn_channels: tuple[int, ...] = (32, 64, 96, 128)
    """``cnn`` only: channels of its stride-2 stages (``image_size / 2^stages`` tokens per side)."""


@dataclass
class MeshEncoderConfig:
    """The head-mesh point encoder."""

    n_points: int = 512
    """Points sampled on the mesh (one condition token each)."""
    n_frequencies: int = 8
    """Fourier octaves of the normalised position (``sin/cos(2^k pi p)``, k < n_frequencies)."""
    n_layers: int = 2
    """Bidirectional Transformer blocks over the point tokens."""
    n_heads: int = 8
    """Attention heads; must divide the model width."""
    space: str = "canonical"
    """``canonical``: the portrait's identity with neutral expression and pose (the frame the tokens live in);
    ``portrait``: the head as estimated for the portrait (expression and pose included)."""
    eval_seed: int = 0
    """Seed of the surface sampling in eval mode (training samples fresh points each step: augmentation)."""
    pixel_lifts: tuple[float, ...] = ()
    """Pixel-aligned mesh tokens (an extension of ours; empty: off, the paper's condition): offsets in metres along
    the surface normal (0 = on the surface) at which each token's point, posed as in the portrait, is projected with
    the portrait's camera and the portrait is sampled (:func:`avp.models.pixel_aligned.pixel_features`). Needs the
    portrait's camera wherever the condition is encoded."""
    pixel_levels: int = 2
    """Pyramid levels of the pixel-aligned colours (with ``pixel_lifts``)."""

    def __post_init__(self) -> None:
        self.pixel_lifts = tuple(float(d) for d in self.pixel_lifts)
        if self.pixel_levels < 1:
            raise ValueError(f"mesh encoder: pixel_levels must be >= 1, got {self.pixel_levels}")


@dataclass
class ConditionConfig:
    """What the generator is conditioned on."""

    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    """Portrait encoder."""
    mesh: MeshEncoderConfig = field(default_factory=MeshEncoderConfig)
    """Head-mesh encoder."""
    use_image: bool = True
    """Include the image tokens (ablation switch)."""
    use_mesh: bool = True
    """Include the mesh tokens (ablation switch)."""
    guidance_dropout: float = 0.0
    """Probability, in training, that a sample's condition is replaced by a learned null condition, so that the
    generator also learns the unconditional distribution that classifier-free guidance (``sampling.guidance``) steers
    away from (0: no null condition, the paper's setting). An extension of ours."""


# --------------------------------------------------------------------------------------------------- weight files
def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only``), unwrapping ``model``/``state_dict``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image encoder weights: {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # re-raised with the file name
        raise ValueError(f"image encoder weights: cannot read {path}: {err}") from err
    for key in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"image encoder weights: {path} does not hold a state dict of tensors")
    return dict(state)


_HF_BLOCK = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_BLOCK_NAMES = {
    "norm1": "norm1", "norm2": "norm2", "attention.output.dense": "attn.proj", "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2", "mlp.weights_in": "mlp.w12", "mlp.weights_out": "mlp.w3",
}


def hf_dinov2_to_hub(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ``Dinov2Model`` keys -> the original (torch-hub) DINOv2 keys, which timm converts itself."""
    for prefix in ("dinov2.", "backbone.", "model."):
        if any(k.startswith(prefix + "embeddings.") for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    simple = {
        "embeddings.cls_token": "cls_token", "embeddings.mask_token": "mask_token",
        "embeddings.position_embeddings": "pos_embed", "embeddings.register_tokens": "register_tokens",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
    }
    for key, value in state.items():
        if key in simple:
            out[simple[key]] = value
            continue
        m = _HF_BLOCK.match(key)
        if not m:
            out[key] = value  # left as is: reported as unexpected if the model has no such key
            continue
        i, rest = int(m.group(1)), m.group(2)
        attn = re.match(r"attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
        scale = re.match(r"layer_scale([12])\.lambda1$", rest)
        if attn:
            qkv.setdefault((i, attn.group(2)), {})[attn.group(1)] = value
        elif scale:
            out[f"blocks.{i}.ls{scale.group(1)}.gamma"] = value
        else:
            module, _, param = rest.rpartition(".")
            out[f"blocks.{i}.{_HF_BLOCK_NAMES.get(module, module)}.{param}"] = value
    for (i, param), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"Hugging Face DINOv2 weights: block {i} {param} lacks one of query/key/value")
        out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    out.setdefault("mask_token", torch.zeros(1, out["cls_token"].shape[-1]) if "cls_token" in out else torch.zeros(1))
    return out


def load_vit_weights(model: nn.Module, path: str | Path) -> None:
    """Load a timm / torch-hub / Hugging Face DINOv2 weights file into a timm ViT (position embeddings resampled).

    Raises ``ValueError`` naming the file and the missing, unexpected or mis-shaped keys when they do not match.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = read_state_dict(path)
    if any(k.startswith(("embeddings.", "dinov2.embeddings.", "backbone.embeddings.")) for k in state):
        state = hf_dinov2_to_hub(state)
    try:
        state = checkpoint_filter_fn(state, model)
    except Exception as err:  # re-raised with the file name
        raise ValueError(f"image encoder weights {path}: cannot convert to {type(model).__name__}: {err}") from err
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own and not k.startswith("head."))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in own if k in state and state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        def show(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" … ({len(items)} in all)" if len(items) > 8 else "")

        parts = [f"missing keys: {show(missing)}" if missing else "",
                 f"unexpected keys: {show(unexpected)}" if unexpected else "",
                 f"shape mismatches: {show(shapes)}" if shapes else ""]
        raise ValueError(f"image encoder weights {path} do not match the configured architecture "
                         f"({'; '.join(p for p in parts if p)}); check image.arch and image.registers")
    model.load_state_dict({k: v for k, v in state.items() if k in own})


# ---------------------------------------------------------------------------------------------------- encoders
class ConvBackbone(nn.Module):
    """``[B, 3, S, S]`` -> ``[B, (S / 2^K)^2, C_K]`` tokens: K stride-2 3x3 convolutions (GroupNorm, GELU) and a
    learned position embedding per cell of the last grid.

    The ``cnn`` portrait encoder: at toy scale, trained from scratch, the convolutional bias makes it learn where a
    subject's points are from its portrait in hundreds of steps, which a small ViT did not (EXPERIMENTS.md, exp10).
    """

    def __init__(self, image_size: int, channels: Sequence[int]):
        super().__init__()
        if not channels or image_size % 2 ** len(channels):
            raise ValueError(f"image encoder: cnn needs image_size ({image_size}) divisible by 2^{len(channels)} "
                             f"(one halving per entry of cnn_channels {tuple(channels)})")
        layers: list[nn.Module] = []
        for c_in, c_out in zip((3, *channels[:-1]), channels, strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(math.gcd(8, c_out), c_out),
                       nn.GELU()]
        self.stages = nn.Sequential(*layers)
        self.embed_dim = int(channels[-1])
        self.n_tokens = (image_size // 2 ** len(channels)) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, self.n_tokens, self.embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(x).flatten(2).transpose(1, 2) + self.pos_embed  # [B, P, C]


def build_vit(config: ImageEncoderConfig) -> nn.Module:
    """The backbone (``forward_features -> [B, P, E]``, ``embed_dim``) that ``config`` names, randomly initialised:
    a timm ViT (``num_classes=0``) or, for ``cnn``, a :class:`ConvBackbone`."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if config.arch not in ARCHS:
        raise ValueError(f"image encoder: arch must be one of {ARCHS}, got {config.arch!r}")
    if config.arch == "cnn":
        return ConvBackbone(config.image_size, config.cnn_channels)
    if config.arch == "tiny":
        if config.image_size % config.tiny_patch:
            raise ValueError(f"image encoder: image_size {config.image_size} is not a multiple of the patch size "
                             f"{config.tiny_patch}")
        return VisionTransformer(
            img_size=config.image_size, patch_size=config.tiny_patch, embed_dim=config.tiny_width,
            depth=config.tiny_depth, num_heads=config.tiny_heads, num_classes=0, init_values=1e-5,
            reg_tokens=4 if config.registers else 0, no_embed_class=config.registers,
        )
    if config.image_size % 14:
        raise ValueError(f"image encoder: image_size {config.image_size} is not a multiple of DINOv2's patch size 14")
    name = DINOV2_ARCHS[config.arch][int(config.registers)]
    return timm.create_model(name, pretrained=False, img_size=config.image_size, num_classes=0)


class ImageEncoder(nn.Module):
    """``portrait [B, 3, H, W]`` in 0..1 -> ``[B, P, out_dim]`` (all ViT tokens, projected)."""

    mean: Tensor
    std: Tensor

    def __init__(self, config: ImageEncoderConfig, out_dim: int):
        super().__init__()
        self.config = config
        self.backbone = build_vit(config)
        if config.pretrained_path:
            if config.arch == "cnn":
                raise ValueError("image encoder: pretrained_path loads DINOv2 weights; the cnn encoder has none (set "
                                 "pretrained_path: null)")
            load_vit_weights(self.backbone, config.pretrained_path)
        self.embed_dim = int(self.backbone.embed_dim)
        if isinstance(self.backbone, ConvBackbone):
            self.n_tokens = self.backbone.n_tokens
        else:
            self.n_tokens = int(self.backbone.patch_embed.num_patches) + int(self.backbone.num_prefix_tokens)
        self.proj = nn.Linear(self.embed_dim, out_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if config.freeze:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if self.config.freeze:
            self.backbone.eval()  # a frozen backbone never sees train-mode dropout / drop-path
        return self

    def forward(self, portrait: Tensor) -> Tensor:
        if portrait.ndim != 4 or portrait.shape[1] != 3:
            raise ValueError(f"ImageEncoder: portrait must be [B, 3, H, W], got {tuple(portrait.shape)}")
        size = self.config.image_size
        x = portrait.to(self.mean.dtype)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        if self.config.freeze:
            with torch.no_grad():
                feats = self.backbone.forward_features(x)
        else:
            feats = self.backbone.forward_features(x)  # [B, P, E]
        return self.proj(feats)


def surface_samples(vertices: Tensor, faces: Tensor, n: int, generator: torch.Generator | None = None
                    ) -> tuple[Tensor, Tensor]:
    """Area-weighted uniform samples on triangle meshes as ``face [B, n]`` indices and barycentric weights
    ``[B, n, 3]`` (``vertices [B, V, 3]``, shared ``faces [F, 3]``; ``generator`` on the vertices' device), so that
    the same samples can be placed on another pose of the meshes (:func:`surface_points`)."""
    tri = vertices[:, faces]  # [B, F, 3, 3]
    area = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0]).norm(dim=-1)  # [B, F]
    if not bool((area.sum(-1) > 0).all()):
        raise ValueError("sample_surface: a mesh has zero total area")
    face = torch.multinomial(area.float(), n, replacement=True, generator=generator)  # [B, n]
    uv = torch.rand(vertices.shape[0], n, 2, device=vertices.device, dtype=vertices.dtype, generator=generator)
    su = uv[..., 0].sqrt()
    return face, torch.stack([1 - su, su * (1 - uv[..., 1]), su * uv[..., 1]], dim=-1)


def surface_points(vertices: Tensor, faces: Tensor, face: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Samples ``face [B, n]``, ``weights [B, n, 3]`` on meshes ``vertices [B, V, 3]`` -> ``points [B, n, 3]`` and
    the unit ``normals [B, n, 3]`` of their triangles."""
    corners = vertices[:, faces]  # [B, F, 3, 3]
    corners = torch.gather(corners, 1, face[..., None, None].expand(-1, -1, 3, 3))  # [B, n, 3, 3]
    points = (weights[..., None] * corners).sum(-2)
    normals = torch.linalg.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0])
    return points, F.normalize(normals, dim=-1)


def sample_surface(vertices: Tensor, faces: Tensor, n: int, generator: torch.Generator | None = None
                   ) -> tuple[Tensor, Tensor]:
    """Area-weighted uniform samples on triangle meshes.

    Args:
        vertices: ``[B, V, 3]``; faces: ``[F, 3]`` long (shared topology); n: samples per mesh.
        generator: RNG on the vertices' device (None: the global one).

    Returns:
        ``points [B, n, 3]`` and unit ``normals [B, n, 3]`` (of the sampled triangles).
    """
    face, weights = surface_samples(vertices, faces, n, generator)
    return surface_points(vertices, faces, face, weights)


@dataclass
class PortraitView:
    """What pixel-aligned mesh tokens read: the portrait, the head mesh as posed in it, and the portrait's camera."""

    image: Tensor
    """``[B, 3, H, W]`` in 0..1."""
    vertices: Tensor
    """``[B, V, 3]`` the head mesh posed as in the portrait (the camera's world space)."""
    Ks: Tensor
    """``[B, 3, 3]`` pixel intrinsics of the portrait (of its ``H x W``)."""
    viewmats: Tensor
    """``[B, 4, 4]`` world-to-camera."""


class MeshPointEncoder(nn.Module):
    """``vertices [B, V, 3]`` + ``faces [F, 3]`` -> ``[B, n_points, out_dim]`` point tokens."""

    center: Tensor
    half_extent: Tensor

    def __init__(self, config: MeshEncoderConfig, out_dim: int, bounds: Tensor):
        super().__init__()
        if out_dim % config.n_heads:
            raise ValueError(f"mesh encoder: width {out_dim} is not divisible by n_heads {config.n_heads}")
        self.config = config
        bounds = torch.as_tensor(bounds, dtype=torch.float32)
        self.register_buffer("center", (bounds[0] + bounds[1]) / 2)
        self.register_buffer("half_extent", (bounds[1] - bounds[0]) / 2)
        self.pixel_dim = len(config.pixel_lifts) * pixel_feature_dim(config.pixel_levels)
        self.embed = nn.Linear(3 + 6 * config.n_frequencies + 3 + self.pixel_dim, out_dim)
        self.blocks = nn.ModuleList(EncoderBlock(out_dim, config.n_heads) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(out_dim)
        init_transformer_weights(self, max(config.n_layers, 1))

    def forward(self, vertices: Tensor, faces: Tensor, view: PortraitView | None = None) -> Tensor:
        """``vertices [B, V, 3]`` (the mesh the tokens live on), ``faces [F, 3]`` and, with ``pixel_lifts``, the
        portrait ``view`` -> ``[B, n_points, out_dim]``."""
        if vertices.ndim != 3 or vertices.shape[-1] != 3:
            raise ValueError(f"MeshPointEncoder: vertices must be [B, V, 3], got {tuple(vertices.shape)}")
        generator = None
        if not self.training:
            generator = torch.Generator(device=vertices.device).manual_seed(self.config.eval_seed)
        face, weights = surface_samples(vertices.float(), faces, self.config.n_points, generator)
        points, normals = surface_points(vertices.float(), faces, face, weights)
        unit = (points - self.center) / self.half_extent  # the tokenizer's box -> [-1, 1]
        parts = [fourier_features(unit, self.config.n_frequencies), normals]
        if self.pixel_dim:
            parts.append(self._pixel(view, faces, face, weights))
        x = self.embed(torch.cat(parts, dim=-1))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def _pixel(self, view: PortraitView | None, faces: Tensor, face: Tensor, weights: Tensor) -> Tensor:
        """The portrait at the samples posed as in it, lifted by each of ``pixel_lifts``: ``[B, n, pixel_dim]``."""
        if view is None:
            raise ValueError("condition: mesh.pixel_lifts needs the portrait's camera (portrait_camera) wherever the "
                             "condition is encoded; shards carry it in portrait_camera.npz")
        B, n = face.shape
        if view.vertices.shape[0] != B:
            raise ValueError(f"condition: the portrait view has {view.vertices.shape[0]} meshes for {B} portraits")
        posed, normals = surface_points(view.vertices.float(), faces, face, weights)  # [B, n, 3] x 2
        mask = torch.ones(B, n, dtype=torch.bool, device=posed.device)
        Ks, viewmats = view.Ks.reshape(B, 3, 3).float(), view.viewmats.reshape(B, 4, 4).float()
        return torch.cat([pixel_features(view.image, posed + lift * normals, mask, Ks, viewmats,
                                         levels=self.config.pixel_levels)
                          for lift in self.config.pixel_lifts], dim=-1)


def condition_vertices(head_model: nn.Module, portrait_head: HeadParams, space: str = "canonical",
                       static_offset: Tensor | None = None) -> Tensor:
    """The portrait's head mesh ``[B, V, 3]`` from ``head_model.forward`` (``space`` as :class:`MeshEncoderConfig`),
    on the subject's tracked mesh when ``static_offset [B, V, 3]`` is given (None: the bare head model's)."""
    if space not in MESH_SPACES:
        raise ValueError(f"mesh encoder: space must be one of {MESH_SPACES}, got {space!r}")
    params = portrait_head
    if space == "canonical":
        neutral = HeadParams.zeros(*portrait_head.batch_shape, n_shape=portrait_head.shape.shape[-1],
                                   n_expr=portrait_head.expr.shape[-1], device=portrait_head.shape.device,
                                   dtype=portrait_head.shape.dtype)
        params = HeadParams(portrait_head.shape, neutral.expr, neutral.global_rot, neutral.neck_pose,
                            neutral.jaw_pose, neutral.eyes_pose, neutral.translation)
    if static_offset is None:
        return head_model(params).vertices
    return head_model(params, static_offset=static_offset).vertices


class ConditionEncoder(nn.Module):
    """Image and mesh tokens, each plus a learned type embedding, concatenated: ``[B, C_img + C_mesh, width]``."""

    def __init__(self, config: ConditionConfig, width: int, bounds: Tensor):
        super().__init__()
        if not (config.use_image or config.use_mesh):
            raise ValueError("condition: at least one of use_image / use_mesh must be true")
        self.config = config
        self.width = width
        self.image = ImageEncoder(config.image, width) if config.use_image else None
        self.mesh = MeshPointEncoder(config.mesh, width, bounds) if config.use_mesh else None
        self.type_embedding = nn.Embedding(2, width)
        nn.init.normal_(self.type_embedding.weight, std=0.02)

    @property
    def n_tokens(self) -> int:
        return (self.image.n_tokens if self.image is not None else 0) + (
            self.config.mesh.n_points if self.mesh is not None else 0)

    @property
    def pixel_aligned(self) -> bool:
        """Whether the mesh tokens read the portrait (``mesh.pixel_lifts``): encoding needs a :class:`PortraitView`."""
        return self.mesh is not None and self.mesh.pixel_dim > 0

    def forward(self, portrait: Tensor, vertices: Tensor, faces: Tensor, view: PortraitView | None = None) -> Tensor:
        """``portrait [B, 3, H, W]``, head mesh ``vertices [B, V, 3]`` and ``faces [F, 3]`` (and the portrait ``view``
        for pixel-aligned mesh tokens) -> ``[B, C, width]``."""
        parts = []
        if self.image is not None:
            parts.append(self.image(portrait) + self.type_embedding.weight[0])
        if self.mesh is not None:
            parts.append(self.mesh(vertices, faces, view) + self.type_embedding.weight[1])
        return torch.cat(parts, dim=1)
