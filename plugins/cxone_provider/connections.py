"""How the provider's hooks read connection fields, one way for all of them: booleans and URLs.

Plain Python (no Airflow import): each function takes the field values, so it is tested without a connection.
"""

from __future__ import annotations

from typing import Any

TRUE_SPELLINGS = frozenset({"true", "1", "yes", "y", "on"})
FALSE_SPELLINGS = frozenset({"false", "0", "no", "n", "off"})


def parse_bool(value: Any, *, name: str) -> bool:
    """A connection field as a boolean: a bool, or one of the spellings above in any case; anything else raises.

    :param value: the field's value (an extra may hold a bool, a string or a number).
    :param name: what the field is called in the error, e.g. ``"connection crm_webhook: verify_ssl"``.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_SPELLINGS:
        return True
    if text in FALSE_SPELLINGS:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def connection_url(
    host: str | None, schema: str | None = None, port: int | None = None, endpoint: str | None = None
) -> str:
    """The URL a connection points at, built the way Airflow's ``HttpHook`` builds it, except for the default.

    A host with a scheme is used as it is, else ``{schema}://{host}``; then ``:{port}`` when set; then the
    endpoint, joined with one slash. A host given without scheme or schema means https (``HttpHook`` would use
    http): both APIs this provider calls carry credentials or signed events.
    """
    host = (host or "").strip()
    if not host:
        raise ValueError("the connection has no host")
    base = host if "://" in host else f"{schema or 'https'}://{host}"
    if port:
        base = f"{base.rstrip('/')}:{port}"
    if not endpoint:
        return base
    return f"{base.rstrip('/')}/{str(endpoint).lstrip('/')}"
