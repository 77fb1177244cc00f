"""What may be shown of a URI or of a server's error text: the one place that masks credentials and personal data
before a string reaches a log, an audit entry, a report or a CRM event.

Plain Python (no Airflow import), so the provider, the task code and the report pages all use the same rules.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

__all__ = ["MASK", "mask_uri"]

MASK = "***"

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
