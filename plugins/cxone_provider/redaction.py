"""What may be shown of a URI or of a server's error text: the one place that masks credentials and personal data
before a string reaches a log, an audit entry, a report or a CRM event.

Plain Python (no Airflow import), so the provider, the task code and the report pages all use the same rules.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit, urlunsplit

__all__ = ["MASK", "mask_uri", "scrub_text"]

MASK = "***"

# A phone number as people write it: optional +, then digits with spaces, dots, dashes or brackets between them,
# 7 or more digits in all; an ISO date (2026-11-30) is not one, and times (02:00:00) have too few digits a run.
_PHONE_LIKE = re.compile(r"(?<![\w.])(?!\d{4}-\d{2}-\d{2}(?!\d))\+?\(?\d(?:[\s.\-()]{0,2}\d){6,}(?![\w])")
_EMAIL_LIKE = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
# "firstName": "Ada", name=Ada Lovelace, 'lastName': 'L', full_name: Ada -- a person's name given as a field's value
_NAME_FIELD = re.compile(
    r"""(?P<key>["']?\b(?:first|last|middle|full|given|family|sur|contact|display|user)?[_ -]?name["']?\s*[:=]\s*)"""
    r"""(?P<value>"[^"]*"|'[^']*'|[^,;}\])\n]+)""",
    re.IGNORECASE,
)


def scrub_text(text: str) -> str:
    """A server's error text with e-mail addresses, phone-like numbers and the values of name fields masked (the
    last two digits of a phone number stay, to tell numbers apart). Ids, codes, dates and counts stay readable."""
    if not text:
        return text
    text = _EMAIL_LIKE.sub(MASK, text)
    text = _NAME_FIELD.sub(lambda match: match.group("key") + MASK, text)
    return _PHONE_LIKE.sub(lambda match: MASK + re.sub(r"\D", "", match.group())[-2:], text)


def mask_uri(uri: str) -> str:
    """A URI as it may be shown: the user part (a login, a token, a ``conn_id``) and every query value masked, the
    fragment dropped; ``s3://***@bucket/key``, ``https://host/file.csv?sig=***``. A plain path is returned as it is."""
    text = str(uri)
    try:
        parts = urlsplit(text)
    except ValueError:  # an unparseable "URI" (a bad IPv6 literal) is shown as a scheme at most
        return text.split("://", 1)[0] + "://" + MASK if "://" in text else MASK
    if not parts.scheme or (not parts.netloc and not parts.query):
        return text
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = "&".join(f"{key}={MASK}" for key, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
