"""``avp view``: look at an avatar and drive it in the browser (a local viser web viewer; WebGL splats client-side).

- :mod:`avp.view.source`: the three inputs (an ``avp avatarize`` folder or avatar folder, a GaussianAvatars
  ``point_cloud.ply`` + ``flame_param.npz`` folder, or a decoder checkpoint and a photo) -> :class:`ViewSource`;
- :mod:`avp.view.splats`: the cheap per-frame path, a posed :class:`~avp.types.GaussianCloud` -> the arrays viser
  sends (centres, covariances, colours, opacities), and the head-region colours of the bindings overlay;
- :mod:`avp.view.app`: :class:`~avp.view.app.AvatarViewer`, the viser server and its GUI (needs the ``view`` extra);
- :mod:`avp.view.cli`: the ``avp view`` verb; :mod:`avp.view.bench`: what ``avp bench view`` measures.

Nothing here imports viser at import time: ``import avp.view`` works without the extra, and starting a viewer without
it fails with :class:`ViewerUnavailable`, naming the extra to install.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ViewError", "ViewerUnavailable", "require_viser"]


class ViewError(ValueError):
    """An input the viewer cannot show, or a server it cannot start; the message names the file or the port."""


class ViewerUnavailable(ImportError):
    """viser (the ``view`` extra) is not installed."""


def require_viser() -> Any:
    """The ``viser`` module, or :class:`ViewerUnavailable` saying how to install it."""
    try:
        import viser
    except ImportError as e:
        raise ViewerUnavailable("avp view needs viser, which is not installed: pip install -e '.[view]' "
                                "(or `make install`, whose default EXTRAS include view)") from e
    return viser
