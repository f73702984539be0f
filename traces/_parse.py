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
import zlib
from pathlib import Path

import numpy as np
import polars as pl

from traces.schema import TraceError


BIG_FILE_BYTES = 32 << 20  # reading a file this large in full shows a progress bar


def _open_error(path: Path, e: OSError) -> Exception:
    if isinstance(e, FileNotFoundError):
        return FileNotFoundError(f"trace file not found: {path}")
    if isinstance(e, IsADirectoryError):
        return TraceError(f"{path}: is a directory, expected a trace file")
    return TraceError(f"{path}: cannot read ({e.strerror or e})")


def open_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when the name ends in ``.gz`` (a progress bar for big files)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size < BIG_FILE_BYTES:
                raw = f.read()
            else:
                from tqdm import tqdm

                buf = bytearray()
                with tqdm(total=size, unit="B", unit_scale=True, desc=f"reading {path.name}", mininterval=0.5) as bar:
                    while chunk := f.read(8 << 20):
                        buf += chunk
                        bar.update(len(chunk))
                raw = bytes(buf)
    except OSError as e:
        raise _open_error(path, e) from None
    if path.name.endswith(".gz"):
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise TraceError(f"{path}: not a valid gzip file ({e})") from None
    return raw


def open_lines(path: Path, max_lines: int | None = None) -> list[str]:
    """The file's text lines (gunzipped for ``.gz``); with ``max_lines``, only as many non-empty
    lines as that (and the empty lines between them), read lazily."""
    if max_lines is None:
        return _decode(path, open_bytes(path)).splitlines()
    out: list[str] = []
    kept = 0
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if kept >= max_lines:
                    break
                out.append(line.rstrip("\r\n"))
                kept += bool(line.strip())
    except UnicodeDecodeError as e:
        raise TraceError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise TraceError(f"{path}: not a valid gzip file ({e})") from None
    except OSError as e:
        raise _open_error(path, e) from None
    return out


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TraceError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None


def read_csv_strings(path: Path, data: bytes | None = None, max_rows: int | None = None,
                     typed=None) -> tuple[pl.DataFrame, np.ndarray]:
    """All columns as strings, plus each data row's 1-based line number in the file.

    ``max_rows``: read only the first that many data rows (a plain file is then not read to
    its end, so a few rows of a huge trace cost little memory and time).
    ``typed``: header columns -> ``{column: dtype}`` (or None): those columns are parsed as
    numbers while reading, so a big file's values never exist as text; when one does not
    parse, the whole file is read as strings instead (the caller rereads it as strings too
    when a typed value breaks a rule, so that messages quote the text as written).
    """
    if data is None:
        data = open_bytes(path) if max_rows is None or path.name.endswith(".gz") else _head_bytes(path, max_rows)
    head = data[:4096]
    try:  # a binary file fails here, before polars makes a header of its bytes (cut at a line end: no half character)
        (head if len(head) < 4096 else head[:head.rfind(b"\n") + 1]).decode("utf-8")
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not a UTF-8 text file (a binary file?), expected a CSV text file") from None
    types = typed(_header(data)) if typed is not None else None
    if types:
        try:
            df = pl.read_csv(io.BytesIO(data), infer_schema=False, schema_overrides=types, n_rows=max_rows)
            return df, _line_numbers(df)
        except pl.exceptions.PolarsError:
            pass  # a value that is not a number (or a ragged row): read as text, which names the line
    try:
        df = pl.read_csv(io.BytesIO(data), infer_schema=False, n_rows=max_rows)
    except pl.exceptions.NoDataError:
        raise TraceError(f"{path}: the file is empty, expected a CSV header line") from None
    except pl.exceptions.PolarsError as e:
        # polars names no line for ragged rows; find it with the csv module (slow but only on error).
        raise TraceError(_locate_csv_problem(path, data) or f"{path}: cannot parse as CSV ({_first_line(e)})") from None
    return df, _line_numbers(df)


def _header(data: bytes) -> list[str]:
    end = data.find(b"\n")
    line = (data if end < 0 else data[:end]).decode("utf-8", errors="replace").lstrip("\ufeff")
    return next(csv.reader([line]), [])


