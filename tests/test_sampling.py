"""Sampling: every output is a valid sequence (property test over random logits), order feasibility against brute
force, KV-cache vs recompute parity with sliding windows, seeds, limits and bad configs."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from avp.models.generator import GeneratorConfig, GeneratorOutput, PointGenerator
from avp.models.sampling import SamplingConfig, context_windows, order_threshold, sample, teacher_forced
from avp.models.tokenizer import ORDERS, PointTokenizer

BOUNDS = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


pytestmark = pytest.mark.usefixtures("one_thread")


class RandomLogits(nn.Module):
    """A stand-in generator whose logits are random (seeded), with a tunable EOS bias; it checks the cache API."""

    def __init__(self, vocab: int, eos_id: int, eos_bias: float, seed: int, width: int = 3):
        super().__init__()
        self.vocab, self.eos_id, self.eos_bias, self.width = vocab, eos_id, eos_bias, width
        self.rng = torch.Generator().manual_seed(seed)
        self.cache: tuple[int, int] | None = None  # (start, next position)

    def set_kv_cache(self, batch_size: int, max_len: int) -> None:
        self.cache = (0, 0)
        self.max_len = max_len

    def reset_kv_cache(self, start: int = 0) -> None:
        self.cache = (start, start)

    def clear_kv_cache(self) -> None:
        self.cache = None

    def forward(self, tokens: Tensor, condition: Tensor, input_pos: Tensor) -> GeneratorOutput:
        B, T = tokens.shape
        if self.cache is not None:
            start, nxt = self.cache
            assert int(input_pos[0]) == nxt and int(input_pos[-1]) - start < self.max_len
            self.cache = (start, int(input_pos[-1]) + 1)
        logits = torch.randn(B, T, self.vocab, generator=self.rng) * 3
        logits[..., self.eos_id] += self.eos_bias
        return GeneratorOutput(logits=logits, hidden=torch.randn(B, T, self.width, generator=self.rng))


def check_valid(out, tok: PointTokenizer, config: SamplingConfig, enforce: bool) -> None:
    for i in range(out.tokens.shape[0]):
        seq = out.tokens[i]
        n = int(out.n_points[i])
        length = int(out.lengths[i])
        assert seq[0] == tok.bos_id
        assert n <= config.max_points
        rows = tok.decode_rows(seq)  # raises on any role violation
        assert len(rows) == n
        specials = (seq[1:length] == tok.bos_id) | (seq[1:length] == tok.pad_id)
        assert not specials.any()
        if out.finished[i]:
            assert seq[length - 1] == tok.eos_id and length == 4 * n + 2
            assert (seq[length:] == tok.pad_id).all()
        else:
            assert n == config.max_points and length == 4 * n + 1
        assert ((seq[1:length] == tok.eos_id).nonzero().flatten() + 1).tolist() in ([], [length - 1])
        if enforce and n > 1:
            keys = [tuple(int(r[k]) for k in tok.priority) for r in rows]
            assert all(a < b for a, b in zip(keys, keys[1:])), keys
        if n < config.min_points:  # only when the order left no possible next point
            top = [tok.levels - 1] * 3 + [tok.n_faces - 1]
            assert enforce and rows[-1].tolist() == top
        assert torch.equal(out.binding[i, :n], rows[:, 3])
        assert torch.allclose(out.points[i, :n], tok.dequantize(rows[:, :3]))
    assert out.point_hidden.shape[:3] == (out.tokens.shape[0], int(out.n_points.max()), 4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    levels=st.integers(2, 5), n_faces=st.integers(1, 3), order=st.sampled_from(ORDERS),
    enforce=st.booleans(), temperature=st.sampled_from([0.0, 0.5, 1.0, 3.0]), top_k=st.integers(0, 4),
    top_p=st.sampled_from([1.0, 0.9, 0.3]), max_points=st.integers(1, 30), min_points=st.integers(0, 6),
    window=st.integers(8, 40), eos_bias=st.sampled_from([-20.0, 0.0, 4.0]), use_kv=st.booleans(),
    batch=st.integers(1, 3), seed=st.integers(0, 2**16),
)
def test_sampling_never_emits_an_invalid_sequence(levels, n_faces, order, enforce, temperature, top_k, top_p,
                                                  max_points, min_points, window, eos_bias, use_kv, batch, seed):
    tok = PointTokenizer(BOUNDS, n_faces=n_faces, levels=levels, order=order)
    model = RandomLogits(tok.vocab_size, tok.eos_id, eos_bias, seed)
    config = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, max_points=max_points,
                            min_points=min(min_points, max_points), enforce_order=enforce, window=window,
                            use_kv_cache=use_kv)
    out = sample(model, torch.zeros(batch, 2, 3), tok, config, torch.Generator().manual_seed(seed))
    check_valid(out, tok, config, enforce and tok.sorted)
    assert model.cache is None  # the sampler frees the cache


def test_order_threshold_matches_brute_force_feasibility() -> None:
    levels, n_faces = 3, 2
    maxima = (levels - 1, levels - 1, levels - 1, n_faces - 1)
    every = list(itertools.product(range(levels), range(levels), range(levels), range(n_faces)))
    for order in ("yzx", "xyz", "zxy"):
        priority = PointTokenizer(BOUNDS, n_faces=n_faces, levels=levels, order=order).priority

        def key(p: tuple[int, ...], priority=priority) -> tuple[int, ...]:
            return tuple(p[k] for k in priority)
        for prev in every[:: 5]:
            for role in range(4):
                for partial in {p[:role] for p in every}:
                    feasible = [v for v in range(maxima[role] + 1)
                                if any(key(p) > key(prev) for p in every if p[: role + 1] == (*partial, v))]
                    cur = torch.tensor([[*partial, *([0] * (4 - role))]])
                    thr = int(order_threshold(torch.tensor([prev]), torch.tensor([True]), cur, role, priority,
                                              maxima)[0])
                    reachable = any(key(p) > key(prev) for p in every if p[:role] == partial)
                    if not reachable:
                        continue  # the sampler never reaches an infeasible prefix
                    assert feasible == list(range(thr, maxima[role] + 1)), (order, prev, role, partial)


def tiny_model(levels: int = 16, n_faces: int = 10) -> tuple[PointGenerator, PointTokenizer]:
    tok = PointTokenizer(BOUNDS, n_faces=n_faces, levels=levels)
    return PointGenerator(GeneratorConfig(n_layers=2, width=32, n_heads=4), tok.vocab_size).eval(), tok


@pytest.mark.parametrize("window", [1000, 24, 13])
def test_kv_cache_and_recompute_sample_the_same_tokens_and_states(window: int) -> None:
    g = torch.Generator().manual_seed(0)
    model, tok = tiny_model()
    cond = torch.randn(3, 5, 32, generator=g)
    outs = [sample(model, cond, tok, SamplingConfig(temperature=0, max_points=25, window=window, use_kv_cache=kv))
            for kv in (True, False)]
    assert torch.equal(outs[0].tokens, outs[1].tokens)
    assert (outs[0].hidden - outs[1].hidden).abs().max() <= 1e-5
    assert outs[0].n_points.max() > 3  # long enough to slide for the small windows


def test_sliding_contexts_match_an_independent_reference_loop() -> None:
    """Greedy decoding with a 16-token window, recomputed here from the documented rule without the sampler."""
    g = torch.Generator().manual_seed(0)
    model, tok = tiny_model()
    cond = torch.randn(1, 5, 32, generator=g)
    window, keep = 16, 7
    config = SamplingConfig(temperature=0, max_points=12, min_points=12, enforce_order=False, window=window,
                            keep=keep)
    out = sample(model, cond, tok, config)
    seq = [tok.bos_id]
    start = 0
    for pos in range(4 * 12):
        if pos - start + 1 > window:  # restart at the first point boundary leaving <= keep tokens
            start = next(s for s in range(1, pos + 1, 4) if pos - s + 1 <= keep)
        logits = model(torch.tensor([seq[start:]]), cond, torch.arange(start, pos + 1)).logits[0, -1]
        role = pos % 4
        allowed = torch.zeros_like(logits, dtype=torch.bool)
        if role == 3:
            allowed[tok.levels : tok.levels + tok.n_faces] = True
        else:
            allowed[: tok.levels] = True
        seq.append(int(logits.masked_fill(~allowed, float("-inf")).argmax()))
    assert out.tokens[0].tolist() == seq
    assert not out.finished[0]


def test_teacher_forcing_reproduces_the_sampled_logits_and_hidden_states() -> None:
    g = torch.Generator().manual_seed(0)
    model, tok = tiny_model()
    cond = torch.randn(2, 5, 32, generator=g)
    out = sample(model, cond, tok, SamplingConfig(temperature=0, max_points=20, min_points=20, window=20))
    forced = teacher_forced(model, cond, out.tokens, window=20)
    assert (forced.hidden[:, :-1] - out.hidden[:, :-1]).abs().max() <= 1e-5
    no_logits = teacher_forced(model, cond, out.tokens, window=20, keep_logits=False)
    assert no_logits.logits.shape[-1] == 0 and torch.equal(no_logits.hidden, forced.hidden)


def test_seeds_top_k_top_p_and_limits() -> None:
    g = torch.Generator().manual_seed(0)
    model, tok = tiny_model()
    cond = torch.randn(2, 5, 32, generator=g)
    def run(seed: int, **kw):
        return sample(model, cond, tok, SamplingConfig(**{"max_points": 15, **kw}), torch.Generator().manual_seed(seed))

    assert torch.equal(run(3).tokens, run(3).tokens)
    assert not torch.equal(run(3, min_points=15).tokens, run(4, min_points=15).tokens)
    greedy = sample(model, cond, tok, SamplingConfig(temperature=0, max_points=15))
    assert torch.equal(run(5, top_k=1).tokens, greedy.tokens)
    assert torch.equal(run(6, top_p=1e-6).tokens, greedy.tokens)
    capped = run(7, min_points=15, max_points=15, enforce_order=False)  # a random model soon exhausts the order
    assert (capped.n_points == 15).all() and not capped.finished.any()
    assert capped.hidden[:, -1].abs().sum() > 0  # the last face token was consumed too


def test_context_windows_cover_every_input_once_with_aligned_starts() -> None:
    for n, window, keep in [(5, 8, 0), (100, 16, 0), (1001, 40, 9), (12, 12, 4)]:
        groups = context_windows(n, window, keep)
        assert groups[0][:2] == (0, 0) and groups[-1][2] == n - 1
        for (_, _, last), (_, nxt, _) in zip(groups, groups[1:]):
            assert nxt == last + 1
        for s, f, last in groups:
            assert (s == 0 or s % 4 == 1) and s <= f <= last and last - s + 1 <= window


def test_bad_configs_are_refused() -> None:
    g = torch.Generator().manual_seed(0)
    model, tok = tiny_model()
    cond = torch.randn(1, 5, 32, generator=g)
    for kw, msg in [({"temperature": -1}, "temperature"), ({"window": 4}, "window"), ({"top_p": 0}, "top_p"),
                    ({"max_points": 0}, "max_points"), ({"min_points": 5, "max_points": 3}, "min_points"),
                    ({"keep": 100, "window": 50}, "keep")]:
        with pytest.raises(ValueError, match=msg):
            sample(model, cond, tok, SamplingConfig(**kw))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.integers(1, 6), enforce=st.booleans(), seed=st.integers(0, 2**16))
def test_bind_nearest_binds_every_point_to_one_of_its_k_nearest_faces(k, enforce, seed) -> None:
    tok = PointTokenizer(BOUNDS, n_faces=12, levels=6)
    gen = torch.Generator().manual_seed(seed)
    centers = torch.rand(2, 12, 3, generator=gen) * 2 - 1  # [B, F, 3]
    model = RandomLogits(tok.vocab_size, tok.eos_id, -20.0, seed)
    config = SamplingConfig(max_points=15, min_points=15, enforce_order=enforce, bind_nearest=k)
    out = sample(model, torch.zeros(2, 2, 3), tok, config, gen, face_centers=centers)
    check_valid(out, tok, config, enforce)
    prev = None
    for b in range(2):
        for i in range(int(out.n_points[b])):
            nearest = torch.cdist(out.points[b, i][None], centers[b]).topk(k, largest=False).indices[0]
            same_xyz = prev is not None and torch.equal(out.points[b, i], prev)
            # the only exception: the order forbids every near face (a point tied with its predecessor's xyz)
            assert int(out.binding[b, i]) in nearest.tolist() or (enforce and same_xyz)
            prev = out.points[b, i]
        prev = None


def test_bind_nearest_needs_face_centers() -> None:
    tok = PointTokenizer(BOUNDS, n_faces=4, levels=4)
    model = RandomLogits(tok.vocab_size, tok.eos_id, 0.0, 0)
    with pytest.raises(ValueError, match="bind_nearest=2 needs face_centers"):
        sample(model, torch.zeros(1, 2, 3), tok, SamplingConfig(bind_nearest=2))
    with pytest.raises(ValueError, match="bind_nearest must be >= 0"):
        SamplingConfig(bind_nearest=-1).validate()


@pytest.mark.parametrize("kw", [
    {"window": 24},  # sliding contexts with the KV cache
    {"window": 1000, "use_kv_cache": False, "temperature": 0.7, "top_k": 5, "top_p": 0.9},
    {"window": 13, "temperature": 0.0, "enforce_order": False},
], ids=["sliding-kv", "recompute-topk-topp", "greedy"])
def test_the_role_head_samples_what_the_full_head_samples(kw) -> None:
    """Same weights, same seed: computing only the slot's rows (role head) gives the same draws as full-vocabulary
    logits under the grammar mask, and never evaluates the full output head."""
    g = torch.Generator().manual_seed(0)
    tok = PointTokenizer(BOUNDS, n_faces=10, levels=16)
    torch.manual_seed(3)
    full = PointGenerator(GeneratorConfig(n_layers=2, width=32, n_heads=4), tok.vocab_size).eval()
    role = PointGenerator(GeneratorConfig(n_layers=2, width=32, n_heads=4, head="role"), tok.vocab_size).eval()
    role.load_state_dict(full.state_dict())
    calls = {"full": 0, "role": 0}
    for name, model in (("full", full), ("role", role)):
        model.head.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    cond = torch.randn(3, 5, 32, generator=g)
    config = SamplingConfig(**{"max_points": 25, "min_points": 3, **kw})
    a, b = (sample(m, cond, tok, config, torch.Generator().manual_seed(11)) for m in (full, role))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.lengths, b.lengths)
    assert torch.equal(a.hidden, b.hidden)
    assert a.n_points.min() > 1, a.n_points
    assert calls["full"] > 0 and calls["role"] == 0


def test_per_row_generators_make_each_cloud_independent_of_its_batch() -> None:
    g = torch.Generator().manual_seed(0)
    model, tok = tiny_model()
    cond = torch.randn(3, 5, 32, generator=g)
    config = SamplingConfig(temperature=1.0, max_points=12)

    def rngs(seeds: list[int]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in seeds]

    batch = sample(model, cond, tok, config, rngs([7, 8, 9]))
    for b, seed in enumerate((7, 8, 9)):
        alone = sample(model, cond[b : b + 1], tok, config, rngs([seed]))
        n = int(alone.lengths[0])
        assert torch.equal(batch.tokens[b, :n], alone.tokens[0, :n]) and int(batch.lengths[b]) == n
    swapped = sample(model, cond[[2, 0, 1]], tok, config, rngs([9, 7, 8]))
    assert torch.equal(swapped.n_points, batch.n_points[[2, 0, 1]])
    assert not torch.equal(batch.tokens[0], sample(model, cond, tok, config, rngs([1, 8, 9])).tokens[0])
    with pytest.raises(ValueError, match="2 generators for 3 rows"):
        sample(model, cond, tok, config, rngs([1, 2]))


def test_per_row_draws_follow_the_distribution_and_never_pick_masked_tokens() -> None:
    from avp.models.sampling import draw_tokens

    probs = torch.tensor([[0.0, 0.2, 0.0, 0.8, 0.0]]).expand(4000, 5)
    draws = draw_tokens(probs, [torch.Generator().manual_seed(i) for i in range(4000)])
    assert set(draws.tolist()) <= {1, 3}
    assert abs((draws == 3).float().mean().item() - 0.8) < 0.03  # 4000 draws: std 0.0063
    edge = torch.tensor([[0.0, 1.0, 0.0]])
    assert draw_tokens(edge, [torch.Generator().manual_seed(0)]).item() == 1
    one = draw_tokens(probs, torch.Generator().manual_seed(0))  # one generator for the batch: one uniform per row
    assert set(one.tolist()) <= {1, 3} and abs((one == 3).float().mean().item() - 0.8) < 0.03


@pytest.mark.parametrize("role", [0, 1, 3])
@pytest.mark.parametrize("kw", [{}, {"temperature": 0.6, "top_k": 7, "top_p": 0.9},
                                {"temperature": 0.8, "eos_temperature": 1.5}], ids=["plain", "topk-topp", "eos-temp"])
def test_a_draw_among_the_roles_tokens_is_the_full_vocabulary_draw_under_the_grammar_mask(role, kw) -> None:
    """The sampler chooses among the slot's role's tokens only; full-vocabulary logits with every other token masked
    draw the same token with the same generator, row by row (2,000 rows, random logits and order thresholds)."""
    from avp.models.generator import role_rows
    from avp.models.sampling import draw_tokens, slot_probs

    L, F_ = 16, 40
    tok = PointTokenizer(BOUNDS, n_faces=F_, levels=L)
    g = torch.Generator().manual_seed(role)
    B, V = 2000, tok.vocab_size
    rows = role_rows(role, L, F_)
    ids = torch.arange(V)[rows]  # the role's tokens, in vocabulary order
    logits = torch.randn(B, V, generator=g) * 3
    allowed = torch.arange(len(ids))[None, :] >= torch.randint(0, len(ids) - 1, (B, 1), generator=g)
    if role == 0:
        allowed[:, L] = torch.rand(B, generator=g) < 0.5  # EOS, last among the x slot's tokens
    config = SamplingConfig(**kw)
    eos_full, eos_local = (tok.eos_id, L) if role == 0 else (None, None)
    full_allowed = torch.zeros(B, V, dtype=torch.bool)
    full_allowed[:, ids] = allowed
    full = draw_tokens(slot_probs(logits.masked_fill(~full_allowed, float("-inf")), config, role, eos_full),
                       torch.Generator().manual_seed(5))
    local = draw_tokens(slot_probs(logits[:, ids].masked_fill(~allowed, float("-inf")), config, role, eos_local),
                        torch.Generator().manual_seed(5))
    assert torch.equal(ids[local], full)
    assert full_allowed.gather(1, full[:, None]).all()


def test_sampling_records_no_autograd_graph() -> None:
    """Parameters that require grad (a model mid-training) must not make the decode loop build a graph: every
    activation inside the loop and every returned tensor is graph-free, and grad mode is back on afterwards."""
    g = torch.Generator().manual_seed(0)
    model, tok = tiny_model()
    assert all(p.requires_grad for p in model.parameters())
    seen: list[bool] = []
    for block in model.blocks:
        block.register_forward_hook(lambda _m, _i, out: seen.append(out.requires_grad))
    cond = torch.randn(2, 5, 32, generator=g)
    for extra in ({}, {"static_step": True}):
        seen.clear()
        out = sample(model, cond, tok, SamplingConfig(max_points=6, window=13, **extra), torch.Generator())
        assert seen and not any(seen)
        for name in ("tokens", "hidden", "points", "binding", "n_points"):
            t = getattr(out, name)
            assert t.grad_fn is None and not t.requires_grad, name
    assert torch.is_grad_enabled()


def _eos_mid_batch_and_slides(out, window: int) -> None:
    """The parity cases below are only worth something if a cloud ended while others went on, past the window."""
    assert out.finished.any() and (out.lengths != out.lengths.max()).any(), out.lengths
    assert int(out.lengths.max()) > window + 4, out.lengths


PARITY_CASES = [
    {"temperature": 0.0, "window": 13},  # greedy, sliding
    {"temperature": 1.0, "window": 24, "top_k": 5, "top_p": 0.9},  # sampled, sliding
]


def parity_setup(head: str = "full") -> tuple[PointGenerator, PointTokenizer, Tensor]:
    tok = PointTokenizer(BOUNDS, n_faces=10, levels=16)
    torch.manual_seed(0)
    model = PointGenerator(GeneratorConfig(n_layers=2, width=32, n_heads=4, head=head), tok.vocab_size).eval()
    return model, tok, torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kw", PARITY_CASES, ids=["greedy", "sampled"])
@pytest.mark.parametrize("head", ["full", "role"])
def test_the_static_step_samples_the_eager_tokens(kw, head) -> None:
    """The fixed-shape step (masked whole-cache attention, device-side positions, batched end checks) draws the
    eager step's tokens, with window slides and one cloud ending before the others; the role head computes only the
    slot's rows there too and matches the full head."""
    model, tok, cond = parity_setup(head)
    config = SamplingConfig(max_points=25, min_points=3, **kw)
    eager = sample(model, cond, tok, config, torch.Generator().manual_seed(11))
    static = sample(model, cond, tok, SamplingConfig(**{**vars(config), "static_step": True}),
                    torch.Generator().manual_seed(11))
    _eos_mid_batch_and_slides(eager, kw["window"])
    assert torch.equal(eager.tokens, static.tokens) and torch.equal(eager.lengths, static.lengths)
    assert (eager.hidden - static.hidden).abs().max() <= 1e-5
    if head == "role":
        full, _, _ = parity_setup("full")
        full.load_state_dict(model.state_dict())
        assert torch.equal(sample(full, cond, tok, SamplingConfig(**{**vars(config), "static_step": True}),
                                  torch.Generator().manual_seed(11)).tokens, static.tokens)


