"""Run the CXone sandbox and the webhook sink on 127.0.0.1 until SIGTERM/SIGINT.

    python -m include.cxone_sandbox --port 8765 --webhook-port 8766 --ready-file /tmp/sandbox.json

`--host 0.0.0.0` listens on every interface instead: only inside a container, where other containers reach the
sandbox by its service name (`docker-compose.override.yml`, `astro dev start`). The package needs nothing beyond the
standard library, so any Python 3.10+ image runs it.

When both servers listen, writes `{"cxone_url", "webhook_url", "pid"}` to the ready file (atomically)
and prints the same JSON line on stdout. `--call-lists-port N` also serves the calling-list API (the call_lists
profile, `call_lists_url` in the ready file). The ready file is removed again on a clean stop.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import threading
from pathlib import Path

from include.cxone_sandbox import CXoneSandbox, SandboxConfig, WebhookSink
from include.cxone_sandbox.call_lists_api import CallListSandbox, CallListSandboxConfig
from include.cxone_sandbox.config import DUPLICATE_MODES

LOCALHOST = "127.0.0.1"


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    defaults = SandboxConfig()
    parser = argparse.ArgumentParser(prog="python -m include.cxone_sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=LOCALHOST, help="address to listen on (0.0.0.0 only inside a container)")
    parser.add_argument("--port", type=int, default=8765, help="CXone sandbox port (0 = any free port)")
    parser.add_argument("--webhook-port", type=int, default=8766, help="webhook sink port (0 = any free port)")
    parser.add_argument("--ready-file", type=Path, help="write the URLs as JSON here once listening")
    parser.add_argument("--webhook-secret", default=None,
                        help="the CRM connection's signing secret: the sink then refuses events whose signature or "
                        "timestamp does not verify (default: it stores events unchecked)")
    parser.add_argument("--call-lists-port", type=int, default=None,
                        help="also serve the calling-list API on this port (0 = any free port; default: not served)")
    parser.add_argument("--job-delay-s", type=float, default=CallListSandboxConfig().job_delay_s,
                        help="calling-list upload jobs complete this long after they were accepted")
    parser.add_argument("--latency-ms", type=float, default=defaults.latency_ms)
    parser.add_argument("--requests-per-minute", type=int, default=defaults.requests_per_minute)
    parser.add_argument(
        "--no-retry-after", dest="retry_after", action="store_false", help="429 responses carry no Retry-After"
    )
    parser.add_argument("--error-rate-5xx", type=_share, default=defaults.error_rate_5xx)
    parser.add_argument("--drop-rate", type=_share, default=defaults.drop_rate)
    parser.add_argument("--drop-after-commit-rate", type=_share, default=defaults.drop_after_commit_rate)
    parser.add_argument("--record-error-rate", type=_share, default=defaults.record_error_rate,
                        help="share of a batch's new records refused in the 200's errors[] (not stored)")
    parser.add_argument("--record-error-code", default=defaults.record_error_code,
                        help="their code (TEMPORARY_FAILURE or INTERNAL_ERROR: refused for now)")
    parser.add_argument("--miscount-rate", type=_share, default=defaults.miscount_rate,
                        help="share of 200s whose recordsCreated is off by one (short; 1 when none was stored)")
    parser.add_argument("--put-error-rate-5xx", type=_share, default=defaults.put_error_rate_5xx,
                        help="share of record updates (PUT) answered 503, half of them after the update was applied")
    parser.add_argument("--delete-error-rate-5xx", type=_share, default=defaults.delete_error_rate_5xx,
                        help="share of record removals (DELETE) answered 503, half of them after the removal")
    parser.add_argument("--token-lifetime-s", type=int, default=defaults.token_lifetime_s)
    parser.add_argument("--duplicate-mode", choices=DUPLICATE_MODES, default=defaults.duplicate_mode)
    parser.add_argument(
        "--no-conflict-names",
        dest="conflict_names_duplicates",
        action="store_false",
        help="409 bodies do not name the duplicates",
    )
    parser.add_argument("--client-id", default=defaults.client_id)
    parser.add_argument("--client-secret", default=defaults.client_secret)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    return parser


def _write_ready_file(path: Path, ready: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(ready) + "\n", encoding="utf-8")
    os.replace(partial, path)


FREEZE_EVERY_S = 0.5


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = SandboxConfig(
        latency_ms=args.latency_ms,
        requests_per_minute=args.requests_per_minute,
        retry_after=args.retry_after,
        error_rate_5xx=args.error_rate_5xx,
        drop_rate=args.drop_rate,
        drop_after_commit_rate=args.drop_after_commit_rate,
        record_error_rate=args.record_error_rate,
        record_error_code=args.record_error_code,
        miscount_rate=args.miscount_rate,
        put_error_rate_5xx=args.put_error_rate_5xx,
        delete_error_rate_5xx=args.delete_error_rate_5xx,
        token_lifetime_s=args.token_lifetime_s,
        duplicate_mode=args.duplicate_mode,
        conflict_names_duplicates=args.conflict_names_duplicates,
        client_id=args.client_id,
        client_secret=args.client_secret,
        seed=args.seed,
    )
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    sandbox = CXoneSandbox(config, host=args.host, port=args.port)
    sink = WebhookSink(host=args.host, port=args.webhook_port, secret=args.webhook_secret)
    call_lists = (
        CallListSandbox(CallListSandboxConfig(job_delay_s=args.job_delay_s), host=args.host, port=args.call_lists_port)
        if args.call_lists_port is not None else None
    )
    try:
        sandbox.start()
        sink.start()
        ready = {"cxone_url": sandbox.url, "webhook_url": sink.url, "pid": os.getpid()}
        if call_lists is not None:
            ready["call_lists_url"] = call_lists.start().url
        if args.ready_file is not None:
            _write_ready_file(args.ready_file, ready)
        print(json.dumps(ready), flush=True)
        while not stop_requested.wait(FREEZE_EVERY_S):
            # What the servers stored so far (records, webhook events) leaves Python's full collections: with a
            # million records stored a full collection took over half a second, stalling every request (a pause
            # CXone does not have, which a benchmark would blame on the importer).
            gc.freeze()
    finally:
        if call_lists is not None:
            call_lists.stop()
        sink.stop()
        sandbox.stop()
        if args.ready_file is not None:
            args.ready_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
