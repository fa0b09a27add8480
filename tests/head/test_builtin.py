"""The built-in procedural head: topology, symmetry, regions, skinning and bases."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from avp.head import BUILTIN_NAME, EXPRESSION_COMPONENTS, JOINT_NAMES, SHAPE_COMPONENTS, HeadModel, builtin_assets
from avp.head import builtin as B
from avp.types import HeadParams


def test_identity_and_sizes(builtin_model: HeadModel) -> None:
    m = builtin_model
    assert m.name == BUILTIN_NAME == "builtin-v1"
    assert 4000 <= m.n_vertices <= 7000 and 9000 <= m.n_faces <= 12000  # FLAME with teeth: 5,143 / 10,144
    assert m.n_shape == len(SHAPE_COMPONENTS) >= 20 and m.n_expr == len(EXPRESSION_COMPONENTS) >= 10
    assert m.joint_names == JOINT_NAMES and m.parents == [-1, 0, 1, 1, 1]
    assert m.posedirs is None


def test_generation_is_deterministic() -> None:
    a = builtin_assets()
    B._assets.cache_clear()
    B._geometry.cache_clear()
    b = builtin_assets()
    assert a is not b
    for key in ("v_template", "faces", "shapedirs", "exprdirs", "weights", "J_regressor"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
    assert a.face_regions.keys() == b.face_regions.keys()


def _directed_edges(faces: np.ndarray) -> Counter:
    return Counter(map(tuple, np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).tolist()))


def test_every_part_is_closed_and_consistently_oriented_outwards() -> None:
    a = builtin_assets()
    g = B._geometry()
    edges = _directed_edges(a.faces)
    assert max(edges.values()) == 1, "a directed edge is used twice: inconsistent winding"
    assert all((b, a_) in edges for a_, b in edges), "open boundary: every edge must have a twin"
    V = a.v_template
    # the skin with its pockets is one closed surface; the others are separate closed parts
    groups = {"head": ("skin", "mouth_bag", "socket_l", "socket_r"), "eyeball_l": ("eyeball_l",),
              "upper_teeth": ("upper_teeth",), "lower_teeth": ("lower_teeth",), "tongue": ("tongue",)}
    for name, parts in groups.items():
        tri = V[a.faces[np.isin(g.face_parts, parts)]]
        volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
        assert volume > 0, f"{name} is inside out"
    head_volume = np.einsum("ij,ij->i", *(lambda t: (t[:, 0], np.cross(t[:, 1], t[:, 2])))(V[a.faces[np.isin(
        g.face_parts, groups["head"])]])).sum() / 6
    assert 0.003 < head_volume < 0.006  # litres: ~4 l for a head and neck


def test_no_degenerate_triangles(builtin_model: HeadModel) -> None:
    V, F = builtin_model.v_template.double(), builtin_model.faces
    area = torch.linalg.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]]).norm(dim=-1) / 2
    assert area.min() > 2e-7  # 0.2 mm^2


def test_real_head_size_and_orientation(builtin_model: HeadModel) -> None:
    V = builtin_model.v_template
    region_v = lambda name: V[torch.unique(builtin_model.faces[builtin_model.face_regions[name]])]
    assert 0.20 < V[:, 1].max() - region_v("chin")[:, 1].min() < 0.26  # crown to chin
    skull = V[V[:, 1] > -0.05]
    assert 0.14 < skull[:, 0].max() - skull[:, 0].min() < 0.2  # ear to ear
    assert 0.18 < skull[:, 2].max() - skull[:, 2].min() < 0.25  # nose tip to the back of the head
    assert region_v("nose")[:, 2].max() == V[:, 2].max()  # the nose tip is the frontmost point: the face looks along +z
    assert V[:, 1].abs().max() < 0.25 and V.mean(0).abs().max() < 0.06  # centred near the origin


def test_mirror_symmetry(builtin_model: HeadModel) -> None:
    V = builtin_model.v_template.double().numpy()
    key = lambda a: np.round(a * 1e7).astype(np.int64)  # 0.1 micrometre
    a = key(V)
    b = key(V * np.array([-1.0, 1.0, 1.0]))
    sort = lambda k: k[np.lexsort(k.T[::-1])]
    assert np.abs(sort(a) - sort(b)).max() <= 1


def test_regions_partition_the_skin_and_sit_where_they_belong(builtin_model: HeadModel) -> None:
    m = builtin_model
    r = {k: v.numpy() for k, v in m.face_regions.items()}
    for name in ("scalp", "face", "forehead", "brows", "eyes", "nose", "lips", "chin", "jaw", "cheeks", "ears", "neck",
                 "teeth", "mouth_cavity"):
        assert len(r[name]) > 20, name
    parts = np.concatenate([r[k] for k in B.SKIN_REGIONS])
    assert len(parts) == len(np.unique(parts)) == len(r["skin"])  # every skin triangle in exactly one part
    assert set(np.concatenate([r["skin"], r["eyes"], r["teeth"], r["mouth_cavity"]])) == set(range(m.n_faces))
    c = m.v_template[m.faces].mean(1).numpy()
    y, z = c[:, 1], c[:, 2]
    assert np.argmax(y) in r["scalp"] and z[r["scalp"]].mean() < z[r["forehead"]].mean()  # crown and back of head
    assert y[r["forehead"]].mean() > y[r["brows"]].mean() > y[r["nose"]].mean()
    assert y[r["nose"]].mean() > y[r["lips"]].mean() > y[r["chin"]].mean() > y[r["neck"]].mean()
    assert np.abs(c[r["ears"], 0]).min() > 0.06
    assert z[r["nose"]].max() > z[r["cheeks"]].max()
    assert np.isin(r["iris"], r["eyeballs"]).all() and np.isin(r["pupils"], r["iris"]).all()


def test_skinning_weights(builtin_model: HeadModel) -> None:
    m = builtin_model
    W = m.lbs_weights
    assert torch.allclose(W.sum(1), torch.ones(m.n_vertices), atol=1e-6) and W.min() >= 0
    region_w = lambda region: W[torch.unique(m.faces[m.face_regions[region]])]
    assert (region_w("left_eyeball")[:, 3] == 1).all() and (region_w("right_eyeball")[:, 4] == 1).all()
    assert (region_w("upper_teeth")[:, 1] == 1).all() and (region_w("lower_teeth")[:, 2] == 1).all()
    scalp = torch.unique(m.faces[m.face_regions["scalp"]])
    assert W[scalp[m.v_template[scalp, 1] > -0.02], 2].max() == 0  # only the sideburns feel the jaw
    assert region_w("forehead")[:, 2].max() == 0 and region_w("nose")[:, 2].max() == 0
    assert region_w("chin")[:, 2].mean() > 0.8
    neck = region_w("neck")
    assert neck[:, 0].max() == 1 and neck[:, 0].min() == 0  # root at the base, blending into the head
    # smooth: neighbouring vertices never differ by more than a fraction of the range (except across the slits)
    e = torch.cat([m.faces[:, [0, 1]], m.faces[:, [1, 2]], m.faces[:, [2, 0]]])
    skin = torch.zeros(m.n_vertices, dtype=torch.bool)
    skin[m.faces[m.face_regions["skin"]].flatten()] = True
    e = e[skin[e].all(1)]
    V = m.v_template
    lips = (V[:, 0].abs() < 0.03) & ((V[:, 1] - B.MOUTH_Y).abs() < 0.01) & (V[:, 2] > 0.08)
    e = e[~lips[e].any(1)]  # the mouth corners hinge between the lips (0 above, 1 below)
    e = e[(V[e, 1] > -0.17).all(1)]  # the neck's base is all root
    assert (W[e[:, 0], :3] - W[e[:, 1], :3]).abs().max() < 0.4


def test_joints_sit_in_the_head(builtin_model: HeadModel) -> None:
    J = (builtin_model.J_regressor @ builtin_model.v_template).double()
    assert J[:3, 0].abs().max() < 1e-6  # root, neck and jaw on the midline
    assert J[0, 1] < J[1, 1] < J[2, 1] < J[3, 1]  # root below neck below jaw below the eyes
    assert torch.allclose(J[3], torch.tensor(B.EYE_CENTER, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(builtin_model.J_regressor.sum(1), torch.ones(5), atol=1e-6)


@pytest.mark.parametrize("name", ["blink_left", "smile", "lips_part"])
def test_expressions_move_what_they_name(builtin_model: HeadModel, name: str) -> None:
    m = builtin_model
    k = [n for n, _ in EXPRESSION_COMPONENTS].index(name)
    d = m.exprdirs[..., k].norm(dim=-1)
    region = {"blink_left": "eyelids", "smile": "lips", "lips_part": "lips"}[name]
    verts = torch.unique(m.faces[m.face_regions[region]])
    assert d[verts].max() > 2e-3 and d.max() < 0.01
    if name == "blink_left":
        assert d[m.v_template[:, 0] < -0.01].max() == 0  # only the left eye


def test_blink_two_closes_the_eye(builtin_model: HeadModel) -> None:
    m = builtin_model
    g = B._geometry()
    slit = g.slits["eye_l"]
    j = (slit.j0 + slit.j1) // 2
    upper, lower = g.grid_id(slit.row, j), slit.lower_ids[j]
    p = HeadParams.zeros(1, n_shape=m.n_shape, n_expr=m.n_expr)
    gap = lambda v: float(v[0, upper, 1] - v[0, lower, 1])
    assert gap(m(p).vertices) > 0.006  # open: ~8 mm between the lid margins
    p.expr[0, [n for n, _ in EXPRESSION_COMPONENTS].index("blink_left")] = 2.0
    assert abs(gap(m(p).vertices)) < 0.0015
