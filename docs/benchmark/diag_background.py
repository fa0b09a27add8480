"""Where a row's image error lies: inside the foreground masks or on the background (EXPERIMENTS.md, exp36).

Usage: python docs/benchmark/diag_background.py AVP_EVAL_ARGS ...
The arguments of `avp eval` (e.g. those `avp benchmark` logs for a row and seed). Every masked PSNR update of the
evaluation also adds the squared error of its images inside and outside the masks; prints the mean squared error of
each (per pixel and channel) and the background's share of the whole image's error.
"""

import json
import sys

import avp.metrics.image as image


def main(argv: list[str]) -> int:
    sums = {"fg": 0.0, "bg": 0.0, "n_fg": 0.0, "n_bg": 0.0}
    update = image.PSNR.update

    def counting(self, preds, target, mask=None):
        if mask is not None:
            err = (preds.float() - target.float()).square().mean(1, keepdim=True)  # [B, 1, H, W]
            weight = mask.float()
            sums["fg"] += float((err * weight).sum())
            sums["bg"] += float((err * (1 - weight)).sum())
            sums["n_fg"] += float(weight.sum())
            sums["n_bg"] += float((1 - weight).sum())
        return update(self, preds, target, mask)

    image.PSNR.update = counting
    from avp.eval.cli import main as evaluate

    code = evaluate(argv)
    if code == 0:
        print(json.dumps({"mse_foreground": sums["fg"] / sums["n_fg"], "mse_background": sums["bg"] / sums["n_bg"],
                          "foreground_fraction": sums["n_fg"] / (sums["n_fg"] + sums["n_bg"]),
                          "background_share_of_error": sums["bg"] / (sums["fg"] + sums["bg"])}))
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
