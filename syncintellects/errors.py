"""The one exception type for a user's mistake, and how the command line reports it.

Raise :class:`UsageError` (or any ``ValueError``, e.g. ``traces.TraceError``) for anything a
user can cause, with a message that names the flag, file, line or field and what was
expected. ``syncintellects.cli.main`` turns it into exit status 2 and that one line on
stderr (the traceback only with ``--debug``)::

    from syncintellects.errors import UsageError
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")

Other exits: Ctrl-C (KeyboardInterrupt) is 130 and SIGTERM 143, each with one line.
"""
from __future__ import annotations


class UsageError(ValueError):
    """A mistake in the user's input: the command reports the message and exits with status 2."""


def one_line(e: BaseException) -> str:
    """An exception's message on one line (multi-line messages joined with '; ')."""
    text = str(e).strip() or type(e).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def check_out_dir(path, flag: str = "--out"):
    """Check, before any work, that ``path`` is (or can be made) a writable directory.

    Creates it. Raises :class:`UsageError` naming ``flag`` for "", a file, or a directory
    that cannot be created or written. Returns the path as a ``pathlib.Path``.
    """
    import os
    import tempfile
    from pathlib import Path

    if path is None or str(path).strip() == "":
        raise UsageError(f"{flag}: empty path, expected an output directory")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {path}: is a file, expected a directory (it would hold several output files)")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None
    return p


def check_out_file(path, flag: str = "--out"):
    """Check, before any work, that the file ``path`` can be written (its folder is created).

    Raises :class:`UsageError` naming ``flag`` for "", a directory, or a place that cannot
    be written. Returns the path as a ``pathlib.Path``.
    """
    from pathlib import Path

    if path is None or str(path).strip() == "":
        raise UsageError(f"{flag}: empty path, expected an output file")
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path}: is a directory, expected a file path")
    check_out_dir(p.parent if str(p.parent) else ".", flag=f"{flag} {path}: its folder")
    if p.exists():
        import os

        if not os.access(p, os.W_OK):
            raise UsageError(f"{flag} {path}: the file exists and cannot be written")
    return p
