"""`avp eval` with sampling settings the protocol does not override (EXPERIMENTS.md, exp26).

Usage: python docs/benchmark/diag_eval_sampling.py '{SamplingConfig fields}' AVP_EVAL_ARGS ...
e.g. '{"bind_nearest": 1}' or '{"role_temperature": [0.8, 0.8, 1.1, 0.8]}', then the arguments of `avp eval`. The
decoder checkpoint's sampling settings get the given fields before the evaluation reads them (the protocol's
temperature, top-k, top-p, point limits and draws still apply on top, as in every evaluation; `draws` needs no patch:
`--override sampling.draws=K`).
"""

import dataclasses
import json
import sys

import avp.eval.runner as runner
from avp.checkpoints import load_avatar_model


def main(fields: dict, argv: list[str]) -> int:
    def load(*args, **kwargs):
        model, hparams = load_avatar_model(*args, **kwargs)
        model.sampling = dataclasses.replace(model.sampling, **fields)
        return model, hparams

    runner.load_avatar_model = load
    from avp.eval.cli import main as evaluate

    return evaluate(argv)


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1]), sys.argv[2:]))
