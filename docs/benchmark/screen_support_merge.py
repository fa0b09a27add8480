"""Screen of a support-weighted merge of the draws (EXPERIMENTS.md, exp37; not kept).

Usage: python docs/benchmark/screen_support_merge.py GAMMA RADIUS AVP_EVAL_ARGS ...
   or: python docs/benchmark/screen_support_merge.py GAMMA RADIUS points DECODER_CKPT DATA_ROOT SEED DRAWS TEMPERATURE
`avp eval` with `sampling.draws` merged by a farthest-point subset whose choice weighs each candidate's distance to
the kept points by ((1 + s) / K) ** GAMMA, s being the number of the other K - 1 draws with a point within RADIUS
metres of it (GAMMA 0 is the shipped merge, up to its first point: the best-supported one here). The second form
prints the held-out point metrics of the merged clouds (as `avp benchmark` computes them, one sampling seed).
"""

import sys

import torch

import avp.models.conditional as conditional


def weighted_subset(points: torch.Tensor, mask: torch.Tensor, counts: torch.Tensor, weight: torch.Tensor):
    """``points [B, M, 3]``, ``mask``/``weight [B, M]`` -> ``index [B, K]``, ``valid [B, K]``."""
    B, M = mask.shape
    counts = torch.minimum(counts.long(), mask.sum(-1))
    K = int(counts.max())
    index = torch.zeros(B, K, dtype=torch.long)
    valid = torch.arange(K)[None] < counts[:, None]
    nearest = torch.full((B, M), torch.inf, dtype=points.dtype).masked_fill(~mask, -1.0)
    current = (weight * mask).argmax(-1)
    rows = torch.arange(B)
    for k in range(K):
        index[:, k] = torch.where(valid[:, k], current, torch.zeros_like(current))
        d = (points - points[rows, current][:, None]).square().sum(-1)
        nearest = torch.where(mask, torch.minimum(nearest, d), nearest)
        current = torch.where(mask, nearest.sqrt() * weight, torch.full_like(nearest, -1.0)).argmax(-1)
    return index, valid


def support_merge(gamma: float, radius: float):
    def merge(points, binding, mask, n_points, draws):
        BK, N = mask.shape
        B = BK // draws
        union = points.reshape(B, draws * N, 3).double()
        union_mask = mask.reshape(B, draws * N)
        target = torch.round(n_points.reshape(B, draws).double().mean(-1)).long().clamp_min(1)
        d = torch.cdist(union, union).masked_fill(~union_mask[:, None, :], torch.inf)  # [B, M, M]
        near = d.view(B, draws * N, draws, N).amin(-1) < radius  # [B, M, draws]
        own = (torch.arange(draws * N) // N)[None, :, None] == torch.arange(draws)[None, None, :]
        support = (near & ~own).sum(-1).double()
        index, valid = weighted_subset(union, union_mask, target, ((1 + support) / draws) ** gamma)
        kept = points.reshape(B, draws * N, 3).gather(1, index[..., None].expand(-1, -1, 3)) * valid[..., None]
        return kept, binding.reshape(B, draws * N).gather(1, index) * valid, valid

    return merge


def main(gamma: float, radius: float, argv: list[str]) -> int:
    conditional.merge_draws = support_merge(gamma, radius)
    if argv[:1] == ["points"]:
        import json

        from avp.benchmark_points import held_out_point_metrics

        ckpt, root, seed, draws, temperature = argv[1:6]
        [result] = held_out_point_metrics(root, "test", [ckpt], [int(seed)], [0.005, 0.01, 0.02],
                                          temperature=float(temperature), draws=int(draws))
        print(json.dumps({source: result[source] for source in ("generated", "template", "resampled")}))
        return 0
    from avp.eval.cli import main as evaluate

    return evaluate(argv)


if __name__ == "__main__":
    raise SystemExit(main(float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]))
