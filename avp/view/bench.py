"""What ``avp bench view`` measures: splat updates per second of the viewer's per-frame path, and the synthetic
avatar it (and the viewer's tests) use.

One update is what a slider change or a playback frame costs: :meth:`Avatar.animate` of one frame, the conversion to
viser's arrays (:func:`avp.view.splats.pose_arrays`), and viser packing the splat buffer and sending it. The send is
measured with a real websocket client on loopback (what a browser's connection does, minus drawing), one update in
flight at a time: the clock stops when the client has received the update's splat buffer.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from typing import Any

import numpy as np
import torch

from avp.models.avatar import Avatar

__all__ = ["measure_updates", "synthetic_avatar"]


def synthetic_avatar(n_points: int = 10_000, *, seed: int = 0, animation: str = "lbs") -> Avatar:
    """A synthetic subject's teacher cloud (``avp data synth``'s, about ``n_points`` splats) as an avatar on the
    built-in head: a head that looks like one, made in seconds, with no checkpoint."""
    from avp.data.schema import teacher_cloud
    from avp.data.synthetic.generate import SynthConfig, make_subject
    from avp.head import HeadConfig, load_head_model
    from avp.types import HeadParams

    config = HeadConfig()
    head_model = load_head_model(config)
    synth = SynthConfig(subjects=1, views=1, frames=1, size=16, portrait_size=16, points=(n_points, n_points),
                        seed=seed)
    subject = make_subject(synth, 0, "train", head_model)
    cloud = teacher_cloud(subject.gaussians).map(lambda t: t.float())
    binding = torch.from_numpy(subject.gaussians.binding.astype(np.int64))
    shape = torch.as_tensor(np.asarray(subject.head["shape"]), dtype=torch.float32).reshape(-1)
    with torch.no_grad():
        rig = head_model.rig(binding[None], cloud.means, shape[None])
    portrait_head = HeadParams.zeros(1, n_shape=head_model.n_shape, n_expr=head_model.n_expr)
    portrait_head.shape = shape[None].clone()
    return Avatar(cloud=cloud, binding=binding, points=cloud.means[0].clone(), shape=shape, head_model=head_model,
                  rig=rig, animation=animation, portrait_head=portrait_head, head_config=config,
                  meta={"source": f"synthetic subject (seed {seed}, {n_points} points)"})


def _stats(times: list[float]) -> dict[str, float]:
    return {"median_ms": round(1e3 * statistics.median(times), 3), "min_ms": round(1e3 * min(times), 3)}


class _Receiver:
    """A websocket client of the viewer in a thread, counting the bytes it receives."""

    def __init__(self, url: str) -> None:
        self.received = 0
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run(url)), daemon=True)
        self._thread.start()

    async def _run(self, url: str) -> None:
        import websockets

        async with websockets.connect(url, max_size=None, subprotocols=["viser-v1.1.1"]) as ws:  # type: ignore
            self.ready.set()
            while not self._stop.is_set():
                try:
                    message = await asyncio.wait_for(ws.recv(), 0.1)
                except asyncio.TimeoutError:
                    continue
                self.received += len(message)

    def wait_for(self, total: int, timeout: float = 30.0) -> bool:
        end = time.perf_counter() + timeout
        while self.received < total and time.perf_counter() < end:
            time.sleep(0.0005)
        return self.received >= total

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def measure_updates(avatar: Avatar, *, frames: int = 100, warmup: int = 5, send: bool = True) -> dict[str, Any]:
    """Per-update cost of animating ``avatar`` through the ``talk`` motion and converting (and, with ``send`` and
    viser installed, packing and sending) each frame; returns milliseconds per stage and updates per second."""
    from avp.driving import builtin_motion
    from avp.view.splats import pose_arrays, static_arrays

    seq = builtin_motion("talk", avatar.head_model, frames=frames + warmup, shape=avatar.shape.cpu())
    head = seq.head
    animate_t, convert_t = [], []
    arrays = []
    for t in range(frames + warmup):
        t0 = time.perf_counter()
        posed = avatar.animate(head.map(lambda x, t=t: x[t : t + 1]))
        t1 = time.perf_counter()
        arrays.append(pose_arrays(posed))
        t2 = time.perf_counter()
        if t >= warmup:
            animate_t.append(t1 - t0)
            convert_t.append(t2 - t1)
    result: dict[str, Any] = {"n_splats": avatar.n_points, "frames": frames, "animation": avatar.animation,
                              "animate": _stats(animate_t), "convert": _stats(convert_t)}
    cheap = [a + c for a, c in zip(animate_t, convert_t)]
    result["animate_convert_updates_per_s"] = round(1.0 / statistics.median(cheap), 1)
    if send:
        result.update(_measure_send(avatar, arrays[warmup:], static_arrays(avatar.cloud), cheap))
    return result


def _measure_send(avatar: Avatar, arrays: list[tuple[np.ndarray, np.ndarray]],
                  static: tuple[np.ndarray, np.ndarray], cheap: list[float]) -> dict[str, Any]:
    """Pack + send ``arrays`` to a connected websocket client, back to back."""
    import contextlib
    import io

    try:
        import viser
    except ImportError:
        return {"send": "viser not installed (the view extra)"}
    with contextlib.redirect_stdout(io.StringIO()):
        server = viser.ViserServer(host="127.0.0.1", port=0, label="avp bench view", verbose=False)
    receiver = None
    try:
        n = avatar.n_points
        handle = server.scene.add_gaussian_splats("/avatar", centers=np.zeros((n, 3), np.float32),
                                                  covariances=np.zeros((n, 3, 3), np.float32), rgbs=static[0],
                                                  opacities=static[1])
        receiver = _Receiver(f"ws://127.0.0.1:{server.get_port()}")
        if not receiver.ready.wait(10):
            return {"send": "no websocket client could connect"}
        time.sleep(0.5)  # the initial scene replay
        pack_t, send_t = [], []
        buffer_bytes = n * 32  # viser's 8 uint32 per splat, sent raw after the compressed header
        for centers, cov in arrays:
            # one update in flight at a time: viser coalesces queued updates of a node (a slow client gets the
            # latest pose, not a backlog), so back-to-back sends would measure the coalescing, not the link
            before = receiver.received
            t0 = time.perf_counter()
            handle.set_gaussians(centers, cov, static[0], static[1])
            t1 = time.perf_counter()
            if not receiver.wait_for(before + buffer_bytes, timeout=10):
                return {"pack": _stats(pack_t or [t1 - t0]),
                        "send": f"the client did not receive an update within 10 s ({receiver.received - before} B)"}
            pack_t.append(t1 - t0)
            send_t.append(time.perf_counter() - t1)
        per_update = [c + p + s for c, p, s in zip(cheap, pack_t, send_t)]
        out: dict[str, Any] = {"pack": _stats(pack_t), "send": _stats(send_t), "bytes_per_update": buffer_bytes,
                               "updates_per_s": round(1.0 / statistics.median(per_update), 1)}
        return out
    finally:
        if receiver is not None:
            receiver.close()
        with contextlib.redirect_stdout(io.StringIO()):
            server.stop()