@pytest.mark.parametrize("head", ["full", "role"])
def test_the_fused_step_applies_every_slot_rule_as_the_eager_loop_does(head) -> None:
    """The fixed-shape step chooses each slot inside the step (:func:`_next_tokens`, the eager loop's own code):
    nearest-face binding, guidance, per-role and EOS temperatures, min_points and one generator per cloud give the
    eager tokens; a changed rule changes them (so each case tests something)."""
    model, tok, cond = parity_setup(head)
    centres = torch.rand(3, 10, 3, generator=torch.Generator().manual_seed(1)) * 0.4 - 0.2
    null = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(2))
    cases = [{"bind_nearest": 2}, {"guidance": 2.0}, {"role_temperature": (0.5, 0.8, 1.5, 1.0), "eos_temperature": 0.3},
             {"min_points": 9}]
    for kw in cases:
        config = SamplingConfig(max_points=25, window=24, **kw)

        def run(cfg: SamplingConfig) -> Tensor:
            rngs = [torch.Generator().manual_seed(20 + i) for i in range(3)]
            return sample(model, cond, tok, cfg, rngs, face_centers=centres, null_condition=null).tokens

        eager = run(config)
        assert torch.equal(eager, run(SamplingConfig(**{**vars(config), "static_step": True}))), kw
        assert not torch.equal(eager, run(SamplingConfig(max_points=25, window=24))), kw


