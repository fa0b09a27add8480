"""PointGenerator: causality, KV-cache parity, windows (slices, equal coverage), RoPE shift invariance, point features,
the role-factored head's loss, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avp.models.generator import (
    GeneratorConfig,
    PointGenerator,
    point_features,
    role_cross_entropy,
    role_logits,
    training_windows,
)
from avp.models.layers import attend_one
from avp.models.tokenizer import PointTokenizer

VOCAB = 64 + 20 + 3  # levels 64, 20 faces
BOS, EOS, PAD = 84, 85, 86


def tiny(layers: int = 2, width: int = 32, heads: int = 4, **kw) -> PointGenerator:
    return PointGenerator(GeneratorConfig(n_layers=layers, width=width, n_heads=heads, **kw), VOCAB).eval()


def sequence(n_points: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Grammatical random sequences ``[batch, 4 n + 2]``."""
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(0, 64, (batch, n_points, 4), generator=g)
    body[..., 3] = 64 + torch.randint(0, 20, (batch, n_points), generator=g)
    return torch.cat([torch.full((batch, 1), BOS), body.flatten(1), torch.full((batch, 1), EOS)], dim=1)


def test_changing_a_future_token_leaves_earlier_logits_unchanged() -> None:
    g = torch.Generator().manual_seed(0)
    model = tiny()
    cond = torch.randn(2, 5, 32, generator=g)
    tokens = sequence(6)
    t = 9
    changed = tokens.clone()
    changed[:, t + 1] = (changed[:, t + 1] + 7) % 64
    a, b = model(tokens, cond), model(changed, cond)
    assert torch.allclose(a.logits[:, : t + 1], b.logits[:, : t + 1], atol=1e-6, rtol=0)
    assert not torch.allclose(a.logits[:, t + 1], b.logits[:, t + 1], atol=1e-3)


def test_kv_cache_decoding_equals_the_full_forward() -> None:
    g = torch.Generator().manual_seed(0)
    model = tiny(layers=3)
    cond = torch.randn(2, 5, 32, generator=g)
    tokens = sequence(8)
    full = model(tokens, cond)
    model.set_kv_cache(batch_size=2, max_len=tokens.shape[1])
    outs = [model(tokens[:, :5], cond, torch.arange(5))]  # prefill, then one token at a time
    outs += [model(tokens[:, p : p + 1], cond, torch.tensor([p])) for p in range(5, tokens.shape[1])]
    model.clear_kv_cache()
    logits = torch.cat([o.logits for o in outs], dim=1)
    hidden = torch.cat([o.hidden for o in outs], dim=1)
    assert (logits - full.logits).abs().max() <= 1e-5
    assert (hidden - full.hidden).abs().max() <= 1e-5
    assert not model.kv_cache_active


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_query_attention_is_the_fused_kernels(masked: bool, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 1, 16, generator=g)
    k, v = (torch.randn(3, 4, 40, 16, generator=g).to(dtype) for _ in range(2))
    mask = (torch.rand(3, 1, 1, 40, generator=g) < 0.6) | (torch.arange(40) == 0) if masked else None
    ref = F.scaled_dot_product_attention(q, k.float(), v.float(), attn_mask=mask)
    out = attend_one(q, k, v, mask)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert (out - ref).abs().max() <= 1e-5
    if masked:  # a masked key's value cannot reach the output
        poked = v + 100 * (~mask[:, 0, 0])[:, None, :, None].to(dtype)
        assert (attend_one(q, k, poked, mask) - out).abs().max() <= 1e-5


@pytest.mark.parametrize("cache_dtype", [None, torch.bfloat16])
def test_the_fixed_shape_step_computes_the_cached_forwards_hidden_states(cache_dtype) -> None:
    g = torch.Generator().manual_seed(0)
    model = tiny(layers=3)
    cond = torch.randn(2, 5, 32, generator=g)
    tokens = sequence(8)
    model.set_kv_cache(2, 24, cache_dtype)
    cached = [model(tokens[:, :5], cond, torch.arange(5))]
    cached += [model(tokens[:, p : p + 1], cond, torch.tensor([p])) for p in range(5, 14)]
    model.reset_kv_cache(start=5)  # a slide: slots past the re-encoded context hold stale keys the step must ignore
    model(tokens[:, 5:9], cond, torch.arange(5, 9))
    state = model.decode_state()
    stepped = []
    for p in range(9, 14):
        stepped.append(model.decode_step(tokens[:, p : p + 1], torch.tensor([p]), torch.tensor([p - 5]), state))
        model.advance_kv_cache()
    model.clear_kv_cache()
    window = model(tokens[:, 5:14], cond, torch.arange(5, 14))  # no cache: what a window starting at 5 computes
    tol = 1e-5 if cache_dtype is None else 2e-2
    assert (torch.stack(stepped, 1) - window.hidden[:, 4:]).abs().max() <= tol
    assert (torch.stack(stepped, 1) - torch.cat([o.hidden for o in cached[-5:]], 1)).abs().max() > 1e-3


