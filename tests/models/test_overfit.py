"""Overfitting one 64-point cloud: a tiny model memorises it and greedy sampling gives it back token for token.

Both the whole-sequence path and the truncated-window path (random 48-token windows for training, a sliding
48-token context for sampling) are checked; no Lightning, a few seconds each on two cores.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avp.models.generator import GeneratorConfig, PointGenerator, training_windows
from avp.models.sampling import SamplingConfig, sample, teacher_forced
from avp.models.tokenizer import PointTokenizer

BOUNDS = torch.tensor([[-0.2, -0.3, -0.15], [0.2, 0.25, 0.2]])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("window", [None, 48], ids=["whole", "windowed"])
def test_tiny_model_memorises_a_cloud_and_greedy_sampling_reproduces_it(window: int | None) -> None:
    gen = torch.Generator().manual_seed(0)
    tok = PointTokenizer(BOUNDS, n_faces=100)
    g = torch.Generator().manual_seed(0)
    points = BOUNDS[0] + torch.rand(64, 3, generator=g) * (BOUNDS[1] - BOUNDS[0])
    tokens = tok.encode(points, torch.randint(0, 100, (64,), generator=g))[None]  # [1, 258]
    model = PointGenerator(GeneratorConfig(n_layers=2, width=64, n_heads=4), tok.vocab_size)
    condition = torch.randn(1, 4, 64, generator=gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = 1 if window is None else 8
    seqs = tokens.expand(batch, -1)
    lengths = torch.full((batch,), tokens.shape[1])
    for _ in range(300):
        inputs, targets, positions = training_windows(seqs, lengths, window or 10_000, tok.pad_id)
        logits = model(inputs, condition.expand(batch, -1, -1), positions).logits
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=tok.pad_id)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    context = window or 10_000
    out = sample(model, condition, tok, SamplingConfig(temperature=0, max_points=200, window=context, keep=24))
    assert out.finished.all() and out.n_points.tolist() == [64]
    assert torch.equal(out.tokens, tokens)
    decoded, faces = tok.decode(tokens[0])
    assert torch.equal(out.points[0], decoded) and torch.equal(out.binding[0], faces)
    # the hidden states sampling returns are those of a teacher-forced pass with the same contexts
    forced = teacher_forced(model, condition, tokens, context, keep=24)
    assert (forced.hidden[:, :-1] - out.hidden[:, :-1]).abs().max() <= 1e-5
