"""Local CXone sandbox (records API with fault knobs) and a webhook sink, both on 127.0.0.1."""

from include.cxone_sandbox.server import (
    MAX_BATCH_RECORDS,
    CXoneSandbox,
    SandboxConfig,
    SandboxConfigError,
    WebhookSink,
)

__all__ = ["MAX_BATCH_RECORDS", "CXoneSandbox", "SandboxConfig", "SandboxConfigError", "WebhookSink"]