def test_a_reset_cache_at_a_boundary_equals_a_forward_of_that_window() -> None:
    g = torch.Generator().manual_seed(0)
    model = tiny()
    cond = torch.randn(2, 5, 32, generator=g)
    tokens = sequence(8)
    model.set_kv_cache(2, 16)
    model(tokens[:, :10], cond, torch.arange(10))
    model.reset_kv_cache(start=5)  # slide: context now starts at point boundary 5
    cached = [model(tokens[:, 5:9], cond, torch.arange(5, 9))]
    cached += [model(tokens[:, p : p + 1], cond, torch.tensor([p])) for p in range(9, 20)]
    model.clear_kv_cache()
    window = model(tokens[:, 5:20], cond, torch.arange(5, 20))
    assert (torch.cat([o.logits for o in cached], dim=1) - window.logits).abs().max() <= 1e-5


def test_rope_makes_outputs_invariant_to_a_shift_of_all_positions() -> None:
    g = torch.Generator().manual_seed(0)
    model = tiny()
    cond = torch.randn(2, 5, 32, generator=g)
    tokens = sequence(5)[:, 1:17]  # a window starting at point boundary 1
    a = model(tokens, cond, torch.arange(1, 17))
    b = model(tokens, cond, torch.arange(4001, 4017))  # same roles (shift by a multiple of 4), far away
    assert (a.logits - b.logits).abs().max() <= 1e-4


def test_per_sample_positions_match_single_sample_forwards() -> None:
    g = torch.Generator().manual_seed(0)
    model = tiny()
    cond = torch.randn(2, 5, 32, generator=g)
    tokens = sequence(6)[:, :12]
    pos = torch.stack([torch.arange(0, 12), torch.arange(9, 21)])
    both = model(tokens, cond, pos)
    for i in range(2):
        one = model(tokens[i : i + 1], cond[i : i + 1], pos[i])
        assert (both.logits[i] - one.logits[0]).abs().max() <= 1e-5


def test_a_window_covering_the_sequence_is_the_full_training_step() -> None:
    g = torch.Generator().manual_seed(0)
    model = tiny().train()
    cond = torch.randn(2, 5, 32, generator=g)
    tokens = sequence(6)
    tokens[1, 14:] = PAD  # a shorter second sequence
    tokens[1, 13] = EOS
    lengths = torch.tensor([tokens.shape[1], 14])
    inputs, targets, positions = training_windows(tokens, lengths, window=10_000, pad_id=PAD)
    assert torch.equal(inputs, tokens[:, :-1]) and torch.equal(targets, tokens[:, 1:])
    assert torch.equal(positions, torch.arange(tokens.shape[1] - 1).expand(2, -1))
    windowed = F.cross_entropy(model(inputs, cond, positions).logits.flatten(0, 1), targets.flatten(), ignore_index=PAD)
    full_logits = model(tokens, cond).logits[:, :-1]
    full = F.cross_entropy(full_logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=PAD)
    assert torch.allclose(windowed, full, atol=1e-6)


