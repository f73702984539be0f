"""Per-step records in chunks: the summary's step totals, and streaming to Parquet part files.

A long run's per-step records (64 bytes a segment) need not stay in memory. Given a spill
directory, a :class:`~simulator.metrics.Recorder` writes every ``CHUNK`` segments to a part file
and keeps only the running :class:`StepTotals` the summary needs; ``steps.parquet`` is assembled
from the parts at the end by polars' streaming sink, so no step of the run is ever held whole.

Nothing depends on whether a run streamed: the totals are always summed chunk by chunk over the
same ``CHUNK``-row chunks, and a table of more than ``CHUNK`` rows is always written through part
files of those chunks (an in-memory one is cut into them first) with a fixed row-group size, so
the same run gives the same ``steps.parquet`` and ``summary.json`` bytes, streamed or not, on any
number of threads. A table of at most ``CHUNK`` rows is written directly, as it always was.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

CHUNK = 1 << 16  # segments per part file and per summed chunk (4 MB of records)


@dataclass
class StepTotals:
    """What the summary needs from the per-step table, summed chunk by chunk."""

    rows_in_table: int = 0
    busy_s: float = 0.0      # sum of segment durations (polars' sum, per chunk)
    steps: int = 0
    rows: int = 0            # batch rows over all steps
    padded: int = 0
    kv_block_s: float = 0.0  # sum of kv_blocks_used * duration (numpy's sum, per chunk)
    dur_s: float = 0.0       # numpy's sum of durations, per chunk (the KV utilisation's weight)
    kv_peak: int = 0

    def add(self, chunk: pl.DataFrame) -> None:
        if not chunk.height:
            return
        d = chunk["end_s"] - chunk["start_s"]
        dur = d.to_numpy()
        self.rows_in_table += chunk.height
        self.busy_s += float(d.sum())
        self.steps += int(chunk["num_steps"].sum())
        self.rows += int((chunk["batch_size"] * chunk["num_steps"]).sum())
        self.padded += int((chunk["padded_rows"] * chunk["num_steps"]).sum())
        self.kv_block_s += float((chunk["kv_blocks_used"].to_numpy() * dur).sum())
        self.dur_s += float(dur.sum())
        self.kv_peak = max(self.kv_peak, int(chunk["kv_blocks_used"].max()))

    @classmethod
    def of(cls, steps: pl.DataFrame) -> "StepTotals":
        t = cls()
        for off in range(0, steps.height, CHUNK):
            t.add(steps.slice(off, CHUNK))
        return t

    @classmethod
    def merge(cls, items: list["StepTotals"]) -> "StepTotals":
        """Replicas' totals added in replica order; the peak is the largest replica's."""
        t = cls()
        for x in items:
            for name in ("rows_in_table", "busy_s", "steps", "rows", "padded", "kv_block_s", "dur_s"):
                setattr(t, name, getattr(t, name) + getattr(x, name))
            t.kv_peak = max(t.kv_peak, x.kv_peak)
        return t


@dataclass
class Spill:
    """Part files of one recorder's per-step records, written ``CHUNK`` segments at a time."""

    directory: Path
    parts: list[Path] = field(default_factory=list)
    totals: StepTotals = field(default_factory=StepTotals)

    def write(self, frame: pl.DataFrame) -> None:
        if not self.parts:
            if self.directory.exists():  # left by an interrupted run
                shutil.rmtree(self.directory)
            self.directory.mkdir(parents=True)
        path = self.directory / f"part-{len(self.parts):06d}.parquet"
        frame.write_parquet(path, statistics=False)
        self.parts.append(path)
        self.totals.add(frame)


@dataclass
class StepRecords:
    """A run's per-step table, per replica: a frame in memory or part files (``pieces[k]``)."""

    pieces: list[pl.DataFrame | list[Path]]
    totals: list[StepTotals]
    replica_column: bool  # a cluster's table says which replica ran each segment
    spill_dirs: list[Path] = field(default_factory=list)
    written: Path | None = None  # once streamed into steps.parquet, the table is read from there

    @property
    def height(self) -> int:
        return sum(t.rows_in_table for t in self.totals)

    @property
    def in_memory(self) -> bool:
        return self.written is None and all(isinstance(p, pl.DataFrame) for p in self.pieces)

    def _lazy(self, items: list[tuple[int, pl.DataFrame | list[Path]]]) -> pl.LazyFrame:
        frames = []
        for k, p in items:
            f = p.lazy() if isinstance(p, pl.DataFrame) else pl.scan_parquet(p)
            frames.append(f.with_columns(replica=pl.lit(k, dtype=pl.Int64)) if self.replica_column else f)
        return pl.concat(frames)

    def frame(self) -> pl.DataFrame:
        """The whole table in memory (read back from the files if the run streamed)."""
        if self.written is not None:
            return pl.read_parquet(self.written)
        if self.in_memory:
            if not self.replica_column:
                return self.pieces[0]
            return pl.concat([s.with_columns(replica=pl.lit(k, dtype=pl.Int64)) for k, s in enumerate(self.pieces)])
        return self._lazy(list(enumerate(self.pieces))).collect()

    def write(self, path: Path) -> None:
        """Write ``steps.parquet``: directly if small and in memory, else streamed from ``CHUNK``-row parts."""
        if self.height <= CHUNK and self.in_memory:
            self.frame().write_parquet(path, statistics=False)
            return
        if self.written is not None:
            shutil.copyfile(self.written, path)
            return
        tmp = path.parent / f".{path.name}.parts"
        items = []
        for k, p in enumerate(self.pieces):
            if isinstance(p, pl.DataFrame):  # cut into the chunks a streamed run writes
                spill = Spill(tmp / f"r{k:04d}")
                for off in range(0, p.height, CHUNK):
                    spill.write(p.slice(off, CHUNK))
                p = spill.parts
            if p:  # a replica that ran no step has no part file
                items.append((k, p))
        self._lazy(items).sink_parquet(path, statistics=False, row_group_size=CHUNK)
        if tmp.exists():
            shutil.rmtree(tmp)
        if self.spill_dirs:  # the parts were the run's only copy: from now on, the file is
            self.written = path
            self.pieces = []
            for d in self.spill_dirs:
                if d.exists():
                    shutil.rmtree(d)
