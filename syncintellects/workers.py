"""Worker processes that can be stopped: the machinery shared by ``sweep`` and ``reproduce``.

- :func:`interruptible` turns SIGINT and SIGTERM into :class:`Interrupted` in the main
  process, so the caller's ``finally`` blocks stop the workers and keep what is done;
  the command then exits 128 + signal number (130 / 143) with one line.
- :func:`parallel` runs jobs in a pool of spawned processes and yields results as they
  finish. Workers ignore SIGINT (the main process decides), die on SIGTERM (what
  ``Pool.terminate`` sends), and exit on their own when their parent disappears (even
  after a ``kill -9`` of the main process no worker keeps running).
- :func:`write_atomic` writes a file so that a reader sees the old file or the whole new one.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
from pathlib import Path

SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class Interrupted(Exception):
    """The user stopped the command with SIGINT or SIGTERM; ``exit_status`` is 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(SIGNAL_NAMES.get(signum, f"signal {signum}"))
        self.signum = signum
        self.exit_status = 128 + signum


@contextlib.contextmanager
def interruptible():
    """Within the block, the first SIGINT / SIGTERM raises :class:`Interrupted`; later ones are
    ignored while the caller cleans up. Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in SIGNAL_NAMES}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:  # the main process is gone (killed): stop now, write nothing more
            os._exit(1)


def _worker_init() -> None:
    from tqdm import tqdm

    # tqdm's default lock holds a multiprocessing semaphore; a worker stopped by SIGTERM could not
    # release it (the resource tracker then warns of a leak), and workers draw no bars anyway
    tqdm.set_lock(threading.RLock())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()


def parallel(fn, jobs: list, workers: int):
    """Yield ``fn(job)`` for every job, in completion order, from ``workers`` spawned processes
    (in this process when ``workers == 1``). Closing the generator early, or an exception in
    it, terminates the workers at once; their unfinished jobs are lost (the caller keeps what
    it has already received)."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield fn(job)
        return
    pool = mp.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_worker_init)
    finished = False
    try:
        yield from pool.imap_unordered(fn, jobs)
        finished = True
        pool.close()
    finally:
        if not finished:
            pool.terminate()
        pool.join()


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # an error or a signal mid-write: leave no half-written temporary behind
        tmp.unlink(missing_ok=True)
        raise


def slug(text: str) -> str:
    """``text`` as a file-name part: lower case, runs of other characters as one ``-``."""
    out = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    while "--" in out:
        out = out.replace("--", "-")
    return out


INPUTS_FILE = "inputs.json"


class RowStore:
    """``OUT/runs/<key>.json``: one result row per finished run, and ``study.json`` naming the
    study they belong to (a different study into the same ``OUT`` is refused unless ``fresh``)."""

    def __init__(self, out: str | Path, study: dict, key, fresh: bool, what: str = "study",
                 inputs: dict[str, str] | None = None):
        from syncintellects.errors import check_out_dir
        from syncintellects.inputs import check_unchanged

        self.dir = check_out_dir(out) / "runs"
        self.key, self.fresh, self.inputs = key, fresh, inputs
        self.text = json.dumps(study, indent=1, sort_keys=True, default=str) + "\n"
        old = self.dir / "study.json"
        if not fresh and self.dir.exists() and (not old.exists() or old.read_text() != self.text):
            raise ValueError(f"--out {self.dir.parent} holds the runs of a different {what}; use another --out, "
                             f"or --fresh to delete them")
        self.inputs_file = self.dir.parent / INPUTS_FILE  # beside runs/, whose *.json are the rows
        if not fresh and inputs is not None and self.dir.exists() and self.inputs_file.exists():  # older: none
            check_unchanged(json.loads(self.inputs_file.read_text()), inputs, f"--out {self.dir.parent}")

    def begin(self) -> dict[str, dict]:
        """Record the study (after removing old runs when ``fresh``); the rows already done, by key."""
        if self.fresh and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(exist_ok=True)
        write_atomic(self.dir / "study.json", self.text)
        if self.inputs is not None:  # the content of the files its runs read (syncintellects.inputs)
            write_atomic(self.inputs_file, json.dumps(self.inputs, indent=1, sort_keys=True) + "\n")
        return {p.stem: json.loads(p.read_text()) for p in self.dir.glob("*.json") if p.name != "study.json"}

    def write(self, row: dict) -> None:
        # key order kept (no sort_keys): a row read back is the row written
        write_atomic(self.dir / f"{self.key(row)}.json", json.dumps(row, indent=1))
