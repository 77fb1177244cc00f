"""The vectorised pre-pass agrees with the pandera model, both generated from the rule table: every rule is decided
by both; same rejections (every reason), same valid records, same normalisation as the model run on every row of
columns derived with pandas (the reference below), on the bad-input corpus, generated exports and randomised rows;
the ISO-8601 parser agrees with pandas' on a randomised grammar."""

from __future__ import annotations

import string
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from include.cxone_import import rules
from include.cxone_import.arrow_text import (
    ISO_8601,
    arrow_strings,
    format_utc_milliseconds,
    parse_iso8601,
    string_hashes,
)
from include.cxone_import.rules import RULES, SOURCE_RULES
from include.cxone_import.schema import (
    CONSENT_SENT_CHARS,
    ChunkValidation,
    ChunkValidator,
    ContactRecordSchema,
    SeenContactIds,
    model_reasons,
    normalise,
    prepare,
)
from include.cxone_import.sources import (
    PHONE_PREFIX,
    ROW_NUMBER,
    SOURCE_ERROR,
    SourceFormatError,
    display_column,
    iter_canonical_chunks,
)
from tools.sample_data import generate_crm_export

AS_OF = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
CORPUS = Path(__file__).parent / "data" / "bad_inputs"
CORPUS_FILES = sorted(p.name for p in CORPUS.iterdir() if p.suffix in (".csv", ".jsonl"))
SEEDS = (1, 2, 3)
CONSENT_EDGES = [
    "2026-06-01T09:15:00", "2026-06-01 09:15:00+02:00", "2099-01-01T00:00:00Z", "2020-01-01T00:00Z",
    "2026-02-30T00:00Z", "2026-06-01T09:15:00z", "9999-12-31T23:59:59Z", "2026-06-01T09:15:00.123456789+02:00",
    "2026-11-27T12:04:59Z", "2026-11-27T12:05:01Z", "yesterday", "",
]
HEADER = ["contact_id", "notes", "mobile_phone", "work_phone", "consent_timestamp", "opt_in_status"]
_HAS_ZONE = r"(?:Z|z|[+-]\d{2}:?\d{2})$"
_REFERENCE_DERIVED = (rules.PHONE_COUNT, rules.CONTACT_ID_REPEAT, rules.CONSENT_AT, rules.CONSENT_UNPARSED,
                      rules.CONSENT_ZONELESS, rules.LONGEST_FIELD, rules.LONGEST_FIELD_COLUMN, rules.RECORD_CHARS)


def reference_derive(frame: pd.DataFrame, schema: ContactRecordSchema, seen: SeenContactIds) -> pd.DataFrame:
    """The derived columns the model checks, computed with pandas (the schema's path before the pre-pass): the
    reference the pre-pass's Arrow kernels are held against."""
    phone_columns = [c for c in frame.columns if c.startswith(PHONE_PREFIX)]
    frame[rules.PHONE_COUNT] = frame[phone_columns].notna().sum(axis=1).astype("int64") if phone_columns else 0
    ids = arrow_strings(frame["contact_id"])
    frame[rules.CONTACT_ID_REPEAT] = seen.repeats(string_hashes(ids), pc.is_valid(ids).to_numpy(zero_copy_only=False))
    consent = arrow_strings(frame["consent_timestamp"])
    iso = pc.fill_null(pc.match_substring_regex(consent, ISO_8601), False)
    to_parse = pc.replace_substring_regex(consent, r"(\.\d{6})\d+", r"\1")
    parsed = pd.to_datetime(
        pd.Series(pc.if_else(iso, to_parse, pa.scalar(None, pa.large_string())).to_pandas(), dtype=object),
        utc=True, format="ISO8601", errors="coerce",
    )
    frame[rules.CONSENT_AT] = parsed.astype("datetime64[us, UTC]").array
    given = pc.is_valid(consent).to_numpy(zero_copy_only=False)
    frame[rules.CONSENT_UNPARSED] = given & parsed.isna().to_numpy()
    has_zone = pc.fill_null(pc.match_substring_regex(consent, _HAS_ZONE), False).to_numpy(zero_copy_only=False)
    frame[rules.CONSENT_ZONELESS] = parsed.notna().to_numpy() & ~has_zone
    user_columns = [c for c in frame.columns if c not in _REFERENCE_DERIVED and c != ROW_NUMBER]
    lengths = np.zeros(len(frame), dtype=np.int64)
    longest_column = np.full(len(frame), "", dtype=object)
    for column in user_columns:
        length = frame[column].str.len().fillna(0).to_numpy(dtype=np.int64)
        longer = (length > lengths) & (length > rules.MAX_FIELD_LENGTH)
        longest_column[longer] = display_column(column)
        lengths = np.maximum(lengths, length)
    frame[rules.LONGEST_FIELD] = lengths
    frame[rules.LONGEST_FIELD_COLUMN] = longest_column
    if schema.max_record_chars:
        written = [c for c in user_columns if c != SOURCE_ERROR]
        total = np.full(len(frame), len(written) - 1, dtype=np.int64)
        for column in written:
            if column == "consent_timestamp":
                total += CONSENT_SENT_CHARS
                continue
            text = frame[column].fillna("")
            quoted = text.str.contains(r'[,"\r\n]', regex=True).to_numpy()
            total += text.str.len().to_numpy(dtype=np.int64) + np.where(quoted, 2 + text.str.count('"').to_numpy(), 0)
        frame[rules.RECORD_CHARS] = total
    return frame


