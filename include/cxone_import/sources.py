"""Read CRM exports (CSV or JSON Lines) in bounded chunks into the canonical record frame.

The canonical frame has one row per input record and only string columns besides ``row_number``:
``contact_id``, ``consent_timestamp``, ``opt_in_status``, one ``phone_<type>`` column per phone type and one
``cf_<name>`` column per custom field. Nothing is judged here (that is the schema's job) except problems of the
file as a whole, which raise :class:`SourceFormatError` naming the file, the column and the rule.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator
from typing import IO, Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

REQUIRED_COLUMNS = ("contact_id", "consent_timestamp", "opt_in_status")
PHONE_PREFIX = "phone_"
CUSTOM_PREFIX = "cf_"
CSV_PHONE_SUFFIX = "_phone"
ROW_NUMBER = "row_number"
SOURCE_ERROR = "source_error"
DEFAULT_CHUNK_ROWS = 200_000
_CSV_BLOCK_BYTES = 1 << 20
_TYPE_SAFE = re.compile(r"[^a-z0-9]+")
_PHONE_COLUMN = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*_phone$")
CSV_FIELD_COUNT = "csv_field_count"
_FALLBACK_READ_BYTES = 1 << 20


class SourceFormatError(ValueError):
    """The source file as a whole cannot be read as a contact list."""

    def __init__(self, source: str, column: str | None, rule: str, message: str) -> None:
        self.source, self.column, self.rule = source, column, rule
        where = f" column {column!r}" if column else ""
        super().__init__(f"{source}:{where} [{rule}] {message}")


class ReadablePath(Protocol):
    """What we need of an ObjectStoragePath / UPath / pathlib.Path."""

    name: str

    def open(self, mode: str = ...) -> IO[Any]: ...


def detect_format(path: ReadablePath) -> str:
    """``csv`` or ``jsonl`` from the file name."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".csv", ".txt")):
        return "csv"
    raise SourceFormatError(str(path), None, "file_format", "unknown file type: name it .csv or .jsonl")


def iter_canonical_chunks(
    path: ReadablePath, *, fmt: str | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """Yield canonical frames of at most about ``chunk_rows`` rows, in file order, numbered from 1."""
    is_dir = getattr(path, "is_dir", None)
    if callable(is_dir) and is_dir():
        raise SourceFormatError(str(path), None, "file_format", "the source is a directory, not a file")
    fmt = fmt or detect_format(path)
    if fmt == "csv":
        yield from _iter_csv(path, chunk_rows)
    elif fmt == "jsonl":
        yield from _iter_jsonl(path, chunk_rows)
    else:
        raise SourceFormatError(str(path), None, "file_format", f"unsupported format {fmt!r}")


def arrow_strings(series: pd.Series) -> pa.Array:
    """A string column as one pyarrow large_string array (no copy for pandas' arrow-backed strings)."""
    if not len(series):
        return pa.array([], pa.large_string())
    array = pa.array(series.array, type=pa.large_string(), from_pandas=True)
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def phone_type_of(column: str) -> str:
    """``phone_mobile`` -> ``mobile`` (the API's phone type)."""
    return re.sub(r"_\d+$", "", column[len(PHONE_PREFIX) :])


def _canonical_csv_name(column: str) -> str:
    """Required and phone columns are matched case-insensitively after trimming; other columns keep their name
    as the custom field's key."""
    key = column.strip().lower()
    if key in REQUIRED_COLUMNS:
        return key
    if _PHONE_COLUMN.fullmatch(key):
        return PHONE_PREFIX + key[: -len(CSV_PHONE_SUFFIX)]
    return CUSTOM_PREFIX + column.strip()


def display_column(column: str) -> str:
    """The user's name for a canonical column: ``phone_mobile`` -> ``mobile_phone``, ``cf_notes`` -> ``notes``."""
    if column.startswith(PHONE_PREFIX):
        return column[len(PHONE_PREFIX) :] + CSV_PHONE_SUFFIX
    if column.startswith(CUSTOM_PREFIX):
        return column[len(CUSTOM_PREFIX) :]
    return column


def _csv_header(path: ReadablePath) -> list[str]:
    with path.open("rb") as handle:
        try:
            reader = pacsv.open_csv(
                handle,
                read_options=pacsv.ReadOptions(block_size=1 << 16),
                parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=lambda row: "skip"),
            )
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                raise SourceFormatError(str(path), None, "file_not_empty", "the file is empty (no header row)") from exc
            raise _csv_error(path, exc) from None  # Arrow's message quotes the row: never chained into a log
        return [name.strip() for name in reader.schema.names]


