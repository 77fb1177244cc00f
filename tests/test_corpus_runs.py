"""Every file of the bad-input corpus through a whole DAG run: no input phone number reaches a task log, XCom,
a webhook event or a text file of the run, except the dead letters (which exist to be redriven)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import CONTACT_LIST_ID

pytestmark = pytest.mark.timeout(300)

CORPUS = Path(__file__).parent / "data" / "bad_inputs"
# a phone as a person writes it: optional +, then digits with the separators the layout allows
PHONE_LIKE = re.compile(rb"\+?\d[\d \-.()]{6,}\d")
TEXT_SUFFIXES = (".json", ".jsonl", ".csv", ".txt")


def _input_phones(path: Path) -> set[str]:
    """Each phone-like value of the input, as written and as E.164 (what a log would print after normalising)."""
    found: set[str] = set()
    for match in PHONE_LIKE.findall(path.read_bytes()):
        text = match.decode("ascii")
        digits = re.sub(r"\D", "", text)
        if len(digits) < 8 or re.fullmatch(r"\d{4}-\d{2}-\d{2}.*", text):  # dates are not phones
            continue
        found |= {text, "+" + digits.lstrip("+"), digits}
    return found


CORPUS_FILES = sorted(
    p.name for p in CORPUS.iterdir() if p.suffix in (".csv", ".jsonl") and _input_phones(p)
)


def _run_text(root: Path) -> str:
    """The text files a run wrote, dead letters excepted."""
    return "\n".join(
        p.read_text(errors="replace") for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in TEXT_SUFFIXES and p.name != "dead_letter.jsonl"
    )


@pytest.mark.parametrize("name", CORPUS_FILES, ids=CORPUS_FILES)
def test_no_input_phone_number_leaks(name, run_import, webhook_sink, capfd, caplog):
    run = run_import({"source_uri": f"file://{CORPUS / name}", "max_reject_share": 1.0})

    out, err = capfd.readouterr()
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        xcom = [json.dumps(x.value) for x in session.query(XComModel).filter(XComModel.run_id == run.dag_run.run_id)]
    places = {
        "task logs": out + err + caplog.text,
        "run files": _run_text(run.root),
        "XCom": " ".join(xcom),
        "webhook events": json.dumps([e["body"] for e in webhook_sink.events()]),
    }
    assert len(places["task logs"]) > 1_000, "the run's task logs were captured"
    assert run.report is not None, "every run writes its report, failed or not"
    for place, text in places.items():
        leaked = sorted(p for p in _input_phones(CORPUS / name) if len(re.sub(r"\D", "", p)) >= 8 and p in text)
        assert not leaked, f"{len(leaked)} input phone numbers in the {place} of {name}"
