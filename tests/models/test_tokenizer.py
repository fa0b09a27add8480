"""PointTokenizer: round trip, ordering, permutation invariance, vocabulary and bad input."""

from __future__ import annotations

import pytest
import torch

from avp.models.tokenizer import ORDERS, PointTokenizer, TokenizerConfig

BOUNDS = torch.tensor([[-0.2, -0.3, -0.15], [0.2, 0.25, 0.2]])


def random_cloud(n: int, n_faces: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    points = BOUNDS[0] + torch.rand(n, 3, generator=g) * (BOUNDS[1] - BOUNDS[0])
    return points, torch.randint(0, n_faces, (n,), generator=g)


def lexicographic_increasing(rows: torch.Tensor, priority: tuple[int, ...]) -> bool:
    keys = [tuple(int(r[k]) for k in priority) for r in rows]
    return all(a < b for a, b in zip(keys, keys[1:]))


@pytest.mark.parametrize("levels", [1024, 256])
def test_round_trip_within_half_a_bin_and_bindings_preserved(levels: int) -> None:
    tok = PointTokenizer(BOUNDS, n_faces=500, levels=levels)
    points, binding = random_cloud(2000, 500)
    tokens = tok.encode(points, binding)
    decoded, faces = tok.decode(tokens)
    # every input point's bin centre is within half a bin, and the decoded set is exactly the set of (bin, face)
    centres = tok.dequantize(tok.quantize(points))
    assert ((centres - points).abs() <= tok.bin_size / 2 + 1e-7).all()
    expected = {tuple(q) + (int(b),) for q, b in zip(tok.quantize(points).tolist(), binding)}
    got = {tuple(q) + (int(b),) for q, b in zip(tok.quantize(decoded).tolist(), faces)}
    assert got == expected
    assert len(decoded) == len(expected)


def test_sequence_layout_and_vocabulary() -> None:
    tok = PointTokenizer(BOUNDS, n_faces=10144)
    assert tok.vocab_size == 1024 + 10144 + 3
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (11168, 11169, 11170)
    points, binding = random_cloud(50, 10144)
    tokens = tok.encode(points, binding)
    assert tokens[0] == tok.bos_id and tokens[-1] == tok.eos_id and len(tokens) == 4 * 50 + 2
    body = tokens[1:-1].reshape(-1, 4)
    assert (body[:, :3] < 1024).all() and (body[:, 3] >= 1024).all() and (body[:, 3] < 1024 + 10144).all()
    roles = PointTokenizer.role_of_position(torch.arange(len(tokens) - 1))
    assert roles[0] == 4 and roles[1:5].tolist() == [0, 1, 2, 3] and roles[5] == 0


def test_default_order_is_y_then_z_then_x_then_face() -> None:
    tok = PointTokenizer(BOUNDS, n_faces=4)
    # hand-made levels: sorted by y, ties by z, then x, then the face
    q = torch.tensor([[5, 2, 9], [1, 2, 9], [7, 1, 3], [0, 2, 4], [1, 2, 9]])
    binding = torch.tensor([0, 3, 2, 1, 1])
    rows = tok.decode_rows(tok.encode(tok.dequantize(q), binding))
    assert rows.tolist() == [[7, 1, 3, 2], [0, 2, 4, 1], [1, 2, 9, 1], [1, 2, 9, 3], [5, 2, 9, 0]]


@pytest.mark.parametrize("order", [o for o in ORDERS if o != "random"])
def test_every_sorted_order_is_strictly_increasing(order: str) -> None:
    tok = PointTokenizer(BOUNDS, n_faces=3, levels=8, order=order)  # coarse: many ties and duplicates
    points, binding = random_cloud(300, 3, seed=1)
    rows = tok.decode_rows(tok.encode(points, binding))
    assert lexicographic_increasing(rows, tok.priority)


@pytest.mark.parametrize("order", ORDERS)
def test_permuting_the_input_gives_identical_tokens(order: str) -> None:
    g = torch.Generator().manual_seed(0)
    tok = PointTokenizer(BOUNDS, n_faces=20, order=order)
    points, binding = random_cloud(400, 20, seed=2)
    perm = torch.randperm(400, generator=g)
    if order == "random":  # the permutation comes from the generator, not from the input order
        a = tok.encode(points, binding, torch.Generator().manual_seed(5))
        b = tok.encode(points[perm], binding[perm], torch.Generator().manual_seed(5))
        c = tok.encode(points, binding, torch.Generator().manual_seed(6))
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert sorted(tok.decode_rows(a).tolist()) == sorted(tok.decode_rows(c).tolist())
    else:
        assert torch.equal(tok.encode(points, binding), tok.encode(points[perm], binding[perm]))


def test_exact_duplicates_are_removed_but_same_bin_other_face_is_kept() -> None:
    tok = PointTokenizer(BOUNDS, n_faces=5)
    p = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.1, 0.1, 0.1]])
    rows = tok.decode_rows(tok.encode(p, torch.tensor([2, 2, 4, 1])))
    assert len(rows) == 3
    assert sorted(rows[:, 3].tolist()) == [1, 2, 4]