def validate_whole(chunk: pd.DataFrame, schema: ContactRecordSchema, seen: SeenContactIds) -> ChunkValidation:
    """The reference: normalise, derive with pandas, validate every row with the model (lazy) and split."""
    frame = chunk.reset_index(drop=True)
    normalised = normalise(frame, schema.default_phone_region)
    reference_derive(frame, schema, seen)
    rejects = model_reasons(schema, frame)
    keep = np.ones(len(frame), dtype=bool)
    keep[rejects["index"].to_numpy()] = False
    columns = [c for c in frame.columns if c not in _REFERENCE_DERIVED and c != SOURCE_ERROR]
    valid = pa.Table.from_pandas(frame[columns], preserve_index=False).filter(pa.array(keep))
    consent_utc = pa.array(frame[rules.CONSENT_AT].to_numpy()[keep]).cast(pa.timestamp("ms", tz="UTC"), safe=False)
    valid = valid.set_column(
        valid.schema.get_field_index("consent_timestamp"), "consent_timestamp",
        pc.strftime(consent_utc, format="%Y-%m-%dT%H:%M:%SZ").cast(valid.schema.field("consent_timestamp").type),
    )
    return ChunkValidation(valid=valid, rejects=rejects.drop(columns=["index"]), rejected_rows=int((~keep).sum()),
                           normalised=normalised)


def both_ways(chunks: list[pd.DataFrame], schema: ContactRecordSchema):
    """Each chunk through the validator (the model writing each chunk's reasons) and through the reference; results
    side by side."""
    validator, whole_seen = ChunkValidator(schema, model_rows=1), SeenContactIds()
    return [(validator.chunk(chunk.copy()), validate_whole(chunk.copy(), schema, whole_seen)) for chunk in chunks]


def assert_same(pairs) -> None:
    for fast, whole in pairs:
        order = ["row_number", "rule", "column"]
        pd.testing.assert_frame_equal(
            fast.rejects.sort_values(order).reset_index(drop=True),
            whole.rejects.sort_values(order).reset_index(drop=True),
        )
        assert fast.rejected_rows == whole.rejected_rows
        assert fast.normalised == whole.normalised
        assert fast.valid.equals(whole.valid), "valid records differ"


def schema_for(region: str | None = None, max_record_chars: int | None = None) -> ContactRecordSchema:
    return ContactRecordSchema.policy(1825, AS_OF, default_phone_region=region, max_record_chars=max_record_chars)


@pytest.mark.parametrize("name", CORPUS_FILES, ids=CORPUS_FILES)
def test_corpus_files_agree(name):
    try:
        chunks = list(iter_canonical_chunks(CORPUS / name, chunk_rows=3))
    except SourceFormatError:
        pytest.skip("a file-level error: no rows to validate")
    assert_same(both_ways(chunks, schema_for()))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_generated_exports_agree(tmp_path, fmt):
    export = generate_crm_export(tmp_path / f"export.{fmt}", 3000, bad_share=0.4, seed=5, now=AS_OF, fmt=fmt)
    assert_same(both_ways(list(iter_canonical_chunks(export.path, chunk_rows=700)), schema_for()))


def random_consent(rng: np.random.Generator, n: int) -> list[str]:
    """Date-times from the grammar and around it: impossible dates, 24:00, :60, offsets, fractions, zones."""
    def pick(options, size=n):
        return np.array(options, dtype=object)[rng.integers(0, len(options), size)]

    years = pick(["2024", "2025", "2026", "2023", "1999", "9999", "2300", "0001", "20x5"])
    months, days = pick(["01", "02", "06", "12", "13", "00"]), pick(["01", "28", "29", "30", "31", "32", "00"])
    separators, hours = pick(["T", " ", "t"]), pick(["00", "09", "23", "24"])
    minutes, seconds = pick(["00", "59", "60"]), pick(["", ":00", ":59", ":60"])
    fractions = pick(["", ".1", ".123", ".123456", ".1234567", ".123456789", ".1234567891"])
    zones = pick(["", "Z", "z", "+00:00", "-05:30", "+0530", "+23:59", "+24:00", "-12:60", "+05"])
    return [
        f"{y}-{mo}-{d}{sep}{h}:{mi}{s}{f if s else ''}{z}"
        for y, mo, d, sep, h, mi, s, f, z in zip(
            years, months, days, separators, hours, minutes, seconds, fractions, zones, strict=True
        )
    ]


