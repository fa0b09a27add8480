"""The demo's contact sheet: per held-out subject, portrait | generated points | full model | template points |
teacher fit | ground truth, all at the same frame and frontal camera."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avp.atomic import atomic_write_bytes
from avp.render.sh import sh0_to_rgb
from avp.types import Cameras


def _frontal_view(cameras: Cameras) -> int:
    """The camera looking most directly at the face (the head looks along +z)."""
    forward = cameras.viewmats[:, 2, :3]  # [V, 3] camera z axis in world coordinates
    return int(torch.argmin(forward[:, 2]))


def _points_panel(points: Tensor, colours: Tensor, cameras: Cameras, size: int) -> np.ndarray:
    """Generated points ``[N, 3]`` seen from ``cameras`` (one view): dots coloured by their decoded colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cam = (cameras.viewmats[0, :3, :3] @ points.T + cameras.viewmats[0, :3, 3:]).T  # [N, 3]
    uv = (cameras.Ks[0] @ cam.T).T
    uv = uv[:, :2] / uv[:, 2:].clamp(min=1e-6)
    order = torch.argsort(cam[:, 2], descending=True)  # far first
    fig = plt.figure(figsize=(size / 100, size / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.scatter(uv[order, 0].numpy(), uv[order, 1].numpy(), s=4, c=colours[order].clamp(0, 1).numpy(), linewidths=0)
    ax.set_xlim(0, cameras.width)
    ax.set_ylim(cameras.height, 0)
    ax.set_facecolor("white")
    ax.axis("off")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, facecolor="white")
    plt.close(fig)
    from PIL import Image

    return np.asarray(Image.open(buffer).convert("RGB").resize((size, size)))


def _to_uint8(image: Tensor, size: int) -> np.ndarray:
    """``[3, H, W]`` in 0..1 -> ``[size, size, 3]`` uint8."""
    image = torch.nn.functional.interpolate(image[None].float(), size=(size, size), mode="bilinear",
                                            align_corners=False)[0]
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def contact_sheet(data_root: str | Path, decoder_ckpt: str | Path, template_ckpt: str | Path, out: str | Path, *,
                  subjects: int = 4, size: int = 128, seed: int = 0, split: str = "test") -> Path:
    """Write the contact sheet PNG for the first ``subjects`` clips of ``split``; returns its path."""
    from PIL import Image, ImageDraw

    from avp.checkpoints import load_avatar_model
    from avp.data.schema import decode_sample
    from avp.eval.clips import source_from_sample, target_from_sample
    from avp.eval.methods import DecoderMethod, TeacherMethod, sampling_config
    from avp.eval.plan import list_clips, stream_samples
    from avp.eval.protocol import load_protocol

    device = torch.device("cpu")
    protocol = load_protocol(Path(__file__).resolve().parents[1] / "configs" / "eval" / "self_reenactment.yaml",
                             [f"render.resolution={size}"])
    (decoder, decoder_hp), (template, template_hp) = (load_avatar_model(decoder_ckpt, device=device),
                                                      load_avatar_model(template_ckpt, device=device))
    methods = [
        DecoderMethod("generated", decoder, decoder_hp, "generated", sampling_config(decoder, protocol), "clip", {}),
        DecoderMethod("template", template, template_hp, "template", sampling_config(template, protocol), "clip",
                      {}),
        TeacherMethod(decoder.head_model, "lbs"),
    ]
    clips, _ = list_clips(str(data_root), split)
    keys = [c.key for c in sorted(clips, key=lambda c: c.key)[:subjects]]
    rows: list[np.ndarray] = []
    for shard, raw in stream_samples(str(data_root), split, set(keys)):
        sample = decode_sample(raw, shard=shard, frame_index=[0])
        meta_views = Cameras(Ks=torch.from_numpy(sample.cameras.Ks).float(),
                             viewmats=torch.from_numpy(sample.cameras.viewmats).float(),
                             width=int(sample.meta["width"]), height=int(sample.meta["height"]))
        view = _frontal_view(meta_views)
        sample = decode_sample(raw, shard=shard, frame_index=[0], view_index=[view])
        source, target = source_from_sample(sample), target_from_sample(sample, protocol)
        panels = [_to_uint8(source.portrait, size)]
        renders = []
        for i, method in enumerate(methods):
            avatar = method.build(source, seed + i)
            rgb = avatar.render(target.cameras, target.head, background=target.background,
                                chunk=len(target.frame_index)).rgb  # [1, 1, 3, H, W]
            renders.append(_to_uint8(rgb[0, 0], size))
            if i == 0:
                cloud = avatar.cloud
                colours = sh0_to_rgb(cloud.sh[0, :, 0]).clamp(0, 1)
                panels.append(_points_panel(cloud.means[0], colours, target.cameras, size))
        panels += renders + [_to_uint8(target.frames[0, 0], size)]
        rows.append(np.concatenate(panels, axis=1))
    titles = ["portrait", "generated points", "full model", "template points", "teacher fit", "ground truth"]
    header = Image.new("RGB", (size * len(titles), 18), "white")
    draw = ImageDraw.Draw(header)
    for i, title in enumerate(titles):
        draw.text((i * size + 4, 3), title, fill="black")
    sheet = np.concatenate([np.asarray(header), *rows], axis=0)
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())
    return Path(out)