def test_windows_are_slices_of_the_sequence_at_their_positions() -> None:
    """Every window: the inputs are the tokens at their positions from a point boundary (or BOS) on; the trained
    targets are the next tokens on one contiguous run from BOS or a point boundary (through EOS when it reaches the
    end); sequences that fit are trained whole."""
    n_points = torch.tensor([30, 30, 10, 1, 2, 29, 17, 25])
    tokens = sequence(30, batch=len(n_points), seed=1)
    lengths = 4 * n_points + 2
    for i, length in enumerate(lengths.tolist()):
        tokens[i, length - 1] = EOS
        tokens[i, length:] = PAD
    padded = torch.cat([tokens, torch.full((len(n_points), 64), PAD)], 1)
    g = torch.Generator().manual_seed(0)
    for window in (40, 41, 43, 120):
        for _ in range(100):
            inputs, targets, positions = training_windows(tokens, lengths, window=window, pad_id=PAD, generator=g)
            W = min(window, tokens.shape[1] - 1)
            assert inputs.shape == targets.shape == positions.shape == (len(n_points), W)
            starts = positions[:, 0]
            assert all(s == 0 or s % 4 == 1 for s in starts.tolist())
            assert torch.equal(positions, starts[:, None] + torch.arange(W))
            assert torch.equal(inputs, torch.gather(padded, 1, positions))
            trained = targets != PAD
            assert torch.equal(targets[trained], torch.gather(padded, 1, positions + 1)[trained])
            n_trained = trained.sum(1)
            assert bool((n_trained > 0).all())
            first = trained.long().argmax(1)  # first trained column; the run is contiguous
            column = torch.arange(W)
            assert torch.equal(trained, (column >= first[:, None]) & (column < (first + n_trained)[:, None]))
            piece_start = positions.gather(1, first[:, None])[:, 0]
            assert all(s == 0 or s % 4 == 1 for s in piece_start.tolist())
            piece_end = piece_start + n_trained  # one past the last trained input
            assert bool(((piece_end == lengths - 1) | (piece_end % 4 == 1)).all())  # ends at EOS or a boundary
            assert bool(((piece_end == lengths - 1) == (targets == EOS).any(1)).all())
            fits = lengths - 1 <= W
            assert torch.equal(starts[fits], torch.zeros_like(starts[fits]))  # trained whole
            assert torch.equal(n_trained[fits], (lengths - 1)[fits])
            slides = ~fits & (starts > 0)  # a window from a boundary holds W inputs of the sequence up to the piece
            assert bool((piece_end[slides] > positions[slides, -1] - 4).all())
            role = PointTokenizer.role_of_position(positions)
            faces = (inputs >= 64) & (inputs < 84)
            assert (faces <= (role == 3)).all() and (faces == (role == 3))[trained].all()  # faces exactly at b roles
    with pytest.raises(ValueError, match="at least one point"):
        training_windows(tokens, lengths, window=3, pad_id=PAD)


@pytest.mark.parametrize(("length", "window"), [
    (802, 512),  # the demo: 200 points, 512-token windows
    (402, 150),  # window < length / 2
    (402, 400),  # window just below the length
    (402, 198),  # window % 4 == 2
    (402, 131),  # window % 4 == 3
])
def test_every_target_is_trained_equally_often(length: int, window: int) -> None:
    """Coverage over 20,000 seeded draws: every target position (x1 after BOS, every coordinate and binding, EOS) is
    inside the trained part of the window equally often, within sampling noise (5 sigma: 3.5 % of the mean at two
    pieces, 6 % at four; the scheme's coverage is exactly 1 / pieces; the old uniform-start scheme had EOS at 1.4 %
    against 100 % in the middle for 802 / 512)."""
    draws = 20_000
    tokens = sequence((length - 2) // 4, batch=1).expand(draws, -1)
    inputs, targets, positions = training_windows(tokens, torch.full((draws,), length), window, pad_id=PAD,
                                                  generator=torch.Generator().manual_seed(0))
    trained = targets != PAD
    coverage = torch.bincount(positions[trained] + 1, minlength=length)[1:].double() / draws
    mean = float(coverage.mean())
    n = length - 1
    pieces = -(-n // window)  # the fewest windows; for these pairs also possible with cuts at point boundaries
    assert abs(mean - 1 / pieces) <= 0.01
    noise = (mean * (1 - mean) / draws) ** 0.5
    worst = (coverage - mean).abs()
    assert float(worst.max()) <= 5 * noise + 1e-9, (float(worst.max()), noise)
    for name, index in (("x1", 0), ("first point", slice(0, 4)), ("last point", slice(-5, -1)), ("EOS", -1)):
        assert float((coverage[index] - mean).abs().max()) <= 5 * noise + 1e-9, name
    assert float(worst.max()) / mean <= 0.07  # within a few percent of the mean


def test_activation_checkpointing_gives_the_same_loss_and_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    a = tiny().train()
    b = tiny(activation_checkpointing=True).train()
    b.load_state_dict(a.state_dict())
    cond = torch.randn(2, 5, 32, generator=g)
    tokens = sequence(5)
    losses = []
    for m in (a, b):
        out = m(tokens[:, :-1], cond)
        loss = F.cross_entropy(out.logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1])
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6)


