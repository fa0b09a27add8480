"""The built-in procedural head (``builtin-v1``): a FLAME-like head model generated in code, no asset files.

Geometry. The skin is a closed surface sculpted as a smooth signed-distance field (skull, face, jaw, chin, neck,
nose, lips, brow ridge, cheekbones, orbits, eyelids, ears; :func:`_skin_sdf`) and meshed by casting rays from a
point inside the head along a latitude-longitude grid (denser over the face and ears), so the skin is one grid,
closed by a fan at the crown and a flat disc under the neck. Three slits cut the grid along a row: the mouth and the
two eye openings. A slit duplicates its row between its two corner vertices, so the upper and lower edges (lips,
eyelid margins) are distinct vertices and jaw opening or blinking really opens them. Each slit's edge loop is
closed by a pocket: the mouth cavity (a bag reaching back towards the throat) and two eye sockets hugging the
eyeballs. Separate closed meshes: two eyeballs (front pole on the gaze axis), upper and lower teeth, a tongue.

Rig. FLAME's joints and tree (root -> neck -> jaw, left eye, right eye), joints regressed from vertices (averages of
skin vertices around each joint, exact eyeball centres). Skinning weights are harmonic (Laplace-smooth over the
mesh, respecting the slits) between constraint regions: the lower lip and chin follow the jaw, the upper lip and
everything above the cheekbones the neck (the head), the lower neck the root; eyeballs are rigid to their eye joints,
upper teeth to the neck and lower teeth and tongue to the jaw (GaussianAvatars' convention). No pose correctives.

Bases. Shape and expression blendshapes are smooth displacement fields of the template (masks around anatomical
landmarks); the slits' sides are known, so lip and eyelid fields move each side separately. Units: every shape
component is scaled so that a coefficient of 1 is about one standard deviation of adult variation (a few mm;
see ``SHAPE_COMPONENTS``), so coefficients drawn from N(0, I) give plausible heads and +-3 stays human. An expression
coefficient of 1 is a moderate expression, 2 a strong one (blink 2 closes the eye, smile 2 is a broad smile);
beyond +-3 meshes self-intersect. Eyeballs only translate under the shape fields (they stay spheres).

Everything is deterministic (fixed formulas, no random numbers) and cached per process; building takes a few tenths
of a second.

Files, in build order: :mod:`~avp.head.builtin_skin` (design constants, the skin SDF, the rays),
:mod:`~avp.head.builtin_grid` (the grid, slits, mesh building blocks), :mod:`~avp.head.builtin_parts` (pockets,
eyeballs, teeth, tongue), :mod:`~avp.head.builtin_geometry` (the assembled mesh and its slit sides),
:mod:`~avp.head.builtin_skinning` (weights, joint regressor), :mod:`~avp.head.builtin_bases` (shape and expression
fields), :mod:`~avp.head.builtin_regions` (face regions); this file puts them together as :class:`HeadAssets`.
"""

from __future__ import annotations

import functools

from avp.head.builtin_bases import EXPRESSION_COMPONENTS, SHAPE_COMPONENTS, _expression_basis, _shape_basis
from avp.head.builtin_geometry import _geometry
from avp.head.builtin_regions import SKIN_REGIONS as SKIN_REGIONS  # re-exported: tests read it here
from avp.head.builtin_regions import _regions
from avp.head.builtin_skin import EYE_CENTER as EYE_CENTER  # re-exported, as the mouth line below
from avp.head.builtin_skin import MOUTH_Y as MOUTH_Y
from avp.head.builtin_skinning import _joint_regressor, _skinning_weights
from avp.head.model import FLAME_PARENTS, JOINT_NAMES, HeadAssets

__all__ = ["BUILTIN_NAME", "EXPRESSION_COMPONENTS", "SHAPE_COMPONENTS", "builtin_assets"]

BUILTIN_NAME = "builtin-v1"


@functools.lru_cache(maxsize=1)
def _assets() -> HeadAssets:
    g = _geometry()
    return HeadAssets(
        name=BUILTIN_NAME,
        v_template=g.vertices,
        shapedirs=_shape_basis(g),
        exprdirs=_expression_basis(g),
        J_regressor=_joint_regressor(g),
        weights=_skinning_weights(g),
        faces=g.faces,
        posedirs=None,
        parents=FLAME_PARENTS,
        joint_names=JOINT_NAMES,
        face_regions=_regions(g),
    )


def builtin_assets() -> HeadAssets:
    """The built-in head's arrays (built once per process; callers must not modify them)."""
    return _assets()