def _check_csv_header(path: ReadablePath, header: list[str]) -> None:
    canonical = [_canonical_csv_name(c) for c in header]
    seen: set[str] = set()
    for column, name in zip(header, canonical, strict=True):
        if name in seen:
            raise SourceFormatError(str(path), column, "unique_header", "the header names this column twice")
        seen.add(name)
    for column in REQUIRED_COLUMNS:
        if column not in seen:
            hint = ""
            if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
                hint = " (the header parses as one column: is the file comma-delimited?)"
            raise SourceFormatError(
                str(path), column, "required_column_present", f"required column is missing from the header{hint}"
            )
    for column, name in zip(header, canonical, strict=True):
        if name.startswith(CUSTOM_PREFIX) and "phone" in column.lower():
            # numbers in a custom field would be sent unchecked: refuse the file rather than guess
            kind = _TYPE_SAFE.sub("_", column.lower().replace("phone", " ").replace("number", " ")).strip("_")
            raise SourceFormatError(
                str(path), column, "phone_column_name",
                f"looks like a phone column but does not follow the layout <type>_phone (e.g. {kind or 'mobile'}_phone);"
                " rename it so its numbers are checked, or remove it",
            )
    if not any(name.startswith(PHONE_PREFIX) for name in seen):
        raise SourceFormatError(
            str(path), "*_phone", "phone_column_present", "the header has no phone column (e.g. mobile_phone)"
        )


