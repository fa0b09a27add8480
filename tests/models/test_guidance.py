"""Classifier-free guidance: the sampler steers each slot's logits as ``l_null + w (l_cond - l_null)`` (checked
against a model whose logits are linear in the condition), keeps the conditioned rows' hidden states, and training
replaces conditions by the learned null condition at the configured rate."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn

from avp.head import load_head_model
from avp.models.conditional import ConditionalPointGenerator
from avp.models.encoders import ConditionConfig, ImageEncoderConfig, MeshEncoderConfig
from avp.models.generator import GeneratorConfig, GeneratorOutput
from avp.models.sampling import SamplingConfig, sample
from avp.models.tokenizer import PointTokenizer
from avp.types import HeadParams

pytestmark = pytest.mark.usefixtures("one_thread")
BOUNDS = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


class LinearInCondition(nn.Module):
    """Logits ``mean_c(condition) @ M`` at every position (the tokens do not matter), hidden ``mean_c(condition)``:
    guided logits are then the logits of the guided condition ``null + w (cond - null)``."""

    def __init__(self, width: int, vocab: int, seed: int):
        super().__init__()
        self.weight = torch.randn(width, vocab, generator=torch.Generator().manual_seed(seed)) * 2

    def set_kv_cache(self, batch_size: int, max_len: int) -> None:
        self.rows = batch_size

    def reset_kv_cache(self, start: int = 0) -> None:
        pass

    def clear_kv_cache(self) -> None:
        pass

    def forward(self, tokens: Tensor, condition: Tensor, input_pos: Tensor) -> GeneratorOutput:
        assert tokens.shape[0] == condition.shape[0] == self.rows
        mean = condition.double().mean(1)  # [B, D]
        logits = (mean @ self.weight.double()).float()[:, None].expand(-1, tokens.shape[1], -1)
        return GeneratorOutput(logits=logits, hidden=mean.float()[:, None].expand(-1, tokens.shape[1], -1))


@pytest.mark.parametrize("scale", [0.0, 2.5])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_guided_logits_are_null_plus_scale_times_the_difference(scale: float, temperature: float) -> None:
    tok = PointTokenizer(BOUNDS, n_faces=6, levels=8)
    model = LinearInCondition(4, tok.vocab_size, seed=1)
    g = torch.Generator().manual_seed(2)
    cond, null = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    config = SamplingConfig(temperature=temperature, max_points=12, min_points=3, enforce_order=False, window=20)
    guided = sample(model, cond, tok, dataclasses.replace(config, guidance=scale), torch.Generator().manual_seed(7),
                    null_condition=null)
    reference = sample(model, null + scale * (cond - null), tok, config, torch.Generator().manual_seed(7))
    assert torch.equal(guided.tokens, reference.tokens)
    # the decoder's features are the conditioned rows' own hidden states, not the guided or the null ones
    n = guided.lengths - 1
    for b in range(3):
        assert torch.allclose(guided.hidden[b, : int(n[b])], cond[b].mean(0).expand(int(n[b]), -1), atol=1e-6)


def test_guidance_with_the_condition_as_its_own_null_changes_no_draw() -> None:
    """Through the real Transformer (doubled batch, KV cache, sliding windows): ``null = cond`` leaves the logits
    as they are, whatever the scale."""
    from tests.test_sampling import tiny_model

    model, tok = tiny_model()
    cond = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    config = SamplingConfig(temperature=0.0, max_points=15, window=24)
    plain = sample(model, cond, tok, config)
    for static in (False, True):
        guided = sample(model, cond, tok, dataclasses.replace(config, guidance=3.0, static_step=static),
                        null_condition=cond.clone())
        assert torch.equal(plain.tokens, guided.tokens)


def _generator(dropout: float) -> ConditionalPointGenerator:
    torch.manual_seed(0)
    condition = ConditionConfig(image=ImageEncoderConfig(arch="tiny", image_size=32, freeze=False),
                                mesh=MeshEncoderConfig(n_points=8, n_layers=1, n_heads=4), guidance_dropout=dropout)
    return ConditionalPointGenerator(load_head_model(), condition=condition,
                                     model=GeneratorConfig(n_layers=1, width=32, n_heads=4))


def test_training_drops_conditions_at_the_configured_rate_and_trains_the_null() -> None:
    net = _generator(0.25)
    cond = torch.randn(4000, 3, 32)
    dropped = net.drop_condition(cond)
    is_null = (dropped == net.null_like(cond)).all(-1).all(-1)
    kept = (dropped == cond).all(-1).all(-1)
    assert bool((is_null | kept).all())
    assert abs(float(is_null.float().mean()) - 0.25) < 0.03
    dropped.sum().backward()
    assert net.null_condition.grad is not None and float(net.null_condition.grad.abs().sum()) > 0
    plain = _generator(0.0)
    assert plain.null_condition is None and torch.equal(plain.drop_condition(cond), cond)
    assert "null_condition" not in plain.state_dict()


def test_guided_sampling_of_a_conditional_generator_and_its_errors() -> None:
    head = load_head_model()
    B = 2
    portrait = torch.rand(B, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    params = HeadParams.zeros(B, n_shape=head.n_shape, n_expr=head.n_expr)
    net = _generator(0.1).eval()
    cond = net.encode_condition(portrait, params)
    out = net.sample(cond, SamplingConfig(max_points=6, guidance=2.0), torch.Generator().manual_seed(0))
    assert out.tokens.shape[0] == B and bool((out.n_points >= 1).all())
    plain = _generator(0.0).eval()
    with pytest.raises(ValueError, match="guidance_dropout > 0"):
        plain.sample(plain.encode_condition(portrait, params), SamplingConfig(max_points=6, guidance=2.0))
    with pytest.raises(ValueError, match="guidance=2.0 needs the null condition"):
        sample(plain.transformer, cond, plain.tokenizer, SamplingConfig(guidance=2.0))
    with pytest.raises(ValueError, match="null_condition must have the condition's shape"):
        sample(plain.transformer, cond, plain.tokenizer, SamplingConfig(guidance=2.0), null_condition=cond[:, :1])
    with pytest.raises(ValueError, match="guidance must be >= 0"):
        SamplingConfig(guidance=-1.0).validate()
    with pytest.raises(ValueError, match="guidance_dropout must be in"):
        _generator(1.0)