def test_the_fixed_shape_step_attends_over_growing_views_of_the_cache(monkeypatch) -> None:
    """On a CPU the fixed-shape step attends over the cache's first multiple of ATTEND_BUCKET slots (views of its
    storage, up to the whole window), and draws the eager tokens across bucket changes and a slide."""
    import avp.models.sampling as sampling

    lengths: list[int] = []
    original = sampling._attended

    def spy(state: list[Tensor], length: int) -> list[Tensor]:
        views = original(state, length)
        lengths.append(length)
        assert views[0].data_ptr() == state[0].data_ptr() and views[0].shape[2] == length  # a view, not a copy
        assert views[2] is state[2]  # the condition's keys stay whole
        return views

    monkeypatch.setattr(sampling, "_attended", spy)
    monkeypatch.setattr(sampling, "ATTEND_BUCKET", 16)
    model, tok, cond = parity_setup("role")
    config = SamplingConfig(max_points=30, min_points=25, window=52, top_k=5)
    eager = sample(model, cond, tok, config, torch.Generator().manual_seed(3))
    static = sample(model, cond, tok, SamplingConfig(**{**vars(config), "static_step": True}),
                    torch.Generator().manual_seed(3))
    assert int(eager.lengths.max()) > 52 + 4  # past a slide
    assert torch.equal(eager.tokens, static.tokens)
    assert (eager.hidden - static.hidden).abs().max() <= 1e-5
    assert {16, 32, 48, 52} <= set(lengths) and max(lengths) == 52


