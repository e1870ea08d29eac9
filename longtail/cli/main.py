"""``longtail`` command line: each sub-command lives in its own module with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import sys

from longtail.errors import LongtailError, keyword_spelling

# Sub-command modules of longtail.cli; each defines add_parser(subparsers) and run(args) -> int, and may define
# spell_setting(Setting) -> str: how its users set what an error's fix names (e.g. `data.root=<folder>`).
# Building the parser imports every one of them, so they import the engine and the methods inside the functions
# that use them: importing those (models, timm) up front would make `longtail --help` start about half again slower.
COMMANDS = ("datasets", "train", "eval", "predict", "export", "recipes", "cluster")
INTERRUPTED = 130  # the shell's exit status for a process ended by Ctrl-C (128 + SIGINT)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longtail", description="Long-tailed visual recognition.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"longtail.cli.{name}")
        sub = module.add_parser(subparsers)
        sub.set_defaults(run=module.run, spell_setting=getattr(module, "spell_setting", keyword_spelling))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except LongtailError as error:
        print(f"longtail: error: {error.spelled(args.spell_setting)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"\nlongtail: interrupted. {interrupt}".rstrip(), file=sys.stderr)
        return INTERRUPTED
