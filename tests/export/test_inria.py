"""INRIA 3DGS model folders (what SIBR_gaussianViewer_app -m opens): the layout, cfg_args read back both the way INRIA's
scripts read it (eval of a Namespace) and the way SIBR reads it (text after ``name=`` up to ``,`` or ``)``), the
cameras, input.ply and the Gaussians round trip; and ``avp avatarize --sibr`` writes such a folder of the avatar."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData

from avp.export.inria import (
    INRIA_ITERATION,
    cfg_args_line,
    read_cfg_args,
    read_inria_cameras,
    write_inria_model,
)
from avp.export.ply import cloud_from_splats, read_splat_ply, splat_fields
from avp.head.framing import view_cameras
from avp.render.sh import C0
from avp.types import GaussianCloud

pytestmark = pytest.mark.usefixtures("one_thread")


def _cloud(n: int = 50, degree: int = 1, seed: int = 0) -> GaussianCloud:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g)
    return GaussianCloud(means=torch.randn(n, 3, generator=g) * 0.1, quats=q / q.norm(dim=-1, keepdim=True),
                         scales=torch.rand(n, 3, generator=g) * 0.01 + 1e-3,
                         opacities=torch.rand(n, generator=g) * 0.9 + 0.05,
                         sh=torch.randn(n, (degree + 1) ** 2, 3, generator=g) * 0.3)


def _sibr_value(line: str, name: str) -> str:
    """What SIBR's gaussianViewer takes for ``name``: after the ``=`` following the name, up to the first , or )."""
    start = line.index("=", line.index(name)) + 1
    end = min(i for i in (line.find(",", start), line.find(")", start)) if i >= 0)
    return line[start:end]


