"""Behaviour knobs of the sandbox: one validated dataclass, changed live by replacement, never mutation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

DUPLICATE_MODES = ("warnings", "conflict")
RATE_WINDOW_S = 60.0


class SandboxConfigError(ValueError):
    """A sandbox or sink knob has an unknown name or an invalid value."""



@dataclass
class SandboxConfig:
    """Behaviour knobs of the sandbox; every field can be changed live with `CXoneSandbox.configure`."""

    latency_ms: float = 0.0
    requests_per_minute: int | None = None
    retry_after: bool = True
    rate_window_s: float = RATE_WINDOW_S  # sliding window; the limit is requests_per_minute scaled to it
    error_rate_5xx: float = 0.0
    drop_rate: float = 0.0
    drop_after_commit_rate: float = 0.0
    record_error_rate: float = 0.0  # share of a batch's new records refused in a 200's errors[] (not stored)
    record_error_code: str = "STORAGE_REJECTED"  # their code; TEMPORARY_FAILURE or INTERNAL_ERROR say "for now"
    miscount_rate: float = 0.0  # share of 200s whose recordsCreated is off by one (short; one when none was stored)
    put_error_rate_5xx: float = 0.0  # share of PUT .../records/{contactId} answered 503 (half of them after applying)
    delete_error_rate_5xx: float = 0.0  # share of DELETE .../records/{contactId} answered 503 (likewise)
    token_lifetime_s: int = 3600
    duplicate_mode: str = "warnings"
    conflict_names_duplicates: bool = True
    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.latency_ms, (int, float)) or isinstance(self.latency_ms, bool) or self.latency_ms < 0:
            raise SandboxConfigError("latency_ms must be a number >= 0")
        if self.requests_per_minute is not None and (
            not isinstance(self.requests_per_minute, int)
            or isinstance(self.requests_per_minute, bool)
            or self.requests_per_minute < 1
        ):
            raise SandboxConfigError("requests_per_minute must be None or an integer >= 1")
        if (
            not isinstance(self.rate_window_s, (int, float))
            or isinstance(self.rate_window_s, bool)
            or self.rate_window_s <= 0
        ):
            raise SandboxConfigError("rate_window_s must be a number > 0")
        for name in ("error_rate_5xx", "drop_rate", "drop_after_commit_rate", "record_error_rate", "miscount_rate",
                     "put_error_rate_5xx", "delete_error_rate_5xx"):
            share = getattr(self, name)
            if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0.0 <= share <= 1.0:
                raise SandboxConfigError(f"{name} must be a number between 0 and 1")
        if (
            not isinstance(self.token_lifetime_s, int)
            or isinstance(self.token_lifetime_s, bool)
            or self.token_lifetime_s < 1
        ):
            raise SandboxConfigError("token_lifetime_s must be an integer >= 1")
        if self.duplicate_mode not in DUPLICATE_MODES:
            raise SandboxConfigError(f"duplicate_mode must be one of {DUPLICATE_MODES}")
        for name in ("retry_after", "conflict_names_duplicates"):
            if not isinstance(getattr(self, name), bool):
                raise SandboxConfigError(f"{name} must be a boolean")
        for name in ("client_id", "client_secret", "record_error_code"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise SandboxConfigError(f"{name} must be a non-empty string")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise SandboxConfigError("seed must be None or an integer")

    def to_dict(self) -> dict[str, Any]:
        """The knobs as a plain dict, without the client secret."""
        knobs = dataclasses.asdict(self)
        knobs.pop("client_secret")
        return knobs


_CONFIG_FIELDS = frozenset(field.name for field in dataclasses.fields(SandboxConfig))


def updated_config(config: SandboxConfig, knobs: dict[str, Any]) -> SandboxConfig:
    """A copy of `config` with `knobs` applied; unknown names and bad values raise SandboxConfigError."""
    unknown = sorted(set(knobs) - _CONFIG_FIELDS)
    if unknown:
        raise SandboxConfigError(f"unknown sandbox knob(s): {', '.join(unknown)}")
    return dataclasses.replace(config, **knobs)

