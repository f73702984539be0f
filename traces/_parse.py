"""Column parsing with row-level error reporting, shared by every file format.

Every reader turns a file into a table of *strings* first (polars, no type inference)
and then converts each column here. A value that does not convert, or breaks a range
rule, is reported as ``<file>: line L, column 'C': got 'V', expected ...`` with L the
1-based line number in the file. Nothing is dropped silently: with
``skip_bad_rows=True`` the bad rows are removed, counted, written into the trace's
notes and announced with a warning.
"""
from __future__ import annotations

import csv
import gzip
import io
import warnings
from pathlib import Path

import numpy as np
import polars as pl

from traces.schema import TraceError


def open_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when the name ends in ``.gz``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"trace file not found: {path}") from None
    if path.name.endswith(".gz"):
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise TraceError(f"{path}: not a valid gzip file ({e})") from None
    return raw


def read_csv_strings(path: Path, data: bytes | None = None) -> tuple[pl.DataFrame, np.ndarray]:
    """All columns as strings, plus each data row's 1-based line number in the file."""
    data = open_bytes(path) if data is None else data
    try:
        df = pl.read_csv(io.BytesIO(data), infer_schema=False)
    except pl.exceptions.NoDataError:
        raise TraceError(f"{path}: the file is empty, expected a CSV header line") from None
    except pl.exceptions.PolarsError as e:
        # polars names no line for ragged rows; find it with the csv module (slow but only on error).
        raise TraceError(_locate_csv_problem(path, data) or f"{path}: cannot parse as CSV ({e})") from None
    return df, _line_numbers(df)


def _locate_csv_problem(path: Path, data: bytes) -> str | None:
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="replace")))
    header = next(reader, None)
    if header is None:
        return None
    for rec in reader:
        if rec and len(rec) > len(header):
            return (f"{path}: line {reader.line_num}: {len(rec)} fields, expected {len(header)} "
                    f"(header: {','.join(header)})")
    return None


def _line_numbers(df: pl.DataFrame) -> np.ndarray:
    """Line of each record: header is line 1; quoted fields may hold newlines, so count them."""
    n = df.height
    extra = np.zeros(n, dtype=np.int64)
    for col in df.columns:
        extra += df[col].str.count_matches("\n", literal=True).fill_null(0).to_numpy().astype(np.int64)
    starts = 2 + np.arange(n, dtype=np.int64)
    if extra.any():
        starts[1:] += np.cumsum(extra)[:-1]
    return starts


class RowChecker:
    """Converts string columns to numbers, raising on (or collecting) bad rows.

    ``where`` gives each row's location for messages: an array of line numbers
    (``line_word='line'``) or record numbers (``line_word='record'`` for JSON lists).
    """

    def __init__(self, path: Path | str, where: np.ndarray, skip_bad_rows: bool = False, line_word: str = "line"):
        self.path = str(path)
        self.where = np.asarray(where)
        self.skip = skip_bad_rows
        self.line_word = line_word
        self.bad = np.zeros(len(self.where), dtype=bool)
        # Rows a format's filter removed (e.g. another model's rows): not checked, not "bad".
        self.active = np.ones(len(self.where), dtype=bool)
        self.problems: list[tuple[int, str]] = []  # (row index, message) of each check's first new bad row

    def flag(self, bad: np.ndarray, column: str, values, expected: str, hint: str = "") -> None:
        """Mark rows where ``bad`` is true (values: the raw strings, for the message).

        Nothing is raised here: :meth:`raise_if_bad` reports the problem on the earliest
        line once every column has been checked, so the first error in the file is named.
        """
        bad = np.asarray(bad, dtype=bool) & self.active
        new = bad & ~self.bad
        if not new.any():
            return
        i = int(np.argmax(new))
        got = values[i]
        self.problems.append((i, f"{self.path}: {self.line_word} {self.where[i]}, column {column!r}: got "
                                 f"{'a missing value' if got is None else repr(got)}, expected {expected}{hint}"))
        self.bad |= bad

    def first_problem(self) -> str | None:
        return min(self.problems)[1] if self.problems else None

    def raise_if_bad(self) -> None:
        if self.problems and not self.skip:
            raise TraceError(self.first_problem() + "; pass skip_bad_rows=True (--skip-bad-rows) to drop bad rows "
                             "(they are counted "
                             "and reported)")

    def integers(self, series: pl.Series, column: str, minimum: int | None = None, hint: str = "") -> np.ndarray:
        raw = series.to_list()
        vals = series.str.strip_chars().cast(pl.Int64, strict=False)
        missing = vals.is_null().to_numpy()
        self.flag(missing, column, raw, "an integer" + (f" >= {minimum}" if minimum is not None else ""))
        out = vals.fill_null(0).to_numpy().astype(np.int64)
        if minimum is not None:
            self.flag(~missing & (out < minimum), column, raw, f"an integer >= {minimum}", hint)
        return out

    def floats(self, series: pl.Series, column: str, minimum: float | None = 0.0) -> np.ndarray:
        raw = series.to_list()
        vals = series.str.strip_chars().cast(pl.Float64, strict=False)
        missing = vals.is_null().to_numpy()
        out = vals.fill_null(0.0).to_numpy().astype(np.float64)
        expected = "a finite number" + (f" >= {minimum:g}" if minimum is not None else "")
        bad = missing | ~np.isfinite(out)
        if minimum is not None:
            bad |= out < minimum
        self.flag(bad, column, raw, expected)
        return out

    def keep_mask(self) -> np.ndarray:
        return self.active & ~self.bad

    def report(self, notes: dict) -> dict:
        """Raise on bad rows, or (skipping) record them in ``notes`` and warn; no-op when all rows are good."""
        self.raise_if_bad()
        n_bad = int((self.bad & self.active).sum())
        if n_bad:
            notes["skipped_bad_rows"] = n_bad
            notes["first_skipped_problem"] = self.first_problem()
            warnings.warn(f"{self.path}: skipped {n_bad} bad row(s) of {len(self.bad)}; first: {self.first_problem()}",
                          stacklevel=3)
        return notes


def check_non_decreasing(path, where: np.ndarray, arrival_s: np.ndarray, column: str, line_word: str = "line") -> None:
    """Arrivals must not go back in time; name the first row that does."""
    if len(arrival_s) > 1:
        back = np.diff(arrival_s) < 0
        if back.any():
            i = int(np.argmax(back)) + 1
            raise TraceError(f"{path}: {line_word} {where[i]}, column {column!r}: arrival {arrival_s[i]!r} is earlier "
                             f"than the previous row's {arrival_s[i - 1]!r}; expected non-decreasing arrivals "
                             f"(pass sort=True, or --sort, to sort the rows by arrival time)")


def require_columns(path, columns: list[str], needed: list[str], fmt: str) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise TraceError(f"{path}: {fmt} format needs column(s) {missing}; the header has {columns}")
