"""The viewer: a viser server showing one avatar as client-side WebGL splats, driven from its GUI.

Per GUI change (or playback frame) only the cheap path runs: the pose from the controls -> :meth:`Avatar.animate`
(the rig was built once) -> centres and covariances (:func:`avp.view.splats.pose_arrays`) -> one splat-buffer
update to every browser. Colours and opacities are converted once. Rendering the PNG uses avp's own renderer
(:meth:`Avatar.render`) from the browser's camera (or the frontal training camera), so the file is what avp's
evaluation would see, not a screenshot of viser's approximation (no SH bands, float16 covariances).

Controls are named (:attr:`AvatarViewer.controls`); setting ``controls[name].value`` from Python runs the same callback
a browser change does, which is how the tests and scripts drive the viewer.

The pose is the selected motion's frame (the rest pose for ``(none)``) plus the sliders: angles in degrees added to
the frame's axis-angle components (global rotation, neck, jaw, eye gaze on both eyes) and expression coefficients
added to the first components.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import ipaddress
import math
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avp.driving import MOTIONS, DrivingSequence, builtin_motion
from avp.models.avatar import ANIMATION_MODES, Avatar
from avp.types import Cameras, HeadParams
from avp.view import ViewError, require_viser
from avp.view.source import ViewSource, load_drive
from avp.view.splats import pose_arrays, region_colours, static_arrays

__all__ = ["NO_MOTION", "AvatarViewer", "check_port", "is_loopback", "viser_camera"]

NO_MOTION = "(none: sliders only)"
CAMERAS = ("browser view", "frontal")

# (control, label, min, max) in degrees: each adds to one axis-angle component of the motion's frame
ANGLE_SLIDERS = (
    ("global_pitch", "pitch", "global_rot", 0, 60.0), ("global_yaw", "yaw", "global_rot", 1, 90.0),
    ("global_roll", "roll", "global_rot", 2, 45.0),
    ("neck_pitch", "pitch", "neck_pose", 0, 45.0), ("neck_yaw", "yaw", "neck_pose", 1, 60.0),
    ("neck_roll", "roll", "neck_pose", 2, 30.0),
    ("jaw_open", "open", "jaw_pose", 0, 30.0), ("jaw_side", "side", "jaw_pose", 1, 10.0),
)
ANGLE_FOLDERS = {"global_rot": "Head rotation", "neck_pose": "Neck", "jaw_pose": "Jaw"}
GAZE_SLIDERS = (("gaze_pitch", "gaze up/down", 0, 30.0), ("gaze_yaw", "gaze left/right", 1, 40.0))
"""Gaze turns both eyes alike: ``eyes_pose`` is left eye then right eye, axis-angle each."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    """:class:`ViewError` naming the port when it cannot be bound (viser would silently take the next one, and the
    SSH tunnel the user set up would then point at nothing)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ViewError(f"port {port} on {host} is not available ({e.strerror or e}); is another viewer running? "
                            "choose another with --port") from e


def _expression_labels(head_model: torch.nn.Module, n: int) -> list[str]:
    from avp.head import BUILTIN_NAME, EXPRESSION_COMPONENTS

    if head_model.name == BUILTIN_NAME:
        return [name for name, _ in EXPRESSION_COMPONENTS][:n]
    return [f"expr {i}" for i in range(n)]


def viser_camera(wxyz: np.ndarray, position: np.ndarray, fov: float, aspect: float, height: int) -> Cameras:
    """A browser camera (viser: camera-to-world ``wxyz`` and ``position`` in OpenCV axes, vertical ``fov`` in
    radians, ``aspect`` = width / height) as avp cameras ``Ks [1, 3, 3]``, ``viewmats [1, 4, 4]`` of ``height``
    pixels."""
    from avp.rotations import quaternion_to_matrix

    R = quaternion_to_matrix(torch.as_tensor(np.asarray(wxyz), dtype=torch.float64))
    t = torch.as_tensor(np.asarray(position), dtype=torch.float64)
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, :3] = R.T
    viewmat[:3, 3] = -R.T @ t
    width = max(1, int(round(height * aspect)))
    f = 0.5 * height / math.tan(0.5 * fov)
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return Cameras(Ks=K[None].float(), viewmats=viewmat[None].float(), width=width, height=height)