def test_point_features_pick_the_four_input_positions_of_each_point() -> None:
    hidden = torch.arange(2 * 14 * 1, dtype=torch.float32).reshape(2, 14, 1)
    feats = point_features(hidden, torch.tensor([3, 2]))
    assert feats.shape == (2, 3, 4, 1)
    assert feats[0, :, :, 0].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    assert feats[1, 2].abs().sum() == 0 and feats[1, 1, :, 0].tolist() == [19, 20, 21, 22]
    with pytest.raises(ValueError, match="need 17 positions"):
        point_features(hidden, 4)


def test_bad_input_is_refused_clearly() -> None:
    g = torch.Generator().manual_seed(0)
    model = tiny()
    tokens = sequence(2)
    with pytest.raises(ValueError, match="condition must be \\[B, C, 32\\]"):
        model(tokens, torch.randn(2, 5, 16, generator=g))
    model.set_kv_cache(2, 8)
    with pytest.raises(ValueError, match="input_pos must be"):
        model(tokens, torch.randn(2, 5, 32, generator=g))
    with pytest.raises(ValueError, match="overflows"):
        model(tokens[:, :10], torch.randn(2, 5, 32, generator=g), torch.arange(10))
    model(tokens[:, :3], torch.randn(2, 5, 32, generator=g), torch.arange(3))
    with pytest.raises(ValueError, match="continues at position 3, got input_pos starting at 5"):
        model(tokens[:, 5:6], torch.randn(2, 5, 32, generator=g), torch.tensor([5]))
    model.clear_kv_cache()
    with pytest.raises(ValueError, match="not divisible"):
        PointGenerator(GeneratorConfig(n_layers=1, width=30, n_heads=4), VOCAB)


LEVELS, FACES = 64, 20


def allowed_ids(target_role: int) -> list[int]:
    """Vocabulary ids a slot whose next token has ``target_role`` (0..3 = x, y, z, b) may predict."""
    if target_role == 3:
        return list(range(LEVELS, LEVELS + FACES))
    return list(range(LEVELS)) + ([EOS] if target_role == 0 else [])


