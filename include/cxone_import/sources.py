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

from cxone_provider.redaction import mask_uri

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
# Rules the reader decides: a record it cannot read, or one that would cost too much, becomes a row whose
# ``source_error`` starts with the rule's name (rules.py holds their messages), instead of failing the file, being held
# whole or adding a column per name it brings.
JSON_PARSEABLE = "json_parseable"
LINE_TOO_LONG = "line_too_long"
JSON_DEPTH = "json_depth"
CUSTOM_FIELD_COUNT = "custom_field_count"
PHONE_NUMBER_COUNT = "phone_number_count"
MAX_RECORD_BYTES = 1 << 20
"""A JSON line longer than this (bytes), or a CSV record longer than this (characters), is not read."""
MAX_JSON_DEPTH = 16
"""Nesting levels of a JSON record (the API shape needs 3; custom field values may nest a little)."""
MAX_CUSTOM_FIELDS = 50
"""Custom fields of a record; JSON Lines: also distinct custom field names of a file (the first 50 seen)."""
MAX_PHONE_NUMBERS = 10
"""Phone numbers of a record."""
MAX_PHONE_COLUMNS = 20
"""JSON Lines: distinct phone columns of a file (a type, or a type's 2nd, 3rd number; the first 20 seen)."""
_READ_BLOCK_BYTES = 1 << 20
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


class SourceFormatError(ValueError):
    """The source file as a whole cannot be read as a contact list."""

    def __init__(self, source: str, column: str | None, rule: str, message: str) -> None:
        source = mask_uri(str(source))  # it is shown: in logs, the report and the CRM's failure event
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
    oversized = False  # a record larger than Arrow's block: the csv module reads on, bounded (line_too_long)
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
        while reader is not None:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                if _straddles(exc):
                    oversized = True
                    break
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
    if ragged or oversized or reader is None:
        yield from _iter_csv_numbered(path, names, chunk_rows, first_row=next_row)
        return
    if pending_rows == 0 and next_row == 1:
        raise SourceFormatError(str(path), None, "file_has_rows", "the file has a header but no records")
    if pending_rows:
        yield _csv_frame(pending, next_row)


def _iter_csv_numbered(path: ReadablePath, names: list[str], chunk_rows: int, first_row: int) -> Iterator[pd.DataFrame]:
    """The records from number ``first_row`` on, read by the ``csv`` module; a record whose field count differs
    from the header's becomes a row carrying only its ``csv_field_count`` problem (never its text)."""
    csv.field_size_limit(max(csv.field_size_limit(), MAX_RECORD_BYTES))  # _BoundedLines bounds each record
    rows: list[list[str | None]] = []
    errors: list[str | None] = []
    numbers: list[int] = []
    record = 0
    try:
        with path.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
            lines = _BoundedLines(text, MAX_RECORD_BYTES)
            reader = csv.reader(lines)
            next(reader, None)  # the header
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                except _RecordTooLong:
                    fields = None  # skipped unread; the reader goes on with the next line
                lines.record_done()
                if fields is not None and not fields:
                    continue  # a blank line is not a record (as for Arrow)
                record += 1
                if record < first_row:
                    continue
                numbers.append(record)
                if fields is None:
                    rows.append([None] * len(names))
                    errors.append(f"{LINE_TOO_LONG}: more than {MAX_RECORD_BYTES} characters")
                elif len(fields) == len(names):
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
    return _refuse_wide_records(frame)


class _RecordTooLong(Exception):
    """Raised through ``csv.reader`` by :class:`_BoundedLines` for a record longer than the bound."""


class _BoundedLines:
    """The lines of a text stream for ``csv.reader``, never more than ``limit`` characters to a record: a longer
    line is skipped to its end in bounded pieces (never held) and :class:`_RecordTooLong` raised in its place. The
    reader then goes on with the next line; when the long record was a quoted field spanning lines, its remaining
    lines are read as records of their own (each rejected for its field count)."""

    def __init__(self, text: IO[str], limit: int) -> None:
        self._text = text
        self._limit = limit
        self._record_chars = 0

    def __iter__(self) -> _BoundedLines:
        return self

    def __next__(self) -> str:
        line = self._text.readline(self._limit + 1)
        if not line:
            raise StopIteration
        self._record_chars += len(line)
        if self._record_chars <= self._limit:
            return line
        while line and not line.endswith(("\n", "\r")):
            line = self._text.readline(_READ_BLOCK_BYTES)
        self._record_chars = 0
        raise _RecordTooLong

    def record_done(self) -> None:
        """The reader returned a record: the next line starts a new one."""
        self._record_chars = 0


