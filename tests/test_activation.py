"""inward_clamp: the decoder's scale bound keeps a gradient that leads back inside (the trap it replaces)."""

from __future__ import annotations

import math

import pytest
import torch

from avp.activation import activate, inward_clamp

LO, HI = math.log(1e-4), math.log(0.03)


def test_forward_is_the_plain_clamp() -> None:
    x = torch.linspace(-12.0, 2.0, 101)
    assert torch.equal(inward_clamp(x, LO, HI), x.clamp(LO, HI))


@pytest.mark.parametrize(("x", "upstream", "passes"), [
    (-5.0, 1.0, True), (-5.0, -1.0, True),    # inside: the plain clamp's gradient
    (0.0, 1.0, True), (0.0, -1.0, False),     # above: only a step that lowers x passes
    (-11.0, -1.0, True), (-11.0, 1.0, False),  # below: only a step that raises x passes
])
def test_gradient_passes_only_inward(x: float, upstream: float, passes: bool) -> None:
    t = torch.tensor([x], requires_grad=True)
    (inward_clamp(t, LO, HI) * upstream).sum().backward()
    assert t.grad.item() == (upstream if passes else 0.0)


def test_gradient_inside_matches_autograd_of_clamp() -> None:
    x = torch.linspace(-9.0, -4.0, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: inward_clamp(t, LO, HI).exp(), (x,))


@pytest.mark.parametrize("start", [HI + 1.0, LO - 1.0])
def test_descent_recovers_a_raw_value_beyond_a_bound(start: float) -> None:
    """A splat whose raw log-scale overshoots a bound: with the plain clamp no loss can bring it back; with
    ``inward_clamp`` gradient descent on a target scale inside the bounds reaches the target."""
    target = 0.003

    def descend(clamp) -> float:
        raw = torch.tensor([start], requires_grad=True)
        opt = torch.optim.SGD([raw], lr=0.2)
        for _ in range(100):
            opt.zero_grad()
            loss = (clamp(raw) - math.log(target)).square().sum()
            loss.backward()
            opt.step()
        return clamp(raw).exp().item()

    assert descend(lambda r: inward_clamp(r, LO, HI)) == pytest.approx(target, rel=1e-2)
    assert descend(lambda r: r.clamp(LO, HI)) == pytest.approx(math.exp(min(max(start, LO), HI)))


def test_activate_bounds_scales_and_leaves_unbounded_fits_alone() -> None:
    g = torch.Generator().manual_seed(0)
    log_scales = torch.randn(1, 50, 3, generator=g) * 4 - 5
    args = (torch.zeros(1, 50, 3), log_scales, torch.zeros(1, 50), torch.randn(1, 50, 4, generator=g),
            torch.zeros(1, 50, 1, 3))
    bounded = activate(*args, min_scale=1e-4, max_scale=0.03)
    assert torch.allclose(bounded.scales, log_scales.clamp(LO, HI).exp())
    assert torch.equal(activate(*args).scales, log_scales.exp())
