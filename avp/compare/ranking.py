"""Which runs may be pooled as seeds of one variant (their configs agree beyond the seed and their own paths) and
which columns may be ranked (the metric has a goal and the variants agree on what its scale depends on)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from avp.compare.runs import RUN_IDENTITY_KEYS, RunLog, variants_in_order
from avp.metrics.goals import Goal, goal_of


def _identity_key(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in RUN_IDENTITY_KEYS or key.startswith("trainer.logger")


def pooled_differences(runs: Sequence[RunLog]) -> dict[str, list[str]]:
    """variant -> config keys whose values differ between its runs (seeds and run paths excepted)."""
    out = {}
    for variant in variants_in_order(runs):
        configs = [r.config for r in runs if r.variant == variant]
        known = [c for c in configs if c is not None]
        if len(known) < 2:
            continue
        keys = sorted({k for c in known for k in c if not _identity_key(k)})
        differing = [k for k in keys if len({c.get(k) for c in known}) > 1]
        if differing:
            out[variant] = differing
    return out


def incomparable(runs: Sequence[RunLog], metric: str, goal: Goal | None) -> list[str]:
    """Config keys the metric's scale depends on whose values differ between the runs that logged it."""
    if goal is None or not goal.depends_on:
        return []
    configs = [r.config for r in runs if r.config is not None and r.scalars.get(metric)]
    keys = sorted({k for c in configs for k in c if k.startswith(goal.depends_on)})
    return [k for k in keys if len({c.get(k) for c in configs}) > 1]


@dataclass
class Ranking:
    """How one column is ranked."""

    goal: Goal | None
    """None: the metric has no declared goal (tabulated, not ranked)."""
    differs: list[str]
    """Config keys that make the variants' values incomparable (the column is not ranked)."""

    @property
    def ranked(self) -> bool:
        return self.goal is not None and not self.differs

    @property
    def arrow(self) -> str:
        return self.goal.arrow if self.goal is not None else "?"


def rankings(runs: Sequence[RunLog], metrics: Sequence[str], higher: Sequence[str] = (),
             lower: Sequence[str] = ()) -> dict[str, Ranking]:
    goals = {m: goal_of(m, higher, lower) for m in metrics}
    return {m: Ranking(goals[m], incomparable(runs, m, goals[m])) for m in metrics}