def test_the_folder_is_what_sibr_and_inrias_scripts_open(tmp_path: Path) -> None:
    cloud = _cloud()
    cams = view_cameras([-60.0, 0.0, 60.0], size=64)
    paths = write_inria_model(tmp_path / "model", cloud, cams, white_background=True)
    root = tmp_path / "model"
    assert paths == {"cfg_args": root / "cfg_args", "cameras": root / "cameras.json", "input": root / "input.ply",
                     "point_cloud": root / "point_cloud" / f"iteration_{INRIA_ITERATION}" / "point_cloud.ply"}
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "cameras.json", "cfg_args", "input.ply", "point_cloud/iteration_30000/point_cloud.ply"]

    # cfg_args: one Namespace(...) line, which INRIA's get_combined_args evals
    line = paths["cfg_args"].read_text()
    assert "\n" not in line and re.fullmatch(r"Namespace\(.*\)", line)
    ns = read_cfg_args(paths["cfg_args"])
    assert isinstance(ns, argparse.Namespace)
    assert (ns.sh_degree, ns.white_background, ns.source_path, ns.model_path) == (3, True, str(root.resolve()),
                                                                                 str(root.resolve()))
    assert {"images", "resolution", "eval"} <= set(vars(ns))
    # ... and SIBR's text parsing gets the same values
    assert int(_sibr_value(line, "sh_degree")) == 3
    assert "True" in _sibr_value(line, "white_background")
    source = _sibr_value(line, "source_path")
    assert source[1:-1] == str(root.resolve())  # SIBR strips one character each side (the quotes)
    assert (Path(source[1:-1]) / "cameras.json").is_file()  # SIBR's "gaussian" dataset: cameras.json + input.ply

    # the Gaussians: INRIA's layout with SH padded to the degree cfg_args declares, values round trip
    ply = PlyData.read(str(paths["point_cloud"]))
    assert [p.name for p in ply["vertex"].properties] == splat_fields(3)
    assert all(p.val_dtype == "f4" for p in ply["vertex"].properties)
    back = cloud_from_splats(read_splat_ply(paths["point_cloud"])).map(lambda t: t[0])
    for field in ("means", "quats", "scales", "opacities"):
        torch.testing.assert_close(getattr(back, field), getattr(cloud, field), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(back.sh[:, :4], cloud.sh, atol=1e-6, rtol=1e-5)
    assert back.sh.shape[1] == 16 and back.sh[:, 4:].abs().max() == 0

    # input.ply: INRIA's storePly layout, the splat centres coloured by their DC colour
    header = paths["input"].read_bytes().split(b"end_header")[0].decode()
    assert re.findall(r"property (\w+) (\w+)", header) == [
        ("float", "x"), ("float", "y"), ("float", "z"), ("float", "nx"), ("float", "ny"), ("float", "nz"),
        ("uchar", "red"), ("uchar", "green"), ("uchar", "blue")]
    points = PlyData.read(str(paths["input"]))["vertex"]
    np.testing.assert_allclose(np.stack([points[a] for a in "xyz"], -1), cloud.means.numpy(), atol=1e-7)
    rgb = np.stack([points[c] for c in ("red", "green", "blue")], -1).astype(np.float64)
    expected = np.clip(0.5 + C0 * cloud.sh[:, 0].double().numpy(), 0, 1) * 255
    assert np.abs(rgb - expected).max() <= 0.5 + 1e-6


def test_cameras_json_is_inrias_convention_and_round_trips(tmp_path: Path) -> None:
    cams = view_cameras([-30.0, 0.0, 45.0], size=80, pitch_deg=10.0)
    paths = write_inria_model(tmp_path, _cloud(degree=0), cams, names=["a", "b", "c"], iteration=7)
    assert paths["point_cloud"].parent.name == "iteration_7"
    entries = json.loads(paths["cameras"].read_text())
    assert [(e["id"], e["img_name"], e["width"], e["height"]) for e in entries] == [
        (0, "a", 80, 80), (1, "b", 80, 80), (2, "c", 80, 80)]
    for e, centre, K, w2c in zip(entries, cams.camera_centers(), cams.Ks, cams.viewmats):
        # position: the camera centre; rotation: camera-to-world (its columns are the camera axes in world space)
        np.testing.assert_allclose(e["position"], centre.numpy(), atol=1e-5)
        np.testing.assert_allclose(np.array(e["rotation"]), w2c[:3, :3].T.numpy(), atol=1e-6)
        assert (e["fx"], e["fy"]) == pytest.approx((float(K[0, 0]), float(K[1, 1])))
    back = read_inria_cameras(paths["cameras"])
    torch.testing.assert_close(back.viewmats, cams.viewmats.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back.Ks, cams.Ks.float())
    assert (back.width, back.height) == (80, 80)


def test_cfg_args_is_read_without_running_it(tmp_path: Path) -> None:
    (tmp_path / "cfg_args").write_text("Namespace(sh_degree=3, source_path='/x', eval=False)")
    assert vars(read_cfg_args(tmp_path / "cfg_args")) == {"sh_degree": 3, "source_path": "/x", "eval": False}
    for bad in ("__import__('os').getcwd()", "Namespace(x=open('f'))", "Namespace(1)", "Namespace(x=1"):
        (tmp_path / "cfg_args").write_text(bad)
        with pytest.raises(ValueError, match="not an INRIA cfg_args line"):
            read_cfg_args(tmp_path / "cfg_args")


def test_paths_sibr_cannot_parse_are_refused() -> None:
    assert "source_path='/a/b'" in cfg_args_line(sh_degree=3, source_path="/a/b", model_path="/a/b")
    for bad in ("/data/run,1", "/data/run(1)", "/data/it's"):
        with pytest.raises(ValueError, match="cannot read back"):
            cfg_args_line(sh_degree=3, source_path=bad, model_path=bad)


# ------------------------------------------------------------------------------------------- avp avatarize --sibr

def test_avatarize_sibr_writes_the_avatar_at_rest_as_a_model_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    from PIL import Image
    from skimage import data

    from avp.cli import main as avp_main
    from avp.export.avatar import load_avatar
    from tests.portrait.tiny_models import build_tiny_checkpoints

    root = tmp_path_factory.getbasetemp() / "tiny_avp_checkpoints"  # shared with tests/test_avatarize.py
    root.mkdir(exist_ok=True)
    ckpts = build_tiny_checkpoints(root)
    out = tmp_path_factory.mktemp("avatarize_sibr")
    Image.fromarray(data.astronaut()).save(out / "photo.png")
    assert avp_main(["avatarize", "--image", str(out / "photo.png"), "--out", str(out / "run"),
                     "--generator", str(ckpts.generator), "--decoder", str(ckpts.decoder), "--frames", "2",
                     "--orbit-frames", "1", "--size", "32", "--fit-steps", "20", "--device", "cpu", "--no-progress",
                     "--sibr"]) == 0
    run = out / "run"
    report = json.loads((run / "fit_report.json").read_text())
    assert report["outputs"]["SIBR model folder"] == str(run / "sibr")
    ns = read_cfg_args(run / "sibr" / "cfg_args")
    assert ns.sh_degree == 3 and ns.white_background is True
    cams = read_inria_cameras(run / "sibr" / "cameras.json")
    assert cams.n_views == 9 and (cams.width, cams.height) == (32, 32)
    # the Gaussians are avatar_world.ply's, i.e. the avatar at rest in world space
    world = read_splat_ply(run / "avatar_world.ply")
    sibr = read_splat_ply(run / "sibr" / "point_cloud" / f"iteration_{INRIA_ITERATION}" / "point_cloud.ply")
    for field in ("xyz", "f_dc", "f_rest", "opacity", "scale", "rot"):
        np.testing.assert_array_equal(getattr(sibr, field), getattr(world, field))
    assert sibr.n_points == load_avatar(run / "avatar").n_points