def test_the_compiled_step_samples_the_eager_tokens() -> None:
    """``compile=True`` (inductor on the CPU) draws the eager sampler's tokens, greedy and sampled, with slides and
    a cloud ending mid-batch (one compiled point step per head, ~40 s on 2 cores in all)."""
    for head in ("full", "role"):
        model, tok, cond = parity_setup(head)
        for kw in PARITY_CASES:
            config = SamplingConfig(max_points=25, min_points=3, **kw)
            eager = sample(model, cond, tok, config, torch.Generator().manual_seed(11))
            compiled = sample(model, cond, tok, SamplingConfig(**{**vars(config), "compile": True}),
                              torch.Generator().manual_seed(11))
            _eos_mid_batch_and_slides(eager, kw["window"])
            assert torch.equal(eager.tokens, compiled.tokens), (head, kw)
            assert (eager.hidden - compiled.hidden).abs().max() <= 1e-5


@pytest.mark.parametrize("kw", PARITY_CASES, ids=["greedy", "sampled"])
def test_a_bf16_kv_cache_stores_bf16_and_its_eager_static_and_compiled_steps_agree(kw, monkeypatch) -> None:
    """``kv_cache_dtype: bfloat16``: the caches (the condition's too) hold bf16 while the model stays fp32; its eager,
    fixed-shape and compiled steps draw the same tokens (slides, a cloud ending mid-batch), and its hidden states
    stay within bf16 rounding of each other's and of the fp32 cache's on the same tokens."""
    model, tok, cond = parity_setup("role")
    config = SamplingConfig(max_points=25, min_points=3, kv_cache_dtype="bfloat16", **kw)
    stored = []
    original = model.decode_state

    def spy() -> list[Tensor]:
        state = original()
        stored.extend(t.dtype for t in state)
        return state

    monkeypatch.setattr(model, "decode_state", spy)
    eager = sample(model, cond, tok, config, torch.Generator().manual_seed(11))
    static = sample(model, cond, tok, SamplingConfig(**{**vars(config), "static_step": True}),
                    torch.Generator().manual_seed(11))
    compiled = sample(model, cond, tok, SamplingConfig(**{**vars(config), "compile": True}),
                      torch.Generator().manual_seed(11))
    assert stored and set(stored) == {torch.bfloat16}
    assert next(model.parameters()).dtype == torch.float32
    _eos_mid_batch_and_slides(eager, kw["window"])
    for other in (static, compiled):
        assert torch.equal(eager.tokens, other.tokens) and torch.equal(eager.lengths, other.lengths)
        # bf16 attention over the valid slice (eager) or the whole storage under a mask (static): bf16 rounding
        assert (eager.hidden - other.hidden).abs().max() <= 1e-2
    # the same tokens through the fp32 cache: hidden states differ by bf16 rounding of keys and values, no more
    fp32 = teacher_forced(model, cond, eager.tokens, kw["window"])
    valid = torch.arange(eager.tokens.shape[1])[None, :] < eager.lengths[:, None] - 1
    diff = (fp32.hidden - eager.hidden)[valid].abs()
    assert 0 < diff.max() <= 0.05 * fp32.hidden.abs().max(), diff.max()
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        SamplingConfig(kv_cache_dtype="float16").validate()


