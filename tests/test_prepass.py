"""The vectorised pre-pass agrees with the pandera model: same rejections (every reason), same valid records, same
normalisation, on the bad-input corpus, generated exports and randomised rows; its ISO-8601 parser agrees with
pandas' on a randomised grammar."""

from __future__ import annotations

import string
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from include.cxone_import import prepass
from include.cxone_import.arrow_text import format_utc_milliseconds, parse_iso8601
from include.cxone_import.schema import (
    _ISO_8601,
    SOURCE_RULES,
    ContactRecordSchema,
    SeenContactIds,
    normalise,
    validate_chunk,
    validate_chunk_whole,
)
from include.cxone_import.sources import SourceFormatError, iter_canonical_chunks
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


def both_ways(chunks: list[pd.DataFrame], schema: type[ContactRecordSchema]):
    """Each chunk through the pre-pass and through the model whole; results side by side."""
    fast_seen, whole_seen = SeenContactIds(), SeenContactIds()
    return [
        (validate_chunk(chunk.copy(), schema, fast_seen), validate_chunk_whole(chunk.copy(), schema, whole_seen))
        for chunk in chunks
    ]


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


def schema_for(region: str | None = None, max_record_chars: int | None = None) -> type[ContactRecordSchema]:
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
        whole = validate_chunk_whole(chunk.copy(), schema, SeenContactIds())
        frame = chunk.reset_index(drop=True).copy()
        normalise(frame)
        decided = prepass.decide(frame, schema, SeenContactIds())
        unreadable = set(whole.rejects.loc[whole.rejects["rule"].isin(SOURCE_RULES), "row_number"])
        for rule in prepass.schema_rules(schema) - {"record_too_long"}:
            flagged = set(frame["row_number"].to_numpy()[decided.failing.get(rule, np.zeros(len(frame), bool))])
            rejected = set(whole.rejects.loc[whole.rejects["rule"] == rule, "row_number"])
            assert flagged - unreadable == rejected, rule
            exercised |= {rule} if rejected else set()
    not_in_csv = {*SOURCE_RULES, "phone_invalid_for_region", "record_too_long"}  # the reader's rules: not random CSV
    assert exercised == prepass.schema_rules(schema) - not_in_csv


def test_every_rule_the_model_declares_has_a_pre_pass():
    assert prepass.schema_rules(schema_for(max_record_chars=512)) <= prepass.PREPASS_RULES


@pytest.mark.parametrize("seed", SEEDS)
def test_iso_8601_parser_agrees_with_pandas(seed):
    rng = np.random.default_rng(seed)
    values = random_consent(rng, 20_000) + [None, "", "2024-01-01T10:00:00Z\n", "2024-01-01T10:00Z"]
    values = [v for v in values if v is None or not v.startswith("0000")]
    array = pa.array(values, pa.large_string())
    micros, parsed, zoned = parse_iso8601(array)

    # the schema's former path: the grammar, fractions cut to microseconds, pandas' ISO-8601 parser in UTC
    grammar = pc.fill_null(pc.match_substring_regex(array, _ISO_8601), False)
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
    from include.cxone_import.arrow_text import string_hashes

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
    from include.cxone_import.schema import ChunkValidator

    export = generate_crm_export(tmp_path / "contacts.csv", 400, bad_share=0.4, seed=5, now=AS_OF)
    chunks = list(iter_canonical_chunks(export.path, chunk_rows=37))
    schema = schema_for()
    validator = ChunkValidator(schema, model_rows=model_rows)
    results = [validator.chunk(chunk.copy()) for chunk in chunks]
    rejects = pd.concat([r.rejects for r in results] + [validator.finish()], ignore_index=True)
    whole_seen = SeenContactIds()
    reference = [validate_chunk_whole(chunk.copy(), schema, whole_seen) for chunk in chunks]

    order = ["row_number", "rule", "column"]
    expected = pd.concat([r.rejects for r in reference], ignore_index=True)
    pd.testing.assert_frame_equal(rejects.sort_values(order).reset_index(drop=True),
                                  expected.sort_values(order).reset_index(drop=True), check_dtype=False)
    assert [r.rejected_rows for r in results] == [r.rejected_rows for r in reference]
    assert all(r.valid.equals(w.valid) for r, w in zip(results, reference, strict=True))
    assert validator.finish().empty, "nothing is left once finished"


def test_a_rule_without_a_pre_pass_makes_the_validator_validate_whole(tmp_path, monkeypatch, caplog):
    """A schema rule the pre-pass does not know: every chunk goes through the model whole, said once."""
    from include.cxone_import.schema import ChunkValidator

    monkeypatch.setattr(prepass, "PREPASS_RULES", prepass.PREPASS_RULES - {"phone_e164"})
    export = generate_crm_export(tmp_path / "contacts.csv", 120, bad_share=0.4, seed=6, now=AS_OF)
    chunks = list(iter_canonical_chunks(export.path, chunk_rows=50))
    schema = schema_for()
    with caplog.at_level("WARNING"):
        validator = ChunkValidator(schema, model_rows=10**9)
        results = [validator.chunk(chunk.copy()) for chunk in chunks]
    whole_seen = SeenContactIds()
    assert_same(zip(results, [validate_chunk_whole(c.copy(), schema, whole_seen) for c in chunks], strict=True))
    assert validator.finish().empty, "the model ran on each chunk whole"
    assert sum("have no pre-pass" in r.getMessage() for r in caplog.records) == 1