def random_rows(seed: int, n: int = 600) -> list[list[str]]:
    """Mostly good rows; each field is bad (or repairable) one time in five, so most bad rows break one rule."""
    rng = np.random.default_rng(seed)

    def field(good: str, others: list[str]) -> str:
        return good if rng.random() < 0.8 else str(rng.choice(others))

    consent = random_consent(rng, n)
    rows = []
    for i in range(n):
        rows.append([
            field(f"c-{i}", ["c-1", "c-2", f" c-{i} ", f"\u200bc-{i}", "\u200b", "  ", "", f"c-{i}\t"]),
            field("vip", ["", "=cmd", "a,b", "x" * 10_001]),
            field(f"+1415555{i:04d}", ["+1 (415) 555-0101", "415.555.0102", "+0415", "", "+1415555010012345", "abc",
                                       "(415) 555-0100", "020 7946 0000"]),
            field("", ["+14155550100", "abc", "+44 20 7946 0000"]),
            field("2026-06-01T09:15:00.123Z", [*CONSENT_EDGES, consent[i]]),
            field("confirmed", ["pending", "Confirmed", " PENDING ", "maybe", ""]),
        ])
    return rows


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    frame = pd.DataFrame(rows, columns=HEADER)
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("region", "max_record_chars"),
    [pytest.param(None, None, id="records"), pytest.param("US", None, id="region-US"),
     pytest.param(None, 80, id="record-limit")],
)
def test_random_rows_agree(tmp_path, seed, region, max_record_chars):
    path = write_csv(tmp_path / "random.csv", random_rows(seed))
    chunks = list(iter_canonical_chunks(path, chunk_rows=250))
    assert_same(both_ways(chunks, schema_for(region, max_record_chars)))


@pytest.mark.parametrize("seed", SEEDS)
def test_each_rule_flags_exactly_the_rows_the_model_rejects_for_it(tmp_path, seed):
    """Rule by rule, not only row by row: the pre-pass's mask of a rule is the model's failure set of that rule."""
    path = write_csv(tmp_path / "random.csv", random_rows(seed))
    schema = schema_for()
    exercised: set[str] = set()
    for chunk in iter_canonical_chunks(path, chunk_rows=250):
        whole = validate_whole(chunk.copy(), schema, SeenContactIds())
        frame = chunk.reset_index(drop=True).copy()
        prepared = prepare(frame, schema, SeenContactIds())
        failing = schema.failing(prepared.columns)
        unreadable = set(whole.rejects.loc[whole.rejects["rule"].isin(SOURCE_RULES), "row_number"])
        for rule in (r.name for r in RULES if r.name != rules.RECORD_TOO_LONG):
            flagged = set(frame["row_number"].to_numpy()[failing.get(rule, np.zeros(len(frame), bool))])
            rejected = set(whole.rejects.loc[whole.rejects["rule"] == rule, "row_number"])
            assert flagged - unreadable == rejected, rule
            exercised |= {rule} if rejected else set()
    # the reader's rules and the ones of a region or a record limit: not in random CSV read without them
    not_in_csv = {*SOURCE_RULES, rules.PHONE_INVALID_FOR_REGION, rules.RECORD_TOO_LONG}
    assert exercised == {r.name for r in RULES} - not_in_csv


def every_column_chunk() -> pd.DataFrame:
    """A chunk with every column a rule reads: a refused record (source_error) beside a good one."""
    return pd.DataFrame({
        ROW_NUMBER: np.array([1, 2], dtype=np.int64), "contact_id": ["c-1", None],
        "phone_mobile": ["+14155550100", None],
        "consent_timestamp": ["2026-06-01T09:15:00Z", None], "opt_in_status": ["confirmed", None],
        "cf_notes": ["vip", None], SOURCE_ERROR: [None, "json_depth: nested deeper than 16 levels"],
    })


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_the_model_and_the_pre_pass_both_decide_every_rule_of_the_table(rule):
    """Generated from the table: a rule is one check of the model, on the column it reads, and one mask of the
    pre-pass; neither side has a rule the table lacks."""
    schema = schema_for("US", max_record_chars=80)
    checks = {name: [check.name for check in column.checks] for name, column in schema.model.columns.items()}
    assert checks[rule.reads].count(rule.name) == 1
    assert sum(names.count(rule.name) for names in checks.values()) == 1
    assert {name for names in checks.values() for name in names} == {r.name for r in RULES}
    frame = every_column_chunk()
    prepared = prepare(frame, schema, SeenContactIds())
    failing = schema.failing(prepared.columns)
    assert set(failing) == {r.name for r in RULES}
    assert failing[rule.name].shape == (len(frame),)