class AvatarViewer:
    """A running viewer of ``source``'s avatar (see the module docstring).

    Args:
        source: the avatar and its loaded sequences (:mod:`avp.view.source`).
        host, port: where to serve (``port=0``: any free port; :attr:`port` says which).
        out_dir: where the PNG button writes.
        expressions: how many expression components get a slider.
        motion_frames, motion_fps: length and rate of the built-in motions.
    """

    def __init__(self, source: ViewSource, *, host: str = "127.0.0.1", port: int = 8080,
                 out_dir: str | Path = "view_renders", expressions: int = 10, motion_frames: int = 75,
                 motion_fps: float = 25.0) -> None:
        viser = require_viser()
        self.source = source
        self.avatar: Avatar = source.avatar
        self.out_dir = Path(out_dir)
        self.renders: list[Path] = []
        self.updates = 0
        """Splat updates sent so far."""
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._playing = False
        self._n_expr_requested = int(expressions)
        self.motions = self._motions(motion_frames, motion_fps)
        self._rgbs, self._opacities = static_arrays(self.avatar.cloud)
        self._overlay_colours, self.region_counts = region_colours(self.avatar.head_model, self.avatar.binding)

        if port:
            check_port(host, port)
        with contextlib.redirect_stdout(io.StringIO()):  # viser's own banner: the CLI prints the address itself
            self.server = viser.ViserServer(host=host, port=port, label="avp view", verbose=False)
        self.host, self.port = host, int(self.server.get_port())
        if port and self.port != port:
            self.server.stop()
            raise ViewError(f"port {port} on {host} was taken while the viewer started; choose another with --port")
        try:
            self._build_scene()
            self.controls: dict[str, Any] = {}
            self._build_gui()
            self.refresh()
        except Exception:
            self.server.stop()
            raise
        self._player = threading.Thread(target=self._play_loop, name="avp-view-player", daemon=True)
        self._player.start()

    # ------------------------------------------------------------------------------------------ setup
    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def _motions(self, frames: int, fps: float) -> dict[str, DrivingSequence]:
        """The built-in motions this head model can play (``smile`` needs named expressions), then the loaded ones."""
        motions: dict[str, DrivingSequence] = {}
        for name in MOTIONS:
            with contextlib.suppress(ValueError):
                motions[name] = builtin_motion(name, self.avatar.head_model, frames=frames, fps=fps,
                                               shape=self.avatar.shape.cpu())
        motions.update(self.source.motions)
        return motions

    def _build_scene(self) -> None:
        scene = self.server.scene
        scene.set_up_direction("+y")  # the head model's canonical space is y up, the face looking along +z
        cams = self.avatar.view_cameras([0.0])
        c2w = torch.linalg.inv(cams.viewmats[0].double().cpu())
        eye = c2w[:3, 3]
        centre = self.avatar.cloud.means[0].detach().double().cpu().mean(0)
        forward = c2w[:3, 2]
        target = eye + forward * torch.dot(centre - eye, forward)  # on the training camera's axis, level with the head
        eye = target + 0.6 * (eye - target)  # the training framing leaves room for the shoulders; the GUI covers some
        self.server.initial_camera.position = tuple(eye.tolist())
        self.server.initial_camera.look_at = tuple(target.tolist())
        self.server.initial_camera.up = (0.0, 1.0, 0.0)
        n = self.avatar.n_points
        self.splats = scene.add_gaussian_splats(
            "/avatar", centers=np.zeros((n, 3), np.float32), covariances=np.zeros((n, 3, 3), np.float32),
            rgbs=self._rgbs, opacities=self._opacities)
        self.points = scene.add_point_cloud("/bindings", points=np.zeros((n, 3), np.float32),
                                            colors=self._overlay_colours, point_size=0.0025, point_shape="circle",
                                            precision="float32", visible=False)

    def _build_gui(self) -> None:
        gui, c = self.server.gui, self.controls
        head_model = self.avatar.head_model
        gui.add_markdown(f"**{self.source.label}**  \n{self.avatar.n_points:,} splats on {head_model.name}")
        with gui.add_folder("Motion"):
            c["motion"] = gui.add_dropdown("motion", [NO_MOTION, *self.motions], initial_value=NO_MOTION)
            c["play"] = gui.add_button("Play", hint="play / pause the motion")
            c["frame"] = gui.add_slider("frame", min=0, max=1, step=1, initial_value=0, disabled=True)
            c["fps"] = gui.add_number("fps", 25.0, min=1.0, max=120.0, step=1.0)
            c["drive_path"] = gui.add_text("driving npz", "", hint="a path on the server: avp npz, GaussianAvatars "
                                           "flame_param.npz or a VHAP flame_param folder")
            c["load_drive"] = gui.add_button("Load driving sequence")
        with gui.add_folder("Animation"):
            c["animation"] = gui.add_dropdown("animation", list(ANIMATION_MODES), initial_value=self.avatar.animation,
                                              hint="lbs: the paper's extra-vertex skinning; face_frame: "
                                                   "GaussianAvatars' rigid triangle frames")
            c["overlay"] = gui.add_checkbox("show points / bindings", False,
                                            hint="every splat's centre, coloured by its triangle's head region")
            self._legend = gui.add_markdown(self._legend_text(), visible=False)
        for key, folder in ANGLE_FOLDERS.items():
            with gui.add_folder(folder, expand_by_default=key == "jaw_pose"):
                for name, label, field_, _, limit in ANGLE_SLIDERS:
                    if field_ == key:
                        c[name] = gui.add_slider(f"{label} (deg)", min=-limit if name != "jaw_open" else 0.0,
                                                 max=limit, step=0.5, initial_value=0.0)
        with gui.add_folder("Eyes", expand_by_default=False):
            for name, label, _, limit in GAZE_SLIDERS:
                c[name] = gui.add_slider(f"{label} (deg)", min=-limit, max=limit, step=0.5, initial_value=0.0)
        self.n_expr_sliders = min(int(self._n_expr_requested), head_model.n_expr)
        with gui.add_folder("Expression"):
            for i, label in enumerate(_expression_labels(head_model, self.n_expr_sliders)):
                c[f"expr_{i}"] = gui.add_slider(label, min=-3.0, max=3.0, step=0.05, initial_value=0.0)
        with gui.add_folder("Render"):
            c["reset"] = gui.add_button("Reset sliders")
            c["camera"] = gui.add_dropdown("PNG camera", list(CAMERAS), initial_value=CAMERAS[0])
            c["png_size"] = gui.add_number("PNG height (px)", 512, min=32, max=4096, step=1)
            c["render_png"] = gui.add_button("Render PNG (avp renderer)")
            self.status = gui.add_markdown("\n\n".join(self.source.notes))

        pose_controls = [n for n in c if n.startswith(("global_", "neck_", "jaw_", "gaze_", "expr_"))]
        for name in [*pose_controls, "frame"]:
            c[name].on_update(self._on_pose)
        c["motion"].on_update(self._on_motion)
        c["animation"].on_update(self._on_animation)
        c["overlay"].on_update(self._on_overlay)
        c["play"].on_click(self._on_play)
        c["reset"].on_click(self._on_reset)
        c["render_png"].on_click(self._on_render)
        c["load_drive"].on_click(self._on_load_drive)

    def _legend_text(self) -> str:
        from avp.view.splats import REGION_COLOURS

        rows = [f"<span style='color:rgb{REGION_COLOURS[name]}'>&#9679;</span> {name} ({n})"
                for name, n in self.region_counts.items()]
        return "  \n".join(rows)

    # ------------------------------------------------------------------------------------------ the pose
    def motion_frame(self) -> HeadParams:
        """``[1]`` parameters of the selected motion's current frame (the rest pose without a motion)."""
        name = self.controls["motion"].value
        if name == NO_MOTION:
            return self.avatar.neutral(1).to("cpu")
        seq = self.motions[name]
        t = min(int(self.controls["frame"].value), seq.n_frames - 1)
        return seq.head.map(lambda x: x[t : t + 1].float().cpu().clone())

    def head_params(self) -> HeadParams:
        """``[1]`` the pose the controls describe: the motion frame plus the sliders (see the module docstring)."""
        c = self.controls
        head = self.motion_frame()
        for name, _, field_, axis, _ in ANGLE_SLIDERS:
            getattr(head, field_)[0, axis] += math.radians(float(c[name].value))
        for name, _, axis, _ in GAZE_SLIDERS:
            head.eyes_pose[0, axis] += math.radians(float(c[name].value))
            head.eyes_pose[0, 3 + axis] += math.radians(float(c[name].value))
        for i in range(self.n_expr_sliders):
            head.expr[0, i] += float(c[f"expr_{i}"].value)
        return head

    def refresh(self) -> None:
        """Pose the avatar as the controls say and send the splats (and the overlay when shown)."""
        with self._lock:
            self.posed = self.avatar.animate(self.head_params())  # [1, N]
            centers, covariances = pose_arrays(self.posed)
            self.splats.set_gaussians(centers, covariances, self._rgbs, self._opacities)
            if self.points.visible:
                self.points.points = centers
            self.updates += 1

    # ------------------------------------------------------------------------------------------ callbacks
    def _on_pose(self, _: Any) -> None:
        self.refresh()

    def _on_motion(self, _: Any) -> None:
        name = self.controls["motion"].value
        frame = self.controls["frame"]
        with self._lock:
            if name == NO_MOTION:
                self._set_playing(False)
                frame.disabled = True
            else:
                seq = self.motions[name]
                frame.max = max(1, seq.n_frames - 1)
                frame.disabled = False
                self.controls["fps"].value = float(seq.fps)
            if frame.value != 0:
                frame.value = 0  # refreshes through the frame's callback
            else:
                self.refresh()

    def _on_animation(self, _: Any) -> None:
        with self._lock:
            self.avatar = dataclasses.replace(self.avatar, animation=self.controls["animation"].value)
            self.refresh()

    def _on_overlay(self, _: Any) -> None:
        with self._lock:
            shown = bool(self.controls["overlay"].value)
            self.points.visible = shown
            self._legend.visible = shown
            if shown:
                self.points.points = pose_arrays(self.posed)[0]

    def _set_playing(self, playing: bool) -> None:
        self._playing = playing and self.controls["motion"].value != NO_MOTION
        self.controls["play"].label = "Pause" if self._playing else "Play"

    def _on_play(self, _: Any) -> None:
        self._set_playing(not self._playing)

    def _on_reset(self, _: Any) -> None:
        with self._lock:
            for name, handle in self.controls.items():
                if name.startswith(("global_", "neck_", "jaw_", "gaze_", "expr_")):
                    handle.value = 0.0

    def _on_render(self, _: Any) -> None:
        try:
            path = self.render_png()
        except Exception as e:  # a failed render must not take the server down; say why in the GUI
            self.status.content = f"render failed: {type(e).__name__}: {e}"
            return
        self.status.content = f"wrote `{path}`"

    def _on_load_drive(self, _: Any) -> None:
        text = self.controls["drive_path"].value.strip()
        try:
            self.load_motion(text)
        except (ViewError, ValueError, FileNotFoundError) as e:
            self.status.content = f"could not load a driving sequence: {e}"

    # ------------------------------------------------------------------------------------------ actions
    def load_motion(self, path: str | Path) -> str:
        """Load a driving npz (or VHAP folder), add it to the motion dropdown and select it; returns its name."""
        notes: list[str] = []
        seq = load_drive(path, self.avatar, notes)
        name = Path(path).name or str(path)
        with self._lock:
            self.motions[name] = seq
            self.controls["motion"].options = [NO_MOTION, *self.motions]
            self.controls["motion"].value = name
        self.status.content = "\n\n".join([f"loaded `{path}`: {seq.n_frames} frames at {seq.fps:g} fps", *notes])
        return name

    def png_camera(self) -> tuple[Cameras, str]:
        """The camera of the PNG: the first browser's view (``browser view`` and a browser connected), else the
        frontal training camera; and which one it is."""
        size = int(self.controls["png_size"].value)
        clients = self.server.get_clients()
        if self.controls["camera"].value == "browser view" and clients:
            cam = clients[min(clients)].camera
            return viser_camera(cam.wxyz, cam.position, cam.fov, cam.aspect, size), "browser view"
        return self.avatar.view_cameras([0.0], size=size), "frontal"

    def render_png(self, path: str | Path | None = None) -> Path:
        """Render the current pose with :meth:`Avatar.render` (white background) and write a PNG; returns its path
        (default: ``out_dir/render_NNNN.png``, numbered on)."""
        from PIL import Image

        from avp.atomic import atomic_open

        with self._lock:
            cameras, which = self.png_camera()
            head = self.head_params()
            rgb = self.avatar.render(cameras, head).rgb[0, 0]  # [3, H, W]
        if path is None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            existing = sorted(self.out_dir.glob("render_*.png"))
            path = self.out_dir / f"render_{len(existing):04d}.png"
        path = Path(path)
        image = (rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        with atomic_open(path, "wb") as f:
            Image.fromarray(image).save(f, format="PNG")
        self.renders.append(path)
        self.last_render_camera = which
        return path.resolve()

    # ------------------------------------------------------------------------------------------ playback
    def _play_loop(self) -> None:
        """Advance the frame at the motion's rate while playing; a slow update skips frames rather than lagging."""
        start, first = time.perf_counter(), 0
        was_playing = False
        while not self._stop.is_set():
            if not self._playing:
                was_playing = False
                self._stop.wait(0.05)
                continue
            frame = self.controls["frame"]
            fps = max(float(self.controls["fps"].value), 1e-3)
            if not was_playing:
                start, first, was_playing = time.perf_counter(), int(frame.value), True
            name = self.controls["motion"].value
            if name not in self.motions:
                self._stop.wait(0.05)
                continue
            n = self.motions[name].n_frames
            target = (first + int((time.perf_counter() - start) * fps)) % n
            if target != frame.value:
                frame.value = target
            self._stop.wait(0.5 / fps)

    def serve_forever(self, seconds: float | None = None) -> None:
        """Block until Ctrl-C (or ``seconds`` have passed), then stop."""
        try:
            self._stop.wait(seconds)
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Stop playback and the server (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._player.join(timeout=2)
        with contextlib.redirect_stdout(io.StringIO()):
            self.server.stop()

    def __enter__(self) -> AvatarViewer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
