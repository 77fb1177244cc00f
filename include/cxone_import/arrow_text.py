"""The Arrow string helpers: pandas string columns to Arrow and back, and byte-level kernels over Arrow string arrays
in numpy (ISO-8601 timestamps, UTC formatting, string hashes, CSV field lengths and cheap "could this row need a
regex?" tests). No Python loop runs per row; each kernel reads the array's offsets and data buffers once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# The grammar of a consent timestamp: a date, T or a space, hh:mm, optional :ss and fraction, optional zone (Z or
# an offset +hh:mm / +hhmm). Matched by Arrow (RE2) before any byte is read by position.
ISO_8601 = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|z|[+-]\d{2}:?\d{2})?$"
_MICROS_PER_MINUTE = 60_000_000
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)
_ZERO = ord("0")


def arrow_strings(series: pd.Series) -> pa.Array:
    """A string column as one pyarrow large_string array (no copy for pandas' arrow-backed strings of one chunk)."""
    if not len(series):
        return pa.array([], pa.large_string())
    array = pa.array(series.array, from_pandas=True)  # asking for the type here would copy an arrow-backed column
    if isinstance(array, pa.ChunkedArray):
        array = array.chunk(0) if array.num_chunks == 1 else array.combine_chunks()
    return array if array.type == pa.large_string() else array.cast(pa.large_string())


def pandas_strings(values: pa.Array, index: pd.Index) -> pd.Series:
    """An Arrow string array as a pandas string column on ``index`` (the inverse of :func:`arrow_strings`)."""
    return pd.Series(values.to_pandas(types_mapper=pd.ArrowDtype).astype("str"), index=index)


def csv_field_chars(values: pa.Array) -> np.ndarray:
    """Per row: the value's length as a CSV field, in characters (quoted when it holds a comma, quote or line
    break, its quotes doubled; a null is an empty field)."""
    length = pc.fill_null(pc.utf8_length(values), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    quoted = pc.fill_null(pc.match_substring_regex(values, r'[,"\r\n]'), False).to_numpy(zero_copy_only=False)
    quotes = pc.fill_null(pc.count_substring(values, '"'), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return length + np.where(quoted, 2 + quotes, 0)


def string_buffers(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, data)`` of a string array: int64 offsets (n + 1, from 0) into its uint8 data."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if pa.types.is_string(values.type) or pa.types.is_binary(values.type):
        offset_type = np.int32
    else:
        offset_type = np.int64
    buffers = values.buffers()
    n = len(values)
    if buffers[1] is None:
        return np.zeros(n + 1, dtype=np.int64), np.empty(0, dtype=np.uint8)
    offsets = np.frombuffer(buffers[1], dtype=offset_type)[values.offset : values.offset + n + 1].astype(np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.empty(0, dtype=np.uint8)
    data = data[offsets[0] : offsets[-1]] if n else data[:0]
    return offsets - offsets[0], data


def valid_mask(values: pa.Array) -> np.ndarray:
    """Per row: is the value present (not null)?"""
    return pc.is_valid(values).to_numpy(zero_copy_only=False)


def rows_with_bytes(values: pa.Array, byte_values: bytes) -> np.ndarray:
    """Per row: does the (non-null) value contain any of these bytes? One table look-up per byte of data."""
    offsets, data = string_buffers(values)
    table = np.zeros(256, dtype=bool)
    table[list(byte_values)] = True
    hits = np.flatnonzero(table[data])
    rows = np.zeros(len(offsets) - 1, dtype=bool)
    if len(hits):
        rows[np.searchsorted(offsets, hits, side="right") - 1] = True
    return rows & valid_mask(values)


def rows_with_edge_bytes(values: pa.Array, byte_values: bytes) -> np.ndarray:
    """Per row: does the (non-null, non-empty) value start or end with one of these bytes?"""
    offsets, data = string_buffers(values)
    table = np.zeros(256, dtype=bool)
    table[list(byte_values)] = True
    lengths = np.diff(offsets)
    filled = lengths > 0
    rows = np.zeros(len(lengths), dtype=bool)
    if filled.any():
        starts = offsets[:-1][filled]
        ends = offsets[1:][filled] - 1
        rows[filled] = table[data[starts]] | table[data[ends]]
    return rows & valid_mask(values)


def string_hashes(values: pa.Array) -> np.ndarray:
    """A 64-bit hash per string (nulls hash like ""): eight bytes at a time through unaligned uint64 loads, mixed
    with the length, so a row costs about one multiply per eight bytes."""
    offsets, data = string_buffers(values)
    lengths = np.diff(offsets)
    hashes = lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    if not len(data):
        return _finalise(hashes)
    padded = np.zeros(len(data) + 8, dtype=np.uint8)
    padded[: len(data)] = data
    words = np.ndarray(shape=(len(data),), dtype="<u8", buffer=padded, strides=(1,))  # a word at every byte
    starts = offsets[:-1]
    rows = np.flatnonzero(lengths > 0)
    k = 0
    while len(rows):
        remaining = lengths[rows] - 8 * k
        word = words[starts[rows] + 8 * k]
        short = remaining < 8
        if short.any():
            keep_bits = (remaining[short] * 8).astype(np.uint64)
            word[short] &= (np.uint64(1) << keep_bits) - np.uint64(1)
        with np.errstate(over="ignore"):
            mixed = (hashes[rows] ^ word) * np.uint64(0xFF51AFD7ED558CCD)
        hashes[rows] = mixed ^ (mixed >> np.uint64(32))
        k += 1
        rows = rows[remaining > 8]
    return _finalise(hashes)


def _finalise(hashes: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        hashes = (hashes ^ (hashes >> np.uint64(33))) * np.uint64(0xC4CEB9FE1A85EC53)
    return hashes ^ (hashes >> np.uint64(33))


def _two_digit_reader(data: np.ndarray):
    """A reader of the two-digit decimal number at any byte position (two byte gathers per row)."""

    def at(position: np.ndarray) -> np.ndarray:
        return data[position].astype(np.int32) * 10 + data[position + 1] - _ZERO * 11

    return at




def days_from_civil(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm, vectorised)."""
    year = year - (month <= 2)
    era = np.floor_divide(year, 400)
    year_of_era = year - era * 400
    day_of_year = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def parse_iso8601(values: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ISO-8601 date-times to UTC microseconds, without a Python loop per row.

    Returns ``(micros, parsed, zoned)`` per row: microseconds since the epoch (0 where not parsed), whether the
    value is a real date-time of the grammar, and whether it names its zone. The semantics are pandas'
    ``to_datetime(format="ISO8601", utc=True)`` on the same grammar, as the schema had them: a value without a
    zone is read as UTC (``zoned`` says so), fractions beyond microseconds are cut off, an offset
    is at most 23:59, ``Z`` only in upper case, a year is any of 0000-9999 (far-future years stay dates), and
    impossible dates or times (February 30, 24:00, :60) are not parsed.
    """
    n = len(values)
    micros = np.zeros(n, dtype=np.int64)
    zoned = np.zeros(n, dtype=bool)
    matched = pc.fill_null(pc.match_substring_regex(values, ISO_8601), False).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(matched)
    if not len(rows):
        return micros, matched, zoned
    offsets, data = string_buffers(values)
    data = np.concatenate([data, np.zeros(32, dtype=np.uint8)])  # reads past a value's end stay in the buffer
    start = offsets[:-1][rows]
    length = offsets[1:][rows] - start
    end = start + length
    two_digits = _two_digit_reader(data)
    year = two_digits(start) * 100 + two_digits(start + 2)
    month, day, hour, minute = (two_digits(start + at) for at in (5, 8, 11, 14))
    has_seconds = (length > 16) & (data[start + 16] == ord(":"))
    second = np.where(has_seconds, two_digits(start + 17), 0)
    last = data[end - 1]
    upper_z = last == ord("Z")
    lower_z = last == ord("z")
    # a sign in the last six (five) bytes can only start an offset: the date's dashes sit before byte 10
    sign_6, sign_5 = data[end - 6], data[end - 5]
    long_offset = ~(upper_z | lower_z) & ((sign_6 == ord("+")) | (sign_6 == ord("-"))) & (length >= 22)
    short_offset = ~(upper_z | lower_z | long_offset) & ((sign_5 == ord("+")) | (sign_5 == ord("-"))) & (length >= 21)
    has_offset = long_offset | short_offset
    zone_length = np.where(upper_z | lower_z, 1, np.where(long_offset, 6, np.where(short_offset, 5, 0)))
    sign_at = end - zone_length
    offset_minutes_total = np.zeros(len(rows), dtype=np.int64)
    offset_valid = np.ones(len(rows), dtype=bool)
    offset_rows = np.flatnonzero(has_offset)
    if len(offset_rows):
        hours = two_digits(sign_at[offset_rows] + 1)
        minutes = two_digits(end[offset_rows] - 2)
        sign = np.where(data[sign_at[offset_rows]] == ord("-"), -1, 1)
        offset_minutes_total[offset_rows] = sign * (hours * 60 + minutes)
        offset_valid[offset_rows] = (hours <= 23) & (minutes <= 59)
    has_fraction = has_seconds & (length > 19) & (data[start + 19] == ord("."))
    fraction_digits = np.minimum(np.where(has_fraction, sign_at - start - 20, 0), 6)  # beyond 6: cut off
    fraction = np.zeros(len(rows), dtype=np.int64)
    rows_all = np.arange(len(rows))
    lengths_seen = np.bincount(fraction_digits[has_fraction], minlength=7)
    for digits in np.flatnonzero(lengths_seen).tolist():  # usually one length per file
        some = np.flatnonzero(has_fraction & (fraction_digits == digits)) if lengths_seen[digits] < len(rows) else rows_all
        first = start[some] + 20
        value = np.zeros(len(some), dtype=np.int64)
        for i in range(digits):
            value = value * 10 + data[first + i] - _ZERO
        fraction[some] = value * 10 ** (6 - digits)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = _DAYS_IN_MONTH[np.clip(month, 0, 12)] + ((month == 2) & leap)
    real = (
        (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days)
        & (hour <= 23) & (minute <= 59) & (second <= 59)
        & ~lower_z & offset_valid
    )
    days = days_from_civil(year, month, day)
    local = (((days * 24 + hour) * 60 + minute) * 60 + second) * 1_000_000 + fraction
    utc = local - offset_minutes_total * _MICROS_PER_MINUTE
    parsed = np.zeros(n, dtype=bool)
    parsed[rows] = real
    micros[rows] = np.where(real, utc, 0)
    zoned[rows] = real & (upper_z | has_offset)
    return micros, parsed, zoned


def format_utc_milliseconds(micros: np.ndarray) -> pa.Array:
    """``2024-11-01T07:15:00.123Z`` per UTC timestamp in microseconds (milliseconds cut off): Arrow writes the
    naive timestamp (``2024-11-01 07:15:00.123``, fixed width for years 0000-9999), numpy puts in T and Z."""
    n = len(micros)
    naive = pa.array(np.floor_divide(micros, 1000), pa.int64()).cast(pa.timestamp("ms")).cast(pa.string())
    _, data = string_buffers(naive)
    if len(data) != 23 * n:
        raise ValueError("a timestamp outside the years 0000-9999 cannot be written as ISO-8601")
    text = np.empty((n, 24), dtype=np.uint8)
    text[:, :23] = data.reshape(n, 23)
    text[:, 10] = ord("T")
    text[:, 23] = ord("Z")
    offsets = np.arange(0, 24 * (n + 1), 24, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(text)])