@pytest.mark.parametrize("seed", SEEDS)
def test_iso_8601_parser_agrees_with_pandas(seed):
    rng = np.random.default_rng(seed)
    values = random_consent(rng, 20_000) + [None, "", "2024-01-01T10:00:00Z\n", "2024-01-01T10:00Z"]
    values = [v for v in values if v is None or not v.startswith("0000")]
    array = pa.array(values, pa.large_string())
    micros, parsed, zoned = parse_iso8601(array)

    # the schema's former path: the grammar, fractions cut to microseconds, pandas' ISO-8601 parser in UTC
    grammar = pc.fill_null(pc.match_substring_regex(array, ISO_8601), False)
    cut = pc.replace_substring_regex(array, r"(\.\d{6})\d+", r"\1")
    reference = pd.to_datetime(
        pd.Series(pc.if_else(grammar, cut, pa.scalar(None, pa.large_string())).to_pandas(), dtype=object),
        utc=True, format="ISO8601", errors="coerce",
    )
    assert parsed.tolist() == reference.notna().tolist()
    expected = reference[parsed].astype("datetime64[us, UTC]").dt.tz_localize(None).to_numpy().astype(np.int64)
    assert micros[parsed].tolist() == expected.tolist()
    has_zone = pc.fill_null(pc.match_substring_regex(array, r"(?:Z|z|[+-]\d{2}:?\d{2})$"), False).to_numpy(
        zero_copy_only=False
    )
    assert zoned.tolist() == (parsed & has_zone).tolist()


def test_consent_is_written_in_utc_milliseconds():
    values = pa.array(["2024-11-01T09:15:00.123456+02:00", "2024-02-29 23:59:59.9999Z", "2026-01-01T00:00Z"])
    micros, parsed, _ = parse_iso8601(values)
    assert parsed.all()
    assert format_utc_milliseconds(micros).to_pylist() == [
        "2024-11-01T07:15:00.123Z", "2024-02-29T23:59:59.999Z", "2026-01-01T00:00:00.000Z"
    ]


def test_random_ids_hash_apart():
    """The hash behind contact_id_unique: distinct ids of every length give distinct hashes."""
    rng = np.random.default_rng(0)
    alphabet = list(string.ascii_letters + string.digits + " -_\u200b")
    ids = sorted({"".join(rng.choice(alphabet, rng.integers(0, 40))) for _ in range(20_000)})
    hashes = string_hashes(pa.array(ids, pa.large_string()))
    assert len(np.unique(hashes)) == len(ids)
    assert (string_hashes(pa.array(ids, pa.string())) == hashes).all()


@pytest.mark.parametrize("model_rows", [1, 7, 10**9], ids=["model-per-chunk", "model-every-few-rows", "model-once"])
def test_the_validator_writes_the_same_rejections_however_it_batches_the_model(tmp_path, model_rows):
    """``ChunkValidator`` (the validate task) hands the model the flagged rows of several chunks at once; the
    rejections, valid records and counts are those of the model run on every chunk whole."""
    export = generate_crm_export(tmp_path / "contacts.csv", 400, bad_share=0.4, seed=5, now=AS_OF)
    chunks = list(iter_canonical_chunks(export.path, chunk_rows=37))
    schema = schema_for()
    validator = ChunkValidator(schema, model_rows=model_rows)
    results = [validator.chunk(chunk.copy()) for chunk in chunks]
    rejects = pd.concat([r.rejects for r in results] + [validator.finish()], ignore_index=True)
    whole_seen = SeenContactIds()
    reference = [validate_whole(chunk.copy(), schema, whole_seen) for chunk in chunks]

    order = ["row_number", "rule", "column"]
    expected = pd.concat([r.rejects for r in reference], ignore_index=True)
    pd.testing.assert_frame_equal(rejects.sort_values(order).reset_index(drop=True),
                                  expected.sort_values(order).reset_index(drop=True), check_dtype=False)
    assert [r.rejected_rows for r in results] == [r.rejected_rows for r in reference]
    assert all(r.valid.equals(w.valid) for r, w in zip(results, reference, strict=True))
    assert validator.finish().empty, "nothing is left once finished"