def test_out_of_box_points_are_clamped_and_counted_or_rejected_when_strict() -> None:
    tok = PointTokenizer(BOUNDS, n_faces=2)
    p = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, -9.0, 0.0]])
    rows = tok.decode_rows(tok.encode(p, torch.tensor([0, 0, 0])))
    assert rows[:, 0].max() == 1023 and rows[:, 1].min() == 0
    assert tok.count_out_of_box(p[None], torch.tensor([[True, True, False]])).tolist() == [1]
    strict = PointTokenizer(BOUNDS, n_faces=2, strict=True)
    with pytest.raises(ValueError, match="2 point\\(s\\) lie outside the box"):
        strict.encode(p, torch.tensor([0, 0, 0]))
    strict.encode(p[:1], torch.tensor([0]))


def test_bad_input_gives_clear_errors() -> None:
    tok = PointTokenizer(BOUNDS, n_faces=10)
    points, binding = random_cloud(5, 10)
    with pytest.raises(ValueError, match="face index 10 outside the head model's faces \\[0, 10\\)"):
        tok.encode(points, torch.tensor([0, 1, 10, 2, 3]))
    with pytest.raises(ValueError, match="face index -1"):
        tok.encode(points, torch.tensor([0, 1, -1, 2, 3]))
    with pytest.raises(ValueError, match="empty"):
        tok.encode(points[:0], binding[:0])
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(points.clone().fill_(float("nan")), binding)
    with pytest.raises(ValueError, match="binding must be"):
        tok.encode(points, binding[:3])
    means = torch.stack([points, points])
    with pytest.raises(ValueError, match="sample 1 of the batch has an empty cloud"):
        tok.encode_batch(means, torch.stack([binding, binding]), torch.tensor([[True] * 5, [False] * 5]))
    with pytest.raises(ValueError, match="order must be one of"):
        PointTokenizer(BOUNDS, n_faces=10, order="yxy")
    with pytest.raises(ValueError, match="hi must exceed lo"):
        PointTokenizer(BOUNDS.flip(0), n_faces=10)


def test_decode_rejects_malformed_sequences() -> None:
    tok = PointTokenizer(BOUNDS, n_faces=10)
    tokens = tok.encode(*random_cloud(3, 10))
    with pytest.raises(ValueError, match="cut inside a point"):
        tok.decode(tokens[:-3])
    bad = tokens.clone()
    bad[4] = 3  # a coordinate where the face token belongs
    with pytest.raises(ValueError, match="position 4 is not a valid b token"):
        tok.decode(bad)
    # without BOS and with trailing PAD after EOS
    padded = torch.cat([tokens[1:], torch.full((5,), tok.pad_id)])
    assert torch.equal(tok.decode_rows(padded), tok.decode_rows(tokens))


def test_encode_batch_pads_and_matches_single_encodes() -> None:
    tok = PointTokenizer.from_config(TokenizerConfig(levels=512), BOUNDS, n_faces=7)
    a, fa = random_cloud(9, 7, seed=3)
    b, fb = random_cloud(9, 7, seed=4)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 4:] = False
    tokens, lengths = tok.encode_batch(torch.stack([a, b]), torch.stack([fa, fb]), mask)
    assert lengths.tolist() == [4 * 9 + 2, 4 * 4 + 2]
    assert torch.equal(tokens[0], tok.encode(a, fa))
    assert torch.equal(tokens[1, :18], tok.encode(b[:4], fb[:4]))
    assert (tokens[1, 18:] == tok.pad_id).all()