def _guarded(path: ReadablePath, record: int, open_reader: Any) -> Any:
    """Arrow's reader, or None when its first block already holds a record larger than a block."""
    try:
        return open_reader()
    except pa.ArrowInvalid as exc:
        if _straddles(exc):
            return None
        raise _csv_error(path, exc, record) from None


def _straddles(exc: pa.ArrowInvalid) -> bool:
    """Arrow's way of saying one record is larger than its read block."""
    return "straddl" in str(exc)


def _csv_frame(batches: list[pa.RecordBatch], first_row: int) -> pd.DataFrame:
    frame = pa.Table.from_batches(batches).to_pandas()
    frame.insert(0, ROW_NUMBER, pd.RangeIndex(first_row, first_row + len(frame)).to_numpy(dtype="int64"))
    return _refuse_wide_records(frame)


def _refuse_wide_records(frame: pd.DataFrame) -> pd.DataFrame:
    """CSV records with more custom fields or phone numbers (non-empty cells) than a record may carry get their
    ``source_error``; counted only when the header has that many such columns at all."""
    for prefix, limit, rule, what in ((CUSTOM_PREFIX, MAX_CUSTOM_FIELDS, CUSTOM_FIELD_COUNT, "custom fields"),
                                      (PHONE_PREFIX, MAX_PHONE_NUMBERS, PHONE_NUMBER_COUNT, "phone numbers")):
        columns = [c for c in frame.columns if c.startswith(prefix)]
        if len(columns) <= limit:
            continue
        given = frame[columns].notna().sum(axis=1).to_numpy()
        wide = given > limit
        if not wide.any():
            continue
        if SOURCE_ERROR not in frame.columns:
            frame[SOURCE_ERROR] = pd.Series(None, index=frame.index, dtype=object)
        free = frame[SOURCE_ERROR].isna().to_numpy() & wide
        frame.loc[free, SOURCE_ERROR] = [f"{rule}: {n} {what}, at most {limit}" for n in given[free]]
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
    """JSON Lines in the API record shape; a malformed line becomes a row-level ``json_parseable`` problem, a hostile
    one (too long, nested too deep, too many custom fields or phone numbers, or names beyond the file's first ones)
    a row-level problem of its own rule, and costs no more memory than a rejected row."""
    rows: list[dict[str, Any]] = []
    line_number = 0
    seen_any = False
    width = _FileWidth()
    with path.open("rb") as handle:
        for raw in _bounded_lines(handle, MAX_RECORD_BYTES):
            line_number += 1
            if raw is None:
                seen_any = True
                rows.append({ROW_NUMBER: line_number, SOURCE_ERROR: f"{LINE_TOO_LONG}: more than {MAX_RECORD_BYTES} bytes"})
                continue
            try:
                text = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise SourceFormatError(
                    str(path), None, "utf8_encoding", f"line {line_number} is not UTF-8 (byte {exc.start})"
                ) from None
            if not text.strip():
                continue
            seen_any = True
            rows.append(_flatten_json_record(text, line_number, width))
            if len(rows) >= chunk_rows:
                yield _jsonl_frame(rows)
                rows = []
    if not seen_any:
        raise SourceFormatError(str(path), None, "file_not_empty", "the file has no records")
    if rows:
        yield _jsonl_frame(rows)


def _bounded_lines(handle: IO[bytes], limit: int) -> Iterator[bytes | None]:
    """The lines of a binary stream without their line break, read in blocks; ``None`` for a line longer than
    ``limit`` bytes, which is skipped without ever being held whole."""
    pending = b""
    skipping = False  # inside a line already known to be too long
    while block := handle.read(_READ_BLOCK_BYTES):
        *complete, pending = (pending + block).split(b"\n")
        for line in complete:
            if skipping:
                skipping = False
                yield None
            else:
                yield line if len(line) <= limit else None
        if len(pending) > limit:
            skipping, pending = True, b""
    if skipping:
        yield None
    elif pending:
        yield pending


class _FileWidth:
    """The custom field names and phone columns a JSON Lines file has brought so far (its frame's columns)."""

    def __init__(self) -> None:
        self.custom: set[str] = set()
        self.phones: set[str] = set()


