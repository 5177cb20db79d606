"""Tables: :func:`read_table` (CSV with delimiter sniffing, decimal commas, missing-value
markers; Parquet) into a pandas DataFrame, with one bounded error message for a bad table.

pandas is imported lazily (``pip install fastreg[tables]``); ``import fastreg`` and the
inference path stay NumPy-only.

A CSV is decoded as a whole first, so a byte that is not valid in ``encoding`` is reported on
the row that holds it; the header's duplicate check is a single counting pass (linear in the
number of columns); every column with unusable cells is listed in ONE :class:`TableError`,
capped at :data:`MAX_LISTED` entries with a count of the rest.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from collections import Counter

import numpy as np

__all__ = ["DEFAULT_NA_VALUES", "MAX_LISTED", "TableError", "frame_to_array", "read_table",
           "row_numbers"]

#: Cells read as missing by default (after stripping blanks). ``nan`` and ``inf`` are not
#: markers: a literal non-finite number in a CSV is reported as an error.
DEFAULT_NA_VALUES = ("", "NA", "N/A", "n/a", "na", "NULL", "null", "None", "?", "-", "#N/A",
                     "missing")
#: At most this many offending columns / names are spelled out in one error message.
MAX_LISTED = 20
#: Longest cell text quoted in an error message.
_MAX_CELL = 40
_SEPARATORS = (",", ";", "\t")
_DECIMAL_COMMA = re.compile(r"^[+-]?\d*,\d+(?:[eE][+-]?\d+)?$")


class TableError(ValueError):
    """A table that cannot be used; the message names the source, the rows and the columns."""


def _pandas():
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("fastreg.data.read_table needs pandas: pip install "
                          "'fastreg[tables]'") from None
    return pd


def _short(text: str) -> str:
    return repr(text if len(text) <= _MAX_CELL else text[:_MAX_CELL] + "...")


def _listing(items: list[str], what: str = "more") -> str:
    """``items`` joined, at most MAX_LISTED of them, then "(and N more)"."""
    head = "; ".join(items[:MAX_LISTED])
    if len(items) > MAX_LISTED:
        head += f"; (and {len(items) - MAX_LISTED} {what})"
    return head


def _names(names, limit: int = MAX_LISTED) -> str:
    names = list(names)
    text = ", ".join(_short(str(n)) for n in names[:limit])
    if len(names) > limit:
        text += f", ... ({len(names) - limit} more)"
    return "[" + text + "]"


def _source_name(src) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return getattr(src, "name", None) or f"<{type(src).__name__}>"


def _read_bytes(src, name: str) -> bytes:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src)
    if isinstance(src, (str, os.PathLike)):
        try:
            with open(src, "rb") as f:
                return f.read()
        except OSError as exc:
            raise TableError(f"{name}: cannot open ({exc.strerror or exc})") from None
    if hasattr(src, "read"):
        data = src.read()
        return data.encode("utf-8") if isinstance(data, str) else bytes(data)
    raise TypeError(f"path_or_buffer must be a path, bytes or a file object, got "
                    f"{type(src).__name__}")


def _decode(raw: bytes, encoding: str, name: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        row = raw.count(b"\n", 0, exc.start) + 1
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        bad = raw[exc.start:exc.end].hex()
        raise TableError(f"{name}: row {row}: byte 0x{bad} at character "
                         f"{exc.start - line_start + 1} is not valid {encoding} (pass the "
                         "file's encoding, e.g. encoding='latin-1')") from None
    except LookupError:
        raise TableError(f"encoding: unknown codec {encoding!r}") from None


def _sniff(text: str) -> str:
    """The separator among ``, ; tab`` that splits the first 20 lines into the same number of
    fields, the largest such number; when none is uniform (a ragged row), the one that splits
    the header into the most fields; ties and single columns: ","."""
    head = text[:65536]
    lines = head.splitlines()
    if len(text) > len(head) and not head.endswith(("\n", "\r")) and len(lines) > 1:
        lines = lines[:-1]                     # drop a partial last line
    lines = [ln for ln in lines[:20] if ln.strip()]
    best, best_key = ",", (False, 1)
    for sep in _SEPARATORS:
        try:
            counts = [len(r) for r in csv.reader(lines, delimiter=sep)]
        except csv.Error:
            continue
        if not counts:
            continue
        key = (len(set(counts)) == 1, counts[0])
        if counts[0] > 1 and key > best_key:
            best, best_key = sep, key
    return best


def read_table(path_or_buffer, *, sep: str | None = None, decimal: str | None = None,
               na_values=DEFAULT_NA_VALUES, columns=None, encoding: str = "utf-8-sig",
               format: str | None = None, text_columns=()):
    r"""Read a CSV or Parquet table into a pandas DataFrame of float64 and text columns.

    Parameters
    ----------
    path_or_buffer : str, os.PathLike, bytes or file object
    sep : {",", ";", "\t"} or str, optional
        Field separator; None sniffs it from the first 20 lines (the candidate that gives every
        line the same, largest number of fields).
    decimal : {".", ","}, optional
        Decimal mark; None: "," when the separator is not "," and a sampled cell looks like
        ``12,5``, else ".".
    na_values : iterable of str
        Cells (after stripping blanks) that mean "missing" (NaN in numeric columns, None in
        text columns). ``nan``/``inf`` are not markers by default: non-finite numbers are errors.
    columns : list of str, optional
        Keep only these columns, in this order (missing ones are an error naming them).
    encoding : str
        Text encoding of a CSV (``utf-8-sig`` accepts a BOM).
    format : {"csv", "parquet"}, optional
        Default: Parquet for ``.parquet``/``.pq`` paths or data starting with ``PAR1``.
    text_columns : iterable of str
        Columns kept as text even if their cells look numeric (category codes, IDs).

    Returns
    -------
    pandas.DataFrame
        A column whose non-missing cells all parse as finite numbers is float64; a column
        where fewer than half do is text (object dtype, None for missing). Rows are numbered
        as in the file (the header is row 1; blank lines are skipped but counted):
        :func:`row_numbers` (kept in ``df.attrs["row_numbers"]``, a JSON-able list, only when
        they are not simply 2, 3, ...).

    Raises
    ------
    TableError (a ValueError)
        Unreadable or empty file, bytes not valid in ``encoding`` (with their row), duplicate or
        empty column names, rows with the wrong number of cells, and mostly-numeric columns with
        cells that are not finite numbers: all offending columns in one message, each with its
        first bad row and cell, at most :data:`MAX_LISTED` spelled out.
    """
    pd = _pandas()
    name = _source_name(path_or_buffer)
    if sep is not None and (not isinstance(sep, str) or len(sep) != 1 or sep in "\"\r\n"):
        raise ValueError(f"sep must be one character (',', ';', '\\t'), got {sep!r}")
    if decimal not in (None, ".", ","):
        raise ValueError(f"decimal must be '.', ',' or None (detect), got {decimal!r}")
    if isinstance(na_values, str):
        na_values = (na_values,)
    na = frozenset(str(v).strip() for v in (na_values or ()))
    if format not in (None, "csv", "parquet"):
        raise ValueError(f"format must be 'csv', 'parquet' or None, got {format!r}")
    if format is None and isinstance(path_or_buffer, (str, os.PathLike)) and \
            os.fspath(path_or_buffer).lower().endswith((".parquet", ".pq")):
        format = "parquet"
    raw = _read_bytes(path_or_buffer, name)
    if format == "parquet" or (format is None and raw[:4] == b"PAR1"):
        df = _read_parquet(pd, raw, name)
    else:
        df = _read_csv(pd, raw, name, sep, decimal, na, encoding, frozenset(text_columns))
    if columns is not None:
        columns = list(columns)
        have = set(df.columns)
        missing = [c for c in columns if c not in have]
        if missing:
            raise TableError(f"{name}: column(s) {_names(missing)} not found (columns: "
                             f"{_names(df.columns)})")
        rows = df.attrs.get("row_numbers")
        df = df[columns]
        if rows is not None:
            df.attrs["row_numbers"] = rows
    return df


def _read_parquet(pd, raw: bytes, name: str):
    try:
        df = pd.read_parquet(io.BytesIO(raw))
    except ImportError as exc:
        raise ImportError(f"{name}: reading Parquet needs pyarrow: pip install "
                          f"'fastreg[tables]' ({exc})") from None
    except Exception as exc:   # noqa: BLE001 - the engine's own error types vary
        raise TableError(f"{name}: not a readable Parquet file ({exc})") from None
    _check_header(list(map(str, df.columns)), name)
    out = {}
    for c in df.columns:
        s = df[c]
        if s.dtype.kind in "biuf":
            out[str(c)] = s.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            out[str(c)] = np.array([None if _isna(v) else str(v) for v in s], dtype=object)
    return pd.DataFrame(out)


def _isna(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or type(v).__name__ in ("NAType",
                                                                                   "NaTType")


def _check_header(header: list[str], name: str) -> None:
    counts = Counter(header)                       # one pass: linear in the columns
    dup = [h for h, n in counts.items() if n > 1]
    empty = [i + 1 for i, h in enumerate(header) if h == ""]
    problems = []
    if dup:
        problems.append(f"duplicate column name(s) {_names(dup)}")
    if empty:
        shown = ", ".join(map(str, empty[:MAX_LISTED]))
        more = f", ... ({len(empty) - MAX_LISTED} more)" if len(empty) > MAX_LISTED else ""
        problems.append(f"empty column name(s) at position(s) {shown}{more}")
    if problems:
        raise TableError(f"{name}: row 1: " + "; ".join(problems))


def _read_csv(pd, raw, name, sep, decimal, na, encoding, text_columns):
    text = _decode(raw, encoding, name)
    if not text.strip():
        raise TableError(f"{name}: the file is empty (a header row is needed)")
    if sep is None:
        sep = _sniff(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    try:
        header = [h.strip() for h in next(reader)]
        _check_header(header, name)
        ncol = len(header)
        rows, numbers, ragged = [], [], []
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue                         # blank line: skipped, keeps row numbers
            if len(row) != ncol:
                ragged.append(f"row {reader.line_num}: {len(row)} cells, the header has "
                              f"{ncol} columns")
                continue
            rows.append(row)
            numbers.append(reader.line_num)
    except csv.Error as exc:
        raise TableError(f"{name}: row {reader.line_num}: {exc}") from None
    if ragged:
        raise TableError(f"{name}: " + _listing(ragged, "more rows"))
    if decimal is None:
        decimal = "."
        if sep != ",":
            for row in rows[:200]:
                if any(_DECIMAL_COMMA.match(c.strip()) for c in row):
                    decimal = ","
                    break
    numbers = np.asarray(numbers, dtype=np.int64)
    n = len(rows)
    # whole-table string operations (vectorized; one float conversion for an all-numeric table)
    strip = getattr(np, "strings", np.char).strip
    cells = strip(np.array(rows, dtype=str).reshape(n, ncol)) if n else \
        np.empty((0, ncol), dtype=str)
    missing = np.isin(cells, np.array(sorted(na), dtype=str)) if na else \
        np.zeros(cells.shape, dtype=bool)
    conv = np.char.replace(cells, ",", ".") if decimal == "," else cells
    conv = np.where(missing, "nan", conv)
    forced = [j for j, h in enumerate(header) if h in text_columns]
    try:
        if forced:
            raise ValueError
        x = conv.astype(np.float64)
        numeric = np.ones(ncol, dtype=bool)
    except ValueError:                      # some columns are text: column by column
        x = np.full((n, ncol), np.nan)
        numeric = np.zeros(ncol, dtype=bool)
        for j in range(ncol):
            if header[j] in text_columns:
                continue
            try:
                x[:, j] = conv[:, j].astype(np.float64)
                numeric[j] = True
            except ValueError:
                pass
    bad = []
    text = {}
    for j in np.flatnonzero(~numeric):
        if header[j] in text_columns:
            text[j] = None
            continue
        problem = _mixed_column(header[j], cells[:, j], conv[:, j], missing[:, j], numbers)
        if problem is None:
            text[j] = None                   # mostly text: a text column
        else:
            bad.append((j, problem))
    nonfinite = numeric & (~np.isfinite(x) & ~missing).any(axis=0)
    for j in np.flatnonzero(nonfinite):
        i = int(np.flatnonzero(~np.isfinite(x[:, j]) & ~missing[:, j])[0])
        k = int((~np.isfinite(x[:, j]) & ~missing[:, j]).sum())
        more = f" (and {k - 1} more rows)" if k > 1 else ""
        bad.append((j, (f"row {numbers[i]}, column {_short(header[j])}: "
                        f"{_short(str(cells[i, j]))} is not a finite number{more}")))
    if bad:
        bad.sort()
        raise TableError(f"{name}: {len(bad)} column(s) with cells that are not numbers: "
                         + _listing([p for _, p in bad], "more columns"))
    if not text:
        df = pd.DataFrame(x, columns=header)
    else:
        num = [j for j in range(ncol) if j not in text]
        parts = [pd.DataFrame(x[:, num], columns=[header[j] for j in num])]
        parts.append(pd.DataFrame({header[j]: np.array(
            [None if m else str(c) for c, m in zip(cells[:, j], missing[:, j])], dtype=object)
            for j in text}))
        df = pd.concat(parts, axis=1)[header] if len(text) < ncol else parts[1][header]
    if n and numbers[-1] != n + 1:          # blank lines or multi-line cells: not 2, 3, ...
        df.attrs["row_numbers"] = numbers.tolist()
    return df


def row_numbers(df) -> np.ndarray:
    """File row number of each row of a :func:`read_table` frame (the header is row 1)."""
    rows = df.attrs.get("row_numbers")
    if rows is not None and len(rows) == len(df):
        return np.asarray(rows, dtype=np.int64)
    return np.arange(2, len(df) + 2)


def _mixed_column(h, cells, conv, missing, numbers):
    """None for a text column (fewer than half of its present cells are numbers), else the
    message naming its first non-number cell."""
    present = ~missing
    parsed = np.zeros(len(conv), dtype=bool)
    for i in np.flatnonzero(present):
        try:
            float(conv[i])
            parsed[i] = True
        except ValueError:
            pass
    n_present = int(present.sum())
    if 2 * int(parsed.sum()) < n_present:
        return None
    idx = np.flatnonzero(present & ~parsed)
    i = int(idx[0])
    more = f" (and {len(idx) - 1} more rows)" if len(idx) > 1 else ""
    return (f"row {numbers[i]}, column {_short(h)}: {_short(str(cells[i]))} is not a "
            f"number{more}")


# ---------------------------------------------------------------------------------------------
# pandas inputs to fit / predict
# ---------------------------------------------------------------------------------------------

def is_pandas(x) -> bool:
    """True for pandas objects, without importing pandas."""
    return type(x).__module__.startswith("pandas")


def frame_to_array(x, dtype=None, *, what: str = "X", features=None):
    """A pandas DataFrame/Series as a NumPy array (other inputs are returned unchanged).

    Numeric (bool, integer, float) columns become a 2-D matrix in ``dtype``; a Series becomes
    1-D. With ``features`` (the training column names) the frame's columns are reordered to
    match when all are present; missing ones are an error naming them (and the extra ones).
    Non-numeric columns and missing values are errors pointing at
    :func:`read_table` and :class:`fastreg.data.TablePreprocessor`.

    Returns
    -------
    (array, names)
        ``names`` is the list of column names of a DataFrame, else None.
    """
    if not is_pandas(x):
        return x, None
    kind = type(x).__name__
    if kind == "Series":
        arr = x.to_numpy()
        if arr.dtype.kind not in "biuf":
            if arr.dtype == object or arr.dtype.kind in "OUS" or str(x.dtype) in ("string",
                                                                                   "str"):
                return np.asarray(arr), None       # labels (a classification target)
            raise ValueError(f"{what}: a Series of dtype {x.dtype} cannot be used")
        return (arr.astype(dtype) if dtype is not None else arr), None
    if kind != "DataFrame":
        raise TypeError(f"{what} must be a numpy array, a pandas DataFrame or a Series, got "
                        f"pandas {kind}")
    names = [str(c) for c in x.columns]
    if features is not None:
        features = list(features)
        have = set(names)
        missing = [f for f in features if f not in have]
        if missing:
            extra = [c for c in names if c not in set(features)]
            raise ValueError(f"{what}: missing column(s) {_names(missing)} the model was "
                             f"trained on (extra column(s): {_names(extra)})")
        if names != features:
            x = x[features]
            names = features
    nonnum = [c for c in x.columns if x[c].dtype.kind not in "biuf"]
    if nonnum:
        raise ValueError(f"{what}: non-numeric column(s) {_names(nonnum)} (dtypes "
                         f"{sorted({str(x[c].dtype) for c in nonnum[:MAX_LISTED]})}): encode "
                         "them first - fastreg.data.read_table + fastreg.data."
                         "TablePreprocessor one-hot text columns")
    arr = x.to_numpy(dtype=dtype if dtype is not None else np.float64, na_value=np.nan) \
        if any(str(t).startswith(("Int", "UInt", "Float", "boolean")) for t in x.dtypes) \
        else x.to_numpy(dtype=dtype if dtype is not None else None)
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        cols = [names[j] for j in np.flatnonzero(np.isnan(arr).any(axis=0))]
        raise ValueError(f"{what}: missing values in column(s) {_names(cols)}: impute them "
                         "(fastreg.data.TablePreprocessor(impute='median'))")
    return arr, names
