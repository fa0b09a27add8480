"""``avp bench NAME``: benchmarks that print one JSON object (and optionally write it to ``--out``).

Every module in this package that defines ``DESCRIPTION``, ``add_arguments(parser)`` (a jsonargparse parser, so
every option may also come from ``--config FILE``) and ``run(args) -> dict`` is a benchmark named after the module.
Figures are ratios measured in the same run where possible, so they survive a change of machine; absolute times are
reported beside them with the environment they were measured on.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from avp.atomic import atomic_write_json
from avp.provenance import environment

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser


def available() -> dict[str, ModuleType]:
    benches = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if all(hasattr(module, a) for a in ("DESCRIPTION", "add_arguments", "run")):
            benches[info.name] = module
    return benches


def build_parser(name: str, module: ModuleType) -> ArgumentParser:
    """The parser of ``avp bench NAME``: the options every benchmark takes, then the module's own."""
    from avp.tool_parser import tool_parser

    parser = tool_parser(f"avp bench {name}", module.DESCRIPTION)
    parser.add_argument("--out", type=str, default=None, help="also write the JSON result to this file")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2, our CI machines)")
    module.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    benches = available()
    if not argv or argv[0] in ("-h", "--help", "--list"):
        print("usage: avp bench NAME [--out FILE] [--threads N] [--config FILE] [options]   (avp bench NAME --help)"
              "\n\nbenchmarks:")
        for name, module in sorted(benches.items()):
            print(f"  {name:<10} {module.DESCRIPTION}")
        return 0 if argv else 2
    name = argv[0]
    if name not in benches:
        print(f"avp bench: unknown benchmark {name!r}; available: {', '.join(sorted(benches))}", file=sys.stderr)
        return 2
    module = benches[name]
    args = build_parser(name, module).parse_args(argv[1:])

    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = {"benchmark": name, "environment": environment(), **module.run(args)}
    result["wall_s"] = round(time.perf_counter() - start, 2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_json(args.out, result)
    return 0
