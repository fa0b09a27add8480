"""PointGenerator: causality, KV-cache parity, windows, RoPE shift invariance, point features, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avp.models.generator import GeneratorConfig, PointGenerator, point_features, training_windows
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
    model = tiny()
    cond = torch.randn(2, 5, 32)
    tokens = sequence(6)
    t = 9
    changed = tokens.clone()
    changed[:, t + 1] = (changed[:, t + 1] + 7) % 64
    a, b = model(tokens, cond), model(changed, cond)
    assert torch.allclose(a.logits[:, : t + 1], b.logits[:, : t + 1], atol=1e-6, rtol=0)
    assert not torch.allclose(a.logits[:, t + 1], b.logits[:, t + 1], atol=1e-3)


def test_kv_cache_decoding_equals_the_full_forward() -> None:
    model = tiny(layers=3)
    cond = torch.randn(2, 5, 32)
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


def test_a_reset_cache_at_a_boundary_equals_a_forward_of_that_window() -> None:
    model = tiny()
    cond = torch.randn(2, 5, 32)
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
    model = tiny()
    cond = torch.randn(2, 5, 32)
    tokens = sequence(5)[:, 1:17]  # a window starting at point boundary 1
    a = model(tokens, cond, torch.arange(1, 17))
    b = model(tokens, cond, torch.arange(4001, 4017))  # same roles (shift by a multiple of 4), far away
    assert (a.logits - b.logits).abs().max() <= 1e-4


def test_per_sample_positions_match_single_sample_forwards() -> None:
    model = tiny()
    cond = torch.randn(2, 5, 32)
    tokens = sequence(6)[:, :12]
    pos = torch.stack([torch.arange(0, 12), torch.arange(9, 21)])
    both = model(tokens, cond, pos)
    for i in range(2):
        one = model(tokens[i : i + 1], cond[i : i + 1], pos[i])
        assert (both.logits[i] - one.logits[0]).abs().max() <= 1e-5


def test_a_window_covering_the_sequence_is_the_full_training_step() -> None:
    model = tiny().train()
    cond = torch.randn(2, 5, 32)
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


def test_random_windows_start_on_point_boundaries_and_cover_the_end() -> None:
    tokens = sequence(30, batch=3)
    lengths = torch.tensor([122, 122, 42])
    tokens[2, 42:] = PAD
    tokens[2, 41] = EOS
    seen_eos, seen_bos = False, False
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        inputs, targets, positions = training_windows(tokens, lengths, window=40, pad_id=PAD, generator=g)
        assert inputs.shape == (3, 40)
        starts = positions[:, 0]
        assert all(s == 0 or s % 4 == 1 for s in starts.tolist())
        assert torch.equal(inputs, torch.gather(torch.cat([tokens, torch.full((3, 41), PAD)], 1), 1, positions))
        assert (positions[:, -1] <= lengths - 2 + 3).all()  # a window ends at most 3 tokens past the last input
        assert starts[2] in (0, 1)  # 41 inputs, window 40: it starts at BOS or at the first point
        seen_eos |= bool((targets[:2] == EOS).any())
        seen_bos |= bool((inputs[:2, 0] == BOS).any())
        role = PointTokenizer.role_of_position(positions)
        assert ((inputs >= 64) & (inputs < 84) == (role == 3)).all()  # face tokens exactly at b roles
    assert seen_eos and seen_bos


def test_activation_checkpointing_gives_the_same_loss_and_gradients() -> None:
    torch.manual_seed(0)
    a = tiny().train()
    b = tiny(activation_checkpointing=True).train()
    b.load_state_dict(a.state_dict())
    cond = torch.randn(2, 5, 32)
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
    model = tiny()
    tokens = sequence(2)
    with pytest.raises(ValueError, match="condition must be \\[B, C, 32\\]"):
        model(tokens, torch.randn(2, 5, 16))
    model.set_kv_cache(2, 8)
    with pytest.raises(ValueError, match="input_pos must be"):
        model(tokens, torch.randn(2, 5, 32))
    with pytest.raises(ValueError, match="overflows"):
        model(tokens[:, :10], torch.randn(2, 5, 32), torch.arange(10))
    model(tokens[:, :3], torch.randn(2, 5, 32), torch.arange(3))
    with pytest.raises(ValueError, match="continues at position 3, got input_pos starting at 5"):
        model(tokens[:, 5:6], torch.randn(2, 5, 32), torch.tensor([5]))
    model.clear_kv_cache()
    with pytest.raises(ValueError, match="not divisible"):
        PointGenerator(GeneratorConfig(n_layers=1, width=30, n_heads=4), VOCAB)