def _iter_csv(path: ReadablePath, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Arrow's streaming reader for the common case. A record with the wrong number of fields is rejected as a row
    (rule ``csv_field_count``), not the file: Arrow cannot say where such a record sits, so from the chunk that holds
    the first one the file is read on by the ``csv`` module, which numbers every record."""
    header = _csv_header(path)
    _check_csv_header(path, header)
    names = [_canonical_csv_name(c) for c in header]
    ragged: list[int] = []
    next_row = 1
    with path.open("rb") as handle:
        reader = _guarded(path, next_row, lambda: pacsv.open_csv(
            handle,
            read_options=pacsv.ReadOptions(
                column_names=names, skip_rows=1, block_size=_CSV_BLOCK_BYTES, encoding="utf8"
            ),
            parse_options=pacsv.ParseOptions(
                newlines_in_values=True, invalid_row_handler=lambda row: ragged.append(row.actual_columns) or "skip"
            ),
            convert_options=pacsv.ConvertOptions(
                # an empty cell, quoted or not, is null (no value): Arrow marks it as it parses, no second pass
                column_types=dict.fromkeys(names, pa.string()), null_values=[""], strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            ),
        ))
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                raise _csv_error(path, exc, next_row + pending_rows) from None
            if ragged:
                break  # the records not yet handed out are read again, numbered, by the csv module
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows >= chunk_rows:
                frame = _csv_frame(pending, next_row)
                next_row += pending_rows
                pending, pending_rows = [], 0  # not held while the caller works on the frame
                yield frame
                del frame
    if ragged:
        yield from _iter_csv_numbered(path, names, chunk_rows, first_row=next_row)
        return
    if pending_rows == 0 and next_row == 1:
        raise SourceFormatError(str(path), None, "file_has_rows", "the file has a header but no records")
    if pending_rows:
        yield _csv_frame(pending, next_row)


def _iter_csv_numbered(path: ReadablePath, names: list[str], chunk_rows: int, first_row: int) -> Iterator[pd.DataFrame]:
    """The records from number ``first_row`` on, read by the ``csv`` module; a record whose field count differs
    from the header's becomes a row carrying only its ``csv_field_count`` problem (never its text)."""
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    rows: list[list[str | None]] = []
    errors: list[str | None] = []
    numbers: list[int] = []
    record = 0
    try:
        with path.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
            reader = csv.reader(text)
            next(reader, None)  # the header
            for fields in reader:
                if not fields:
                    continue  # a blank line is not a record (as for Arrow)
                record += 1
                if record < first_row:
                    continue
                numbers.append(record)
                if len(fields) == len(names):
                    rows.append([f if f != "" else None for f in fields])
                    errors.append(None)
                else:
                    rows.append([None] * len(names))
                    errors.append(f"{CSV_FIELD_COUNT}: expected {len(names)} fields, got {len(fields)}")
                if len(rows) >= chunk_rows:
                    yield _numbered_frame(names, rows, errors, numbers)
                    rows, errors, numbers = [], [], []
    except UnicodeDecodeError:
        raise _utf8_error(path) from None
    except csv.Error as exc:
        raise SourceFormatError(
            str(path), None, "csv_syntax", f"the file is not valid CSV at record {record + 1} ({_csv_reason(str(exc))})"
        ) from None
    if rows:
        yield _numbered_frame(names, rows, errors, numbers)
    elif record == 0:
        raise SourceFormatError(str(path), None, "file_has_rows", "the file has a header but no records")


def _numbered_frame(names: list[str], rows: list[list[str | None]], errors: list[str | None], numbers: list[int]) -> pd.DataFrame:
    """The same frame as ``_csv_frame`` builds (through Arrow), plus the ``source_error`` of ragged records."""
    columns = {name: pa.array(values, pa.string()) for name, values in zip(names, zip(*rows), strict=True)}
    frame = pa.table({**columns, SOURCE_ERROR: pa.array(errors, pa.string())}).to_pandas()
    frame.insert(0, ROW_NUMBER, np.asarray(numbers, dtype="int64"))
    return frame


def _guarded(path: ReadablePath, record: int, open_reader: Any) -> Any:
    try:
        return open_reader()
    except pa.ArrowInvalid as exc:
        raise _csv_error(path, exc, record) from None


def _csv_frame(batches: list[pa.RecordBatch], first_row: int) -> pd.DataFrame:
    frame = pa.Table.from_batches(batches).to_pandas()
    frame.insert(0, ROW_NUMBER, pd.RangeIndex(first_row, first_row + len(frame)).to_numpy(dtype="int64"))
    return frame


def _csv_error(path: ReadablePath, exc: pa.ArrowInvalid, record: int | None = None) -> SourceFormatError:
    """A file-level CSV error. Arrow's message quotes the offending row, which is personal data: only the kind of
    problem and the record number go into the message."""
    text = str(exc)
    if "UTF8" in text or "UTF-8" in text:
        return _utf8_error(path)
    where = f" at or after record {record}" if record else ""
    return SourceFormatError(str(path), None, "csv_syntax", f"the file is not valid CSV{where} ({_csv_reason(text)})")


def _csv_reason(text: str) -> str:
    """What kind of CSV problem a parser message describes, without any of the data it may quote."""
    lowered = text.lower()
    if "quote" in lowered:
        return "an unterminated or misplaced quote"
    if "expected" in lowered and "column" in lowered:
        return "a record with the wrong number of fields"
    if "null" in lowered or "nul" in lowered:
        return "a NUL byte"
    return "unparseable record"


def _utf8_error(path: ReadablePath) -> SourceFormatError:
    offset = _first_invalid_utf8_offset(path)
    return SourceFormatError(
        str(path), None, "utf8_encoding",
        f"the file is not UTF-8 (first invalid byte at offset {offset}); re-export it as UTF-8",
    )


def _first_invalid_utf8_offset(path: ReadablePath) -> int | None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                return offset + exc.start
            offset += len(block)
    return None


def _iter_jsonl(path: ReadablePath, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """JSON Lines in the API record shape; a malformed line becomes a row-level ``json_parseable`` problem."""
    rows: list[dict[str, Any]] = []
    line_number = 0
    seen_any = False
    with path.open("rb") as handle:
        for raw in handle:
            line_number += 1
            try:
                text = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise SourceFormatError(
                    str(path), None, "utf8_encoding", f"line {line_number} is not UTF-8 (byte {exc.start})"
                ) from None
            if not text.strip():
                continue
            seen_any = True
            rows.append(_flatten_json_record(text, line_number))
            if len(rows) >= chunk_rows:
                yield _jsonl_frame(rows)
                rows = []
    if not seen_any:
        raise SourceFormatError(str(path), None, "file_not_empty", "the file has no records")
    if rows:
        yield _jsonl_frame(rows)


def _flatten_json_record(text: str, line_number: int) -> dict[str, Any]:
    flat: dict[str, Any] = {ROW_NUMBER: line_number}
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        flat[SOURCE_ERROR] = f"json_parseable: {exc.msg} at column {exc.colno}"
        return flat
    if not isinstance(record, dict):
        flat[SOURCE_ERROR] = "json_parseable: the line is not a JSON object"
        return flat
    for key, column in (("contactId", "contact_id"), ("consentTimestamp", "consent_timestamp"), ("optInStatus", "opt_in_status")):
        value = record.get(key)
        flat[column] = None if value in (None, "") else str(value)
    phones = record.get("phoneNumbers") or []
    if isinstance(phones, list):
        for phone in phones:
            if not isinstance(phone, dict):
                continue
            kind = _TYPE_SAFE.sub("_", str(phone.get("type") or "other").lower()).strip("_") or "other"
            column, n = PHONE_PREFIX + kind, 1
            while column in flat:
                n += 1
                column = f"{PHONE_PREFIX}{kind}_{n}"
            number = phone.get("number")
            flat[column] = None if number in (None, "") else str(number)
    custom = record.get("customFields") or {}
    if isinstance(custom, dict):
        for key, value in custom.items():
            if value not in (None, ""):
                flat[CUSTOM_PREFIX + str(key)] = value if isinstance(value, str) else json.dumps(value)
    return flat


def _jsonl_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(rows)
    for column in (*REQUIRED_COLUMNS, SOURCE_ERROR):
        if column not in frame.columns:
            frame[column] = None
    frame[ROW_NUMBER] = frame[ROW_NUMBER].astype("int64")
    text_columns = [c for c in frame.columns if c != ROW_NUMBER]
    frame[text_columns] = frame[text_columns].astype("str").where(frame[text_columns].notna(), None)
    return frame