def _head_bytes(path: Path, max_rows: int) -> bytes:
    """The file's first bytes, enough for its header and ``max_rows`` complete CSV records (or the
    whole file): read in growing chunks, so a few rows of a huge file cost little memory."""
    buf = bytearray()
    chunk = 1 << 20
    try:
        with open(path, "rb") as f:
            while True:
                more = f.read(chunk)
                buf += more
                if len(more) < chunk:
                    return bytes(buf)  # the end of the file
                data = bytes(buf[:buf.rfind(b"\n") + 1])
                if data.count(b"\n") > max_rows + 1:  # enough lines; records may span lines (quoted newlines)
                    try:
                        if pl.read_csv(io.BytesIO(data), infer_schema=False, n_rows=max_rows + 1).height > max_rows:
                            return data  # record max_rows + 1 begins, so the first max_rows are complete
                    except pl.exceptions.PolarsError:
                        pass  # cut inside a quoted field: read on
                chunk *= 2
    except OSError as e:
        raise _open_error(path, e) from None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


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
    for col in df.columns:  # (most files have no quoted newline: count only in the text columns that have one)
        if df[col].dtype == pl.String and df[col].str.contains("\n", literal=True).any():
            extra += df[col].str.count_matches("\n", literal=True).fill_null(0).to_numpy()
    starts = 2 + np.arange(n, dtype=np.int64)
    if extra.any():
        starts[1:] += np.cumsum(extra)[:-1]
    return starts


def strip_then(series: pl.Series, convert) -> pl.Series:
    """``convert(series)`` (strings to numbers or times, nulls where a value does not convert), with
    surrounding blanks ignored. A stripped copy is made only when the plain conversion leaves a value
    unconverted: a big file's column is not copied for the blanks it rarely has."""
    vals = convert(series)
    if vals.null_count() > series.null_count():
        vals = convert(series.str.strip_chars())
    return vals


def filled(vals: pl.Series, fill) -> np.ndarray:
    """``vals`` as a numpy array, nulls as ``fill`` (no copy of the column when it has no null)."""
    return (vals if vals.null_count() == 0 else vals.fill_null(fill)).to_numpy()


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
        """Mark rows where ``bad`` is true (values: the raw strings, for the message; a polars
        Series, not a list: only the first bad row's value is read, and a list of a big file's
        values would cost far more memory than the file).

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
        raw = series  # indexed only for an error message (a list of every value would cost memory)
        vals = strip_then(series, lambda c: c.cast(pl.Int64, strict=False))
        missing = vals.is_null().to_numpy()
        self.flag(missing, column, raw, "an integer" + (f" >= {minimum}" if minimum is not None else ""))
        out = filled(vals, 0).astype(np.int64, copy=False)
        if minimum is not None:
            self.flag(~missing & (out < minimum), column, raw, f"an integer >= {minimum}", hint)
        return out

    def floats(self, series: pl.Series, column: str, minimum: float | None = 0.0) -> np.ndarray:
        raw = series
        vals = strip_then(series, lambda c: c.cast(pl.Float64, strict=False))
        missing = vals.is_null().to_numpy()
        out = filled(vals, 0.0).astype(np.float64, copy=False)
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
        if n_bad and n_bad == int(self.active.sum()):  # skipping would leave nothing to serve
            raise TraceError(f"{self.path}: all {n_bad} row(s) are bad, so skipping them leaves none; "
                             f"first: {self.first_problem()}")
        if n_bad:
            notes["skipped_bad_rows"] = n_bad
            notes["first_skipped_problem"] = self.first_problem()
            warnings.warn(f"{self.path}: skipped {n_bad} bad row(s) of {len(self.bad)}; first: {self.first_problem()}",
                          stacklevel=3)
        return notes


def check_non_decreasing(path, where: np.ndarray, arrival_s: np.ndarray, column: str, line_word: str = "line") -> None:
    """Arrivals must not go back in time; name the first row that does."""
    if len(arrival_s) > 1:
        back = arrival_s[1:] < arrival_s[:-1]  # (no array of differences: a big file's column each)
        if back.any():
            i = int(np.argmax(back)) + 1
            raise TraceError(f"{path}: {line_word} {where[i]}, column {column!r}: arrival {float(arrival_s[i])!r} is "
                             f"earlier than the previous row's {float(arrival_s[i - 1])!r}; expected non-decreasing arrivals "
                             f"(pass sort=True, or --sort, to sort the rows by arrival time)")


def require_columns(path, columns: list[str], needed: list[str], fmt: str) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise TraceError(f"{path}: {fmt} format needs column(s) {missing}; the header has {short_columns(columns)}")


def short_columns(columns: list[str], limit: int = 12) -> str:
    """A header for a message: at most ``limit`` names (a wide or binary 'header' stays readable)."""
    names = [c if len(c) <= 40 else c[:37] + "..." for c in columns[:limit]]
    return str(names) if len(columns) <= limit else f"{str(names)[:-1]}, ...] ({len(columns)} columns)"
