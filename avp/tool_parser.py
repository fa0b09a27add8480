"""The parser every tool verb builds (``avp data``, ``eval``, ``view``, ``compare``, ``sweep``, ``avatarize``,
``bench``): jsonargparse, the config mechanism of ``avp fit`` and the rest, so that each verb also takes ``--config
FILE`` and ``--print_config`` and names the offending key in its errors. Environment variables are not read: a verb's
options come from its command line and config files only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser


def tool_parser(prog: str, description: str | None = None, *, raw_text: bool = False,
                **kwargs: Any) -> ArgumentParser:
    """``jsonargparse.ArgumentParser(prog, description, **kwargs)`` with a ``--config`` option; ``raw_text``: the
    description and epilog are printed as written (command lines in them keep their lines)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    if raw_text:
        kwargs["formatter_class"] = _raw_text_formatter()
    parser = ArgumentParser(prog=prog, description=description, default_env=False, **kwargs)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file of these options (as --print_config "
                                                                  "writes)")
    return parser


def _raw_text_formatter() -> type:
    import argparse

    from jsonargparse import DefaultHelpFormatter

    class RawTextFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
        """jsonargparse's help (types, defaults) with the description and epilog kept as written."""

    return RawTextFormatter