def _json_nesting(text: str) -> int:
    """How deep a JSON text nests (strings left out), counted without parsing it; stops past ``MAX_JSON_DEPTH``."""
    depth = deepest = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        depth += 1 if match.group() in "[{" else -1
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            break
    return deepest


def _flatten_json_record(text: str, line_number: int, width: _FileWidth) -> dict[str, Any]:
    flat: dict[str, Any] = {ROW_NUMBER: line_number}
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH and _json_nesting(text) > MAX_JSON_DEPTH:
        flat[SOURCE_ERROR] = f"{JSON_DEPTH}: nested deeper than {MAX_JSON_DEPTH} levels"
        return flat
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        flat[SOURCE_ERROR] = f"{JSON_PARSEABLE}: {exc.msg} at column {exc.colno}"
        return flat
    except RecursionError:  # not reached past the nesting check; kept so that no line can fail the reader
        flat[SOURCE_ERROR] = f"{JSON_DEPTH}: nested deeper than {MAX_JSON_DEPTH} levels"
        return flat
    if not isinstance(record, dict):
        flat[SOURCE_ERROR] = f"{JSON_PARSEABLE}: the line is not a JSON object"
        return flat
    phones = _json_phones(record.get("phoneNumbers"))
    custom = _json_custom_fields(record.get("customFields"))
    problem = (_too_wide(phones, width.phones, MAX_PHONE_NUMBERS, MAX_PHONE_COLUMNS, PHONE_NUMBER_COUNT, "phone numbers")
               or _too_wide(custom, width.custom, MAX_CUSTOM_FIELDS, MAX_CUSTOM_FIELDS, CUSTOM_FIELD_COUNT, "custom fields"))
    if problem:
        flat[SOURCE_ERROR] = problem
        return flat
    if len(width.phones) < MAX_PHONE_COLUMNS:
        width.phones.update(phones)
    if len(width.custom) < MAX_CUSTOM_FIELDS:
        width.custom.update(custom)
    for key, column in (("contactId", "contact_id"), ("consentTimestamp", "consent_timestamp"), ("optInStatus", "opt_in_status")):
        value = record.get(key)
        flat[column] = None if value in (None, "") else str(value)
    flat.update(phones)
    flat.update(custom)
    return flat


def _json_phones(phones: Any) -> dict[str, str | None]:
    """``phoneNumbers`` as phone columns: ``phone_<type>``, then ``phone_<type>_2`` for the type's next number."""
    columns: dict[str, str | None] = {}
    for phone in phones if isinstance(phones, list) else ():
        if not isinstance(phone, dict):
            continue
        kind = _TYPE_SAFE.sub("_", str(phone.get("type") or "other").lower()).strip("_") or "other"
        column, n = PHONE_PREFIX + kind, 1
        while column in columns:
            n += 1
            column = f"{PHONE_PREFIX}{kind}_{n}"
        number = phone.get("number")
        columns[column] = None if number in (None, "") else str(number)
    return columns


def _json_custom_fields(custom: Any) -> dict[str, str]:
    """``customFields`` as ``cf_<name>`` columns (empty values omitted, other JSON values as JSON text)."""
    if not isinstance(custom, dict):
        return {}
    return {CUSTOM_PREFIX + str(key): value if isinstance(value, str) else json.dumps(value)
            for key, value in custom.items() if value not in (None, "")}


def _too_wide(columns: dict[str, Any], known: set[str], per_record: int, per_file: int, rule: str, what: str) -> str | None:
    """Why a record's columns of one kind are refused: more than ``per_record`` of them, or names that would take
    the file's columns of that kind past ``per_file``; None when they are fine."""
    if len(columns) > per_record:
        return f"{rule}: {len(columns)} {what}, at most {per_record}"
    if known.issuperset(columns):
        return None
    new = len(columns.keys() - known)
    if len(known) + new > per_file:
        return f"{rule}: {new} new name(s) past the file's first {per_file}"
    return None


def _jsonl_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(rows)
    for column in (*REQUIRED_COLUMNS, SOURCE_ERROR):
        if column not in frame.columns:
            frame[column] = None
    frame[ROW_NUMBER] = frame[ROW_NUMBER].astype("int64")
    text_columns = [c for c in frame.columns if c != ROW_NUMBER]
    frame[text_columns] = frame[text_columns].astype("str").where(frame[text_columns].notna(), None)
    return frame
