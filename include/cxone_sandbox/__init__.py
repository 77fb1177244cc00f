"""Local CXone sandbox (records API with fault knobs) and a webhook sink, both on 127.0.0.1.

Modules: `config` (the knobs), `http_server` (plumbing shared by both servers), `contract` (the records API
contract as pure functions, see docs/api-records.md), `records_api` (the sandbox server), `webhook_sink`.
"""

from include.cxone_sandbox.config import SandboxConfig, SandboxConfigError
from include.cxone_sandbox.contract import MAX_BATCH_RECORDS
from include.cxone_sandbox.records_api import CXoneSandbox
from include.cxone_sandbox.webhook_sink import WebhookSink

__all__ = ["MAX_BATCH_RECORDS", "CXoneSandbox", "SandboxConfig", "SandboxConfigError", "WebhookSink"]