def test_a_step_that_cannot_compile_fails_with_a_clear_message(monkeypatch) -> None:
    import avp.models.sampling as sampling

    def no_compiler(*_args, **_kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(sampling, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", lambda *_a, **_k: no_compiler)
    model, tok, cond = parity_setup()
    with pytest.raises(RuntimeError, match="compile=True could not compile.*no C.. compiler.*compile: false"):
        sample(model, cond, tok, SamplingConfig(max_points=4, compile=True))
    with pytest.raises(ValueError, match="use_kv_cache"):
        SamplingConfig(compile=True, use_kv_cache=False).validate()


@pytest.mark.gpu
def test_the_cuda_graph_step_samples_the_eager_tokens() -> None:
    """On CUDA ``compile=True`` replays the step as CUDA graphs (``reduce-overhead``); same tokens as eager."""
    model, tok, cond = parity_setup()
    model, cond = model.cuda(), cond.cuda()
    tok.to("cuda")
    for kw in PARITY_CASES:
        config = SamplingConfig(max_points=25, min_points=3, **kw)
        eager = sample(model, cond, tok, config, torch.Generator("cuda").manual_seed(11))
        for _ in range(2):  # the second call re-records the graphs on the new sample's caches
            graphs = sample(model, cond, tok, SamplingConfig(**{**vars(config), "compile": True}),
                            torch.Generator("cuda").manual_seed(11))
            assert torch.equal(eager.tokens, graphs.tokens), kw


def test_slot_probs_keep_eos_at_its_own_temperature_and_sharpen_the_rest() -> None:
    from avp.models.sampling import slot_probs

    logits = torch.tensor([[2.0, 1.0, 0.0, float("-inf"), 0.5]])  # token 4 plays EOS, token 3 is disallowed
    plain = SamplingConfig(temperature=0.5)
    assert torch.allclose(slot_probs(logits, plain, role=0, eos_id=4), (logits / 0.5).softmax(-1))
    split = SamplingConfig(temperature=0.5, eos_temperature=1.0)
    probs = slot_probs(logits, split, role=0, eos_id=4)
    p_eos = logits.softmax(-1)[0, 4]
    assert torch.isclose(probs[0, 4], p_eos)
    rest = (logits[:, :4] / 0.5).softmax(-1)[0] * (1 - p_eos)
    assert torch.allclose(probs[0, :4], rest) and probs[0, 3] == 0
    assert torch.isclose(probs.sum(), torch.tensor(1.0))
    # a row where only EOS is allowed stops for sure
    only_eos = torch.tensor([[float("-inf")] * 4 + [0.0]])
    assert slot_probs(only_eos, split, role=0, eos_id=4).tolist() == [[0.0, 0.0, 0.0, 0.0, 1.0]]
    # role temperatures replace the global one at their slot
    roles = SamplingConfig(temperature=1.0, role_temperature=(1.0, 0.25, 1.0, 2.0))
    assert torch.allclose(slot_probs(logits, roles, role=1), (logits / 0.25).softmax(-1))
    assert torch.allclose(slot_probs(logits, roles, role=3), (logits / 2.0).softmax(-1))


def test_role_and_eos_temperatures_at_one_sample_what_plain_sampling_samples() -> None:
    g = torch.Generator().manual_seed(0)
    model, tok = tiny_model()
    cond = torch.randn(3, 5, 32, generator=g)
    base = SamplingConfig(temperature=1.0, max_points=12, window=64)
    ref = sample(model, cond, tok, base, torch.Generator().manual_seed(3))
    same = SamplingConfig(temperature=0.3, role_temperature=(1.0, 1.0, 1.0, 1.0), eos_temperature=1.0,
                          max_points=12, window=64)
    out = sample(model, cond, tok, same, torch.Generator().manual_seed(3))
    assert torch.equal(out.tokens, ref.tokens)
    sharper = dataclasses.replace(same, role_temperature=(0.2, 1.0, 1.0, 1.0))
    assert not torch.equal(sample(model, cond, tok, sharper, torch.Generator().manual_seed(3)).tokens, ref.tokens)


def test_bad_temperatures_are_refused() -> None:
    model, tok = tiny_model()
    cond = torch.randn(1, 5, 32)
    for kw in ({"role_temperature": (1.0, 1.0, 1.0)}, {"role_temperature": (1.0, 0.0, 1.0, 1.0)},
               {"eos_temperature": 0.0}):
        with pytest.raises(ValueError, match="temperature"):
            sample(model, cond, tok, SamplingConfig(**kw))