def slow_role_loss(logits: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Full-vocabulary logits restricted to each slot's allowed set, one slot at a time: (summed CE, count)."""
    total, count = logits.new_zeros(()), 0
    positions = positions.expand_as(targets)
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            if int(targets[b, t]) == PAD:
                continue
            ids = allowed_ids(int(positions[b, t]) % 4)  # the target at position p + 1 has role p % 4
            total = total - logits[b, t, ids].log_softmax(-1)[ids.index(int(targets[b, t]))]
            count += 1
    return total, count


def windowed_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training windows of grammatical sequences, some reaching EOS, some cut before it, with PAD targets."""
    tokens = sequence(12, batch=4, seed=seed)
    lengths = torch.tensor([50, 50, 30, 22])
    for i, length in enumerate(lengths.tolist()):
        tokens[i, length - 1] = EOS
        tokens[i, length:] = PAD
    g = torch.Generator().manual_seed(seed)
    while True:  # a draw with EOS among the targets and a PAD target
        inputs, targets, positions = training_windows(tokens, lengths, window=24, pad_id=PAD, generator=g)
        if (targets == EOS).any() and (targets == PAD).any() and (positions[:, 0] > 0).any():
            return inputs, targets, positions


def test_role_loss_is_the_full_softmax_restricted_to_each_slots_allowed_tokens() -> None:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = tiny(head="role")
    cond = torch.randn(4, 5, 32, generator=g)
    inputs, targets, positions = windowed_batch()
    out = model(inputs, cond, positions)
    slow_sum, count = slow_role_loss(out.logits, targets, positions)
    weight = model.head.weight
    mean = role_cross_entropy(out.hidden, weight, targets, positions, LEVELS, FACES, PAD)
    total = role_cross_entropy(out.hidden, weight, targets, positions, LEVELS, FACES, PAD, reduction="sum")
    torch.testing.assert_close(total, slow_sum, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(mean, slow_sum / count, atol=1e-6, rtol=1e-5)
    full = F.cross_entropy(out.logits.flatten(0, 1), targets.flatten(), ignore_index=PAD)
    assert mean < full  # fewer tokens to normalise over
    # [T] positions (one window for the batch), as validation passes them
    flat = torch.arange(5, 5 + 16)
    tok = sequence(8, batch=2)[:, 5:21]
    tgt = sequence(8, batch=2)[:, 6:22]
    out = model(tok, cond[:2], flat)
    slow_sum, count = slow_role_loss(out.logits, tgt, flat)
    torch.testing.assert_close(role_cross_entropy(out.hidden, weight, tgt, flat, LEVELS, FACES, PAD),
                               slow_sum / count, atol=1e-6, rtol=1e-5)


def test_role_accuracy_is_the_argmax_within_the_allowed_set() -> None:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(1)
    model = tiny(head="role")
    inputs, targets, positions = windowed_batch(seed=2)
    out = model(inputs, torch.randn(4, 5, 32, generator=g), positions)
    _, hits, counts = role_logits(out.hidden, model.head.weight, targets, positions, LEVELS, FACES, PAD).token_stats()
    want_hits, want_counts = torch.zeros(5), torch.zeros(5)
    for b, t in (targets != PAD).nonzero().tolist():
        target, role = int(targets[b, t]), int(positions[b, t]) % 4
        ids = allowed_ids(role)
        kind = 4 if target == EOS else role
        want_counts[kind] += 1
        want_hits[kind] += ids[int(out.logits[b, t, ids].argmax())] == target
    assert torch.equal(counts, want_counts) and torch.equal(hits, want_hits)
    assert counts[4] > 0 and counts[3] > 0


def test_role_loss_gradients_match_the_slow_way_and_reach_every_used_row() -> None:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    fast, slow = tiny(head="role").train(), tiny(head="role").train()
    slow.load_state_dict(fast.state_dict())
    cond = torch.randn(4, 5, 32, generator=g)
    inputs, targets, positions = windowed_batch()
    fast_out = fast(inputs, cond, positions, return_logits=False)
    assert fast_out.logits.shape[-1] == 0
    role_cross_entropy(fast_out.hidden, fast.head.weight, targets, positions, LEVELS, FACES, PAD).backward()
    slow_sum, count = slow_role_loss(slow(inputs, cond, positions).logits, targets, positions)
    (slow_sum / count).backward()
    for (name, a), (_, b) in zip(fast.named_parameters(), slow.named_parameters()):
        assert a.grad is not None and a.grad.abs().sum() > 0, name
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4, msg=name)
    rows = fast.head.weight.grad.abs().sum(-1)
    assert (rows[:LEVELS] > 0).all() and rows[EOS] > 0 and (rows[LEVELS : LEVELS + FACES] > 0).sum() > 5
    assert rows[BOS] == 0 and rows[PAD] == 0  # never in any slot's softmax


def test_the_full_head_is_the_default_and_the_switch_changes_no_weights_or_forward() -> None:
    g = torch.Generator().manual_seed(0)
    assert GeneratorConfig().head == "full"
    torch.manual_seed(0)
    full, role = tiny(), tiny(head="role")
    role.load_state_dict(full.state_dict())  # same parameters: checkpoints move between the modes
    assert full.state_dict().keys() == role.state_dict().keys()
    cond = torch.randn(2, 5, 32, generator=g)
    tokens = sequence(4)
    a, b = full(tokens, cond), role(tokens, cond)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.hidden, b.hidden)
    with pytest.raises(ValueError, match="head must be one of"):
        tiny(head="factored")


def test_role_loss_refuses_targets_that_do_not_fit_their_slot() -> None:
    g = torch.Generator().manual_seed(0)
    model = tiny(head="role")
    tokens = sequence(3, batch=1)
    inputs, targets = tokens[:, :-1], tokens[:, 1:].clone()
    hidden = model(inputs, torch.randn(1, 5, 32, generator=g), return_logits=False).hidden
    positions = torch.arange(inputs.shape[1])
    for t, bad in ((0, LEVELS + 1), (3, 5), (1, EOS), (2, BOS)):  # face at x, coordinate at b, EOS at y, BOS at z
        wrong = targets.clone()
        wrong[0, t] = bad
        with pytest.raises(ValueError, match="does not fit its slot"):
            role_cross_entropy(hidden, model.head.weight, wrong, positions, LEVELS, FACES, PAD)
    with pytest.raises(ValueError, match="weight has"):
        role_cross_entropy(hidden, model.head.weight[:-1], targets, positions, LEVELS, FACES, PAD)
