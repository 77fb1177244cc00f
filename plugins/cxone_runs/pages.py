"""The HTML of the CXone report tab (one run) and of the import history page (all runs), drawn from ``report.json``
alone: charts are SVG drawn here, with no script library and nothing fetched at run time (air-gapped deployments).
Plain functions over the reports (``cxone_runs.report.RunReport``); the api-server's app (``cxone_report_ui.app``)
serves them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from cxone_provider.redaction import mask_uri
from cxone_runs.report import NOT_SENT_REASONS, RunReport, describe_accounting

# (totals key, label, colour); ``unchanged`` appears once change detection reports it.
OUTCOMES = (
    ("imported", "Imported", "#2e7d32"),
    ("updated", "Updated", "#00838f"),
    ("duplicates", "Duplicate", "#0277bd"),
    ("unchanged", "Unchanged", "#6d4c41"),
    ("stale", "Stale (newer day on the list)", "#8d6e63"),
    ("failed", "Failed", "#c62828"),
    ("rejected", "Rejected", "#ef6c00"),
    ("not_sent", "Not sent", "#757575"),
)


def not_sent_label(report: RunReport) -> str:
    reason = report.get("not_sent_reason")
    if reason is None and report.get("held_by_reject_gate"):  # a report written before the reason was recorded
        reason = "reject_gate"
    return f"Not sent ({NOT_SENT_REASONS.get(reason, reason or 'not sent')})"
# What a run did to the list (history chart): records created, updated and removed.
LIST_CHANGES = (("imported", "Created", "#2e7d32"), ("updated", "Updated", "#00838f"), ("removed", "Removed", "#6a1b9a"))
# How the run's removals ended (report.json ``totals``), and why they were made (``sync.REMOVAL_REASONS``)
REMOVAL_TILES = (("removed", "Removed"), ("not_on_list", "Not on list (404)"), ("removal_held", "Removals held"),
                 ("removal_failed", "Removals failed"))
# The calling-list profile's DNC entries for withdrawn consent (connection extra ``dnc_group_id``): report.json ``sync.dnc``
DNC_TILES = (("dnc_added", "Numbers put into the DNC group"), ("dnc_failed", "DNC numbers failed"))
REMOVAL_REASON_LABELS = {"consent_withdrawn": "Consent withdrawn", "consent_expired": "Consent expired",
                         "mirror_absent": "Absent from the export (mirror)"}
REJECT_COLOUR = "#ef6c00"
LATENCY_COLOUR = "#5c6bc0"
RATE_COLOUR = "#00897b"
BUDGET_COLOUR = "#c62828"
TREND_RUNS = 30
NIGHTLY_RUN_TYPES = frozenset({"scheduled", "backfill"})
RUNNING_STATES = frozenset({"queued", "running"})
REFRESH_WHILE_RUNNING_S = 15

CSS = """
:root { color-scheme: light; --fg: #1a202c; --muted: #5f6b7a; --bg: #ffffff; --panel: #f7f9fb; --line: #dde3ea;
  --ok: #2e7d32; --bad: #c62828; --link: #1565c0; }
:root[data-theme="dark"] { color-scheme: dark; --fg: #e2e8f0; --muted: #a0aec0; --bg: #1a202c; --panel: #232b38;
  --line: #3a4556; --ok: #66bb6a; --bad: #ef5350; --link: #64b5f6; }
* { box-sizing: border-box; }
body { margin: 0; padding: 16px 20px 32px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: var(--bg); }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 0 0 10px; }
a { color: var(--link); }
.meta { color: var(--muted); margin: 0 0 14px; word-break: break-all; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
  color: #fff; background: var(--muted); vertical-align: middle; }
.badge.success { background: var(--ok); } .badge.failed { background: var(--bad); }
.badge.running, .badge.queued { background: #0277bd; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(130px, 1fr)); gap: 8px; margin: 0 0 16px; }
.tile { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
.tile dt { color: var(--muted); font-size: 12px; } .tile dd { margin: 0; font-size: 20px; font-weight: 600; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr)); gap: 14px; }
section { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 12px 14px; }
svg { display: block; width: 100%; height: auto; } svg text { fill: var(--fg); font-size: 11px; }
svg .axis { stroke: var(--line); } svg .muted { fill: var(--muted); }
.note { color: var(--muted); font-size: 12px; margin: 6px 0 0; }
.problems { color: var(--bad); } .ok { color: var(--ok); font-weight: 600; } .bad { color: var(--bad); font-weight: 600; }
table { border-collapse: collapse; width: 100%; } th, td { padding: 5px 8px; border-bottom: 1px solid var(--line);
  text-align: left; white-space: nowrap; } td.wrap { white-space: normal; word-break: break-all; min-width: 14em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
form.filter { display: flex; gap: 8px; align-items: center; margin: 0 0 14px; }
select, button { font: inherit; padding: 3px 8px; }
ul.files { margin: 0; padding-left: 18px; }
"""

# Follow the Airflow UI's light/dark mode (the page is same-origin in the UI's iframe); OS preference otherwise.
THEME_JS = """
(function () {
  var dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  try { var c = window.parent.document.documentElement.classList;
        if (c.contains("dark") || c.contains("light")) { dark = c.contains("dark"); } } catch (e) {}
  document.documentElement.dataset.theme = dark ? "dark" : "light";
})();
"""

# Links to a run's report tab open it in the Airflow UI around this page; without the UI, as a plain page.
NAVIGATE_JS = """
document.addEventListener("click", function (event) {
  var link = event.target.closest("a[data-ui-href]");
  if (!link || window.parent === window) { return; }
  try {
    window.parent.history.pushState({}, "", link.dataset.uiHref);
    window.parent.dispatchEvent(new PopStateEvent("popstate"));
    event.preventDefault();
  } catch (e) {}
});
"""


def _number(value: Any) -> str:
    return f"{int(value):,}" if value is not None else "–"


def _percent(value: Any) -> str:
    return f"{float(value):.2f}%" if value is not None else "–"


def _page(title: str, body: str, *, refresh_s: int | None = None, scripts: Sequence[str] = ()) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    script = "".join(f"<script>{s}</script>" for s in (THEME_JS, *scripts))
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}<title>{escape(title)}</title>'
        f"{script}<style>{CSS}</style></head><body>{body}</body></html>"
    )


def _tiles(items: Iterable[tuple[str, str, str]]) -> str:
    """Key figures: (metric id, label, shown value); the metric id is the tile's ``data-metric``."""
    cells = "".join(
        f'<div class="tile"><dt>{escape(label)}</dt><dd data-metric="{escape(key)}">{escape(value)}</dd></div>'
        for key, label, value in items
    )
    return f'<dl class="tiles">{cells}</dl>'


def _svg(width: int, height: int, label: str, content: str, testid: str) -> str:
    return (
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}" data-chart="{escape(testid)}">'
        f"<title>{escape(label)}</title>{content}</svg>"
    )


def hbar_chart(items: Sequence[tuple[str, int, str]], *, label: str, testid: str, total: int | None = None) -> str:
    """Horizontal bars, one per (name, value, colour); each bar's row carries ``data-name`` / ``data-value``."""
    if not items:
        return '<p class="note">Nothing to show.</p>'
    width, row, label_w, value_w = 560, 24, 170, 90
    scale = max([total or 0, *(v for _, v, _ in items)]) or 1
    bars = []
    for i, (name, value, colour) in enumerate(items):
        y = i * row
        bar = (width - label_w - value_w) * value / scale
        share = f" ({100 * value / total:.1f}%)" if total else ""
        bars.append(
            f'<g data-name="{escape(name)}" data-value="{int(value)}">'
            f'<text x="0" y="{y + 16}">{escape(name)}</text>'
            f'<rect x="{label_w}" y="{y + 5}" width="{max(bar, 1 if value else 0):.1f}" height="{row - 9}" '
            f'fill="{colour}" rx="2"><title>{escape(name)}: {_number(value)}{share}</title></rect>'
            f'<text x="{label_w + bar + 6:.1f}" y="{y + 16}">{_number(value)}{escape(share)}</text></g>'
        )
    return _svg(width, row * len(items) + 4, label, "".join(bars), testid)


def column_chart(
    values: Sequence[float],
    *,
    label: str,
    testid: str,
    colour: str,
    tick_labels: Sequence[str] = (),
    reference: tuple[float, str] | None = None,
    y_label: str = "",
    titles: Sequence[str] = (),
) -> str:
    """Vertical bars with an optional dashed reference line (value, caption); labels under some bars."""
    if not values:
        return '<p class="note">Nothing to show.</p>'
    width, height, left, bottom, top = 560, 200, 46, 34, 14
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max([*values, reference[0] if reference else 0]) or 1
    step = min(plot_w / len(values), 48)  # a short run's few buckets stay bars, not a wall
    parts = [
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{width - 4}" y2="{top + plot_h}"/>',
        f'<text class="muted" x="{left - 4}" y="{top + 4}" text-anchor="end">{_number(peak)}</text>',
        f'<text class="muted" x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    if y_label:
        parts.append(f'<text class="muted" x="2" y="{top + plot_h / 2}" transform="rotate(-90 8 {top + plot_h / 2})">'
                     f"{escape(y_label)}</text>")
    every = max(1, len(values) // 8)
    for i, value in enumerate(values):
        h = plot_h * value / peak
        x = left + i * step
        title = titles[i] if i < len(titles) else f"{value:,.0f}"
        parts.append(
            f'<rect x="{x + step * 0.1:.1f}" y="{top + plot_h - h:.1f}" width="{max(step * 0.8, 0.5):.1f}" '
            f'height="{h:.1f}" fill="{colour}" data-value="{value:g}"><title>{escape(title)}</title></rect>'
        )
        if i < len(tick_labels) and i % every == 0:
            parts.append(f'<text class="muted" x="{x + step / 2:.1f}" y="{height - bottom + 14}" '
                         f'text-anchor="middle">{escape(tick_labels[i])}</text>')
    if reference:
        y = top + plot_h - plot_h * reference[0] / peak
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - 4}" y2="{y:.1f}" stroke="{BUDGET_COLOUR}" '
            f'stroke-dasharray="6 4" stroke-width="1.5" data-reference="{reference[0]:g}"/>'
            f'<text x="{width - 6}" y="{y - 4:.1f}" text-anchor="end" fill="{BUDGET_COLOUR}">{escape(reference[1])}</text>'
        )
    return _svg(width, height, label, "".join(parts), testid)


# -- the report tab ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunLinks:
    """Where the tab's downloads are; ``dead_letter`` is None when the user may not edit the DAG's runs."""

    report_json: str
    rejects_csv: str
    dead_letter: str | None


def _duration(start: datetime | None, end: datetime | None) -> str:
    if not start or not end:
        return "–"
    seconds = int((end - start).total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m {seconds % 60:02d}s"


def _chart_section(title: str, chart: str, note: str) -> str:
    """A section of the tab: its title, a chart (or none) and a note under it (``note`` is HTML)."""
    return f'<section><h2>{escape(title)}</h2>{chart}<p class="note">{note}</p></section>'


def _titles(form: str, ticks: Sequence[str], counts: Sequence[int]) -> list[str]:
    """A bar's hover text per (tick, count), ``form`` formatted with both."""
    return [form.format(tick, count) for tick, count in zip(ticks, counts, strict=True)]


def _latency_section(throughput: dict[str, Any]) -> str:
    latency = throughput.get("batch_latency")
    if not latency or not latency.get("batches"):
        return _chart_section("Batch latency", "", "No batch was sent.")
    bounds = latency["upper_bounds_ms"]
    names = [f"≤{b:g}" for b in bounds] + [f">{bounds[-1]:g}"]
    chart = column_chart(latency["counts"], label="Batches by latency (ms)", testid="batch-latency",
                         colour=LATENCY_COLOUR, tick_labels=names, y_label="batches",
                         titles=_titles("{} ms: {:,} batches", names, latency["counts"]))
    return _chart_section("Batch latency", chart, (
        f'{_number(latency["batches"])} batches · p50 <b data-metric="latency_p50">{latency["p50_ms"]:g}</b> ms'
        f' · p95 <b data-metric="latency_p95">{latency["p95_ms"]:g}</b> ms · p99 {latency["p99_ms"]:g} ms'
        f' · max {latency["max_ms"]:g} ms'))


def _rate_section(throughput: dict[str, Any]) -> str:
    rate = throughput.get("request_rate")
    if not rate or not rate.get("attempts"):
        return _chart_section("Request rate", "", "No request was sent.")
    bucket = int(rate["bucket_seconds"])
    per_minute = [c * 60 / bucket for c in rate["attempts"]]
    budget = rate.get("budget_requests_per_minute")
    ticks = [f"{i * bucket // 60}:{i * bucket % 60:02d}" for i in range(len(per_minute))]
    reference = (float(budget), f"budget {budget:,.0f}/min") if budget else None
    chart = column_chart(per_minute, label="Requests per minute over the run, against the budget",
                         testid="request-rate", colour=RATE_COLOUR, tick_labels=ticks, y_label="requests/min",
                         reference=reference, titles=_titles("+{} (m:ss): {:,} requests in " + f"{bucket} s", ticks,
                                                             rate["attempts"]))
    peak = rate.get("peak_requests_per_minute", 0)
    verdict = (
        f' · <span class="{"ok" if peak <= budget else "bad"}">{"within" if peak <= budget else "over"} budget</span>'
        if budget else ""
    )
    first, steady = rate.get("first_second_requests"), rate.get("steady_requests_per_second")
    burst = (
        f' The first second held <b data-metric="first_second_requests">{_number(first)}</b> requests: the rate '
        f"limiter's start-up burst, above its steady {steady:g}/s (no 60 s window exceeds the budget for it)."
        if first and steady and first > steady else ""
    )
    return _chart_section("Request rate", chart, (
        f"HTTP requests (retries included) per {bucket} s, shown per minute; busiest 60 s "
        f'(counted over a sliding 60 s window): <b data-metric="peak_requests_per_minute">{_number(peak)}</b> '
        f'requests{f" of a budget of {budget:,.0f}/min" if budget else ""}{verdict}.{burst}'))


def _state_section(report: RunReport) -> str:
    """Which list state the run compared against, what it left out, and what the reader must know about it."""
    changes = report.get("changes") or {}
    notices = "".join(f"<li>{escape(n)}</li>" for n in report.get("notices") or [])
    if not changes and not notices:
        return ""
    state = changes.get("state") or {}
    mode = escape(str(changes.get("mode")))
    if state:
        contacts = changes.get("state_contacts")
        size = f", {_number(contacts)} contacts" if contacts is not None else ""
        compared = (
            f'<p>Compared with the state of list <b data-metric="state_list">{escape(str(state.get("list_id")))}</b>'
            f' on <span data-metric="state_tenant">{escape(str(state.get("tenant")))}</span> (mode {mode}{size}): '
            f'<b data-metric="state_unchanged">{_number(changes.get("unchanged", 0))}</b> left unchanged, '
            f'<b data-metric="state_unconfirmed">{_number(changes.get("unconfirmed", 0))}</b> not sent again '
            "(answered duplicate before).</p>"
        )
    else:
        compared = f"<p>No list state compared (mode {mode}).</p>"
    listed = f'<ul data-metric="notices">{notices}</ul>' if notices else ""
    return f"<section><h2>List state</h2>{compared}{listed}</section>"


def _sync_section(report: RunReport) -> str:
    """What the run did to keep the list in sync (``sync_mode`` upsert or mirror): updates, removals by reason and
    outcome, and the contacts left on the list although rejected tonight."""
    section = report.get("sync")
    if not section:
        return ""
    totals, plan = report["totals"], section["plan"]
    by_reason = section.get("removals_by_reason") or {}
    tiles = _tiles([
        ("updated", "Updated", _number(totals.get("updated", 0))),
        ("stale", "Stale (newer day on the list)", _number(totals.get("stale", 0))),
        *((key, label, _number(totals.get(key, 0))) for key, label in REMOVAL_TILES),
        ("rejected_on_list", "Rejected, left on the list", _number(plan.get("rejected_on_list", 0))),
        *((key, label, _number(section["dnc"].get(key, 0))) for key, label in DNC_TILES if "dnc" in section),
    ])
    outcomes = [key if key != "removal_failed" else "failed" for key, _ in REMOVAL_TILES]
    head = "".join(f'<th class="num">{escape(label)}</th>' for _, label in REMOVAL_TILES)
    rows = "".join(
        f'<tr data-reason="{escape(reason)}"><td>{escape(label)}</td>'
        f'<td class="num" data-col="planned">{_number(plan["removals"].get(reason, 0))}</td>'
        + "".join(f'<td class="num" data-col="{escape(o)}">{_number(by_reason.get(f"{reason}:{o}", 0))}</td>'
                  for o in outcomes) + "</tr>"
        for reason, label in REMOVAL_REASON_LABELS.items()
    )
    dry = " (dry run: planned, nothing sent)" if section.get("dry_run") else ""
    return (
        f'<section data-section="sync"><h2>List sync: <span data-metric="sync_mode">{escape(str(section["mode"]))}'
        f"</span>{dry}</h2>{tiles}"
        f'<table data-table="removals"><thead><tr><th>Removal reason</th><th class="num">Planned</th>{head}</tr>'
        f"</thead><tbody>{rows}</tbody></table>"
        f'<p class="note">Planned {_number(plan.get("creates", 0))} creates and {_number(plan.get("updates", 0))} '
        "updates. A removal is a contact, not an input row: a consent removal's row counts as rejected, a mirror "
        "removal's contact is no longer in the export. Each removal's contactId, reason and time are in the audit "
        "log.</p></section>"
    )


def render_run_report(
    report: RunReport,
    *,
    dag_id: str,
    run_id: str,
    run_state: str | None,
    links: RunLinks,
    started: datetime | None = None,
    ended: datetime | None = None,
) -> str:
    """The CXone report tab of one run."""
    totals = report["totals"]
    status = str(report.get("status", "unknown"))
    outcome_items = [
        (not_sent_label(report) if key == "not_sent" else name, int(totals[key]), colour) for key, name, colour in OUTCOMES
        if key in totals and (totals[key] or key in ("imported", "duplicates", "failed", "rejected"))
    ]
    rules = sorted((report.get("rejects_by_rule") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    reconciliation = report.get("reconciliation") or {}
    webhook = report.get("webhook") or {}
    throughput = report.get("throughput") or {}
    problems = "".join(f"<li>{escape(p)}</li>" for p in report.get("problems") or [])
    dead_letter = (
        f'<li><a href="{escape(links.dead_letter)}" download data-download="dead_letter">dead_letter.jsonl</a> '
        f'({_number(report.get("dead_letters", 0))} records, full phone numbers)</li>'
        if links.dead_letter else
        f'<li>dead_letter.jsonl ({_number(report.get("dead_letters", 0))} records): needs the permission to edit '
        f"this DAG's runs (it holds full phone numbers)</li>"
    )
    body = f"""
<h1>CXone import report <span class="badge {escape(status)}" data-metric="status">{escape(status)}</span></h1>
<p class="meta">{escape(dag_id)} · run {escape(run_id)} · contact list
<b data-metric="contact_list_id">{escape(str(report.get("run", {}).get("contact_list_id", "–")))}</b> ·
source {escape(mask_uri(str(report.get("source_uri") or "–")))} · report written {escape(str(report.get("generated_at", "–"))[:19])} UTC</p>
{_tiles([
    ("input", "Input rows", _number(totals["input"])),
    ("imported", "Imported", _number(totals["imported"])),
    ("duplicates", "Duplicates", _number(totals["duplicates"])),
    *([("unchanged", "Unchanged", _number(totals["unchanged"]))] if "unchanged" in totals else []),
    ("failed", "Failed", _number(totals["failed"])),
    ("rejected", "Rejected", _number(totals["rejected"])),
    ("success_rate_percent", "Success rate", _percent(totals["success_rate_percent"])),
    ("batches", "Batches", _number(totals["batches"])),
    ("requests", "Requests", _number(totals["requests"])),
    ("rate_limited", "Answered 429", _number(totals["rate_limited"])),
    ("duration", "Duration", _duration(started, ended)),
])}
{f'<section class="problems"><h2>Needs attention</h2><ul>{problems}</ul></section><br>' if problems else ""}
<div class="grid">
<section><h2>Outcome of every input row</h2>
{hbar_chart(outcome_items, label="Input rows by outcome", testid="outcomes", total=int(totals["input"]))}
<p class="note">Success rate = (imported + updated + duplicates + unchanged) / all input rows.</p></section>
<section><h2>Rejected rows by rule</h2>
{hbar_chart([(rule, int(count), REJECT_COLOUR) for rule, count in rules], label="Reject reasons by rule", testid="rejects-by-rule")}
<p class="note">A row that breaks several rules counts under each. Every reason, row and column: rejects.csv.</p></section>
{_sync_section(report)}
{_state_section(report)}
{_latency_section(throughput)}
{_rate_section(throughput)}
<section><h2>Reconciliation</h2>
<p><span class="{"ok" if reconciliation.get("ok") else "bad"}" data-metric="reconciliation">{"OK" if reconciliation.get("ok") else "FAILED"}</span>:
{escape(str(reconciliation.get("detail", "not checked")))}</p>
{f'<p class="note" data-metric="arithmetic">{escape(describe_accounting(report["accounting"]))}</p>'
 if report.get("accounting") else ""}</section>
<section><h2>CRM webhook</h2>
<p><b data-metric="webhook_delivered">{_number(webhook.get("delivered", 0))}</b> of
<b data-metric="webhook_events">{_number(webhook.get("events", 0))}</b> events delivered ·
<span data-metric="webhook_failed">{_number(webhook.get("failed", 0))}</span> failed ·
{_number(webhook.get("attempts", 0))} attempts</p>
{"".join(f'<p class="note">{escape(e)}</p>' for e in webhook.get("errors") or [])}</section>
<section><h2>Files</h2><ul class="files">
<li><a href="{escape(links.rejects_csv)}" download data-download="rejects">rejects.csv</a>
({_number(totals["rejected"])} rejected rows; phone numbers and custom fields masked)</li>
{dead_letter}
<li><a href="{escape(links.report_json)}" download data-download="report">report.json</a> (this report as JSON)</li>
</ul></section>
</div>"""
    refresh = REFRESH_WHILE_RUNNING_S if run_state in RUNNING_STATES else None
    return _page(f"CXone report · {run_id}", body, refresh_s=refresh)


def render_no_report(*, dag_id: str, run_id: str, run_state: str | None) -> str:
    """A run without report.json: still running, failed before its report task, or not an import DAG."""
    state = run_state or "unknown"
    if state in RUNNING_STATES:
        why = "The run is still going; the report task writes report.json at its end. This page refreshes itself."
    else:
        why = ("No report.json for this run: it ended before its report task ran (read the first failed task's log), "
               "or this DAG does not use the CXone import steps.")
    body = (f'<h1>CXone import report <span class="badge {escape(state)}">{escape(state)}</span></h1>'
            f'<p class="meta">{escape(dag_id)} · run {escape(run_id)}</p><p data-metric="no-report">{escape(why)}</p>')
    return _page(f"CXone report · {run_id}", body, refresh_s=REFRESH_WHILE_RUNNING_S if state in RUNNING_STATES else None)


def render_error(status_code: int, message: str) -> str:
    return _page("CXone report", f'<h1>{status_code}</h1><p data-metric="error">{escape(message)}</p>')


# -- the history page --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """A DAG run as the metadata DB knows it."""

    dag_id: str
    run_id: str
    run_type: str
    state: str
    date: datetime | None
    started: datetime | None
    ended: datetime | None


@dataclass(frozen=True)
class HistoryRow(RunRecord):
    """One run in the history: Airflow's view of it (DB) plus its report's numbers (None without a report)."""

    report: RunReport | None = None

    @classmethod
    def of(cls, run: RunRecord, report: RunReport | None) -> HistoryRow:
        return cls(**vars(run), report=report)

    @property
    def contact_list_id(self) -> str | None:
        return (self.report or {}).get("run", {}).get("contact_list_id")

    def total(self, key: str) -> int | None:
        return (self.report or {}).get("totals", {}).get(key)


def _tab_href(row: HistoryRow) -> str:
    """The run's CXone report tab in the Airflow UI."""
    return f"/dags/{quote(row.dag_id, safe='')}/runs/{quote(row.run_id, safe='')}/plugin/cxone-report"


def _report_href(prefix: str, row: HistoryRow) -> str:
    return f"{prefix}/dags/{quote(row.dag_id, safe='')}/report?{urlencode({'run_id': row.run_id})}"


@dataclass(frozen=True)
class _RunAxes:
    """The frame of a chart with a slot per run (``runs`` of them, oldest first) and a vertical scale to ``peak``."""

    runs: int
    height: int
    right: int  # room right of the plot (the trend's second axis)
    peak: int
    width: int = 1100
    left: int = 56
    bottom: int = 40
    top: int = 14

    @property
    def plot_w(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> int:
        return self.height - self.bottom - self.top

    @property
    def base(self) -> int:
        return self.top + self.plot_h

    @property
    def step(self) -> float:
        return min(self.plot_w / self.runs, 60)

    def x(self, i: int) -> float:
        return self.left + i * self.step

    def height_of(self, value: int) -> float:
        return self.plot_h * value / (self.peak or 1)

    def frame(self) -> list[str]:
        return [f'<line class="axis" x1="{self.left}" y1="{self.base}" x2="{self.left + self.plot_w}" y2="{self.base}"/>',
                f'<text class="muted" x="{self.left - 4}" y="{self.top + 4}" text-anchor="end">{_number(self.peak or 1)}</text>',
                f'<text class="muted" x="{self.left - 4}" y="{self.base}" text-anchor="end">0</text>']

    def tick(self, i: int, label: str, run_id: str) -> str:
        """The run's label under its slot (about ten along the axis)."""
        if i % max(1, self.runs // 10) or not label:
            return ""
        return (f'<text class="muted" x="{self.x(i) + self.step / 2:.1f}" y="{self.height - self.bottom + 14}" '
                f'text-anchor="middle" data-run-label="{escape(run_id)}">{escape(label)}</text>')


def _trend_runs(rows: Sequence[HistoryRow]) -> tuple[list[HistoryRow], str]:
    """The last nightly (scheduled or backfilled) runs with a report, oldest first (any runs with one when there is
    no nightly run yet), and how to name them."""
    with_report = [r for r in rows if r.report]
    nightly = [r for r in with_report if r.run_type in NIGHTLY_RUN_TYPES]
    picked = (nightly or with_report)[:TREND_RUNS][::-1]
    runs = f"{len(picked)} runs" if len(picked) > 1 else "run"
    return picked, (f"last {runs}, nightly (scheduled and backfilled)" if nightly
                    else f"last {runs}, manual ones included (no scheduled run yet)")


def _list_changes(rows: Sequence[HistoryRow]) -> str:
    """Records created, updated and removed per run (the trend's runs): three bars a run."""
    picked, caption = _trend_runs(rows)
    if not picked:
        return '<p class="note">No run with a report yet.</p>'
    axes = _RunAxes(len(picked), 180, 10, max(int(r.total(k) or 0) for r in picked for k, _, _ in LIST_CHANGES))
    bar = axes.step * 0.8 / len(LIST_CHANGES)
    labels = trend_labels([row.date for row in picked])
    parts = axes.frame()
    for i, row in enumerate(picked):
        x = axes.x(i) + axes.step * 0.1
        group = []
        for n, (key, name, colour) in enumerate(LIST_CHANGES):
            value = int(row.total(key) or 0)
            h = axes.height_of(value)
            group.append(f'<rect x="{x + n * bar:.1f}" y="{axes.base - h:.1f}" width="{bar * 0.9:.1f}" '
                         f'height="{h:.1f}" fill="{colour}" data-series="{key}" data-value="{value}">'
                         f"<title>{escape(labels[i])} · {escape(row.run_id)}: {name} {value:,}</title></rect>")
        parts.append(f'<g data-run-id="{escape(row.run_id)}">{"".join(group)}</g>')
        parts.append(axes.tick(i, labels[i], row.run_id))
    legend = " ".join(f'<span style="color:{c}">■</span> {n}' for _, n, c in LIST_CHANGES)
    return (_svg(axes.width, axes.height, f"Records created, updated and removed, {caption}", "".join(parts),
                 "list-changes")
            + f'<p class="note">What each run did to its list, {escape(caption)}. {legend}</p>')


def _trend(rows: Sequence[HistoryRow]) -> str:
    """Outcomes and success rate of the trend's runs, oldest first."""
    picked, caption = _trend_runs(rows)
    if not picked:
        return '<p class="note">No run with a report yet.</p>'
    axes = _RunAxes(len(picked), 220, 50, max(int(r.total("input") or 0) for r in picked))
    left, top, plot_w, plot_h, step = axes.left, axes.top, axes.plot_w, axes.plot_h, axes.step
    parts = [*axes.frame(), f'<text class="muted" x="{left + plot_w + 4}" y="{top + 4}">100%</text>',
             f'<text class="muted" x="{left + plot_w + 4}" y="{top + plot_h}">0%</text>']
    points = []
    labels = trend_labels([row.date for row in picked])
    for i, row in enumerate(picked):
        x, y = axes.x(i) + step * 0.15, axes.base
        for key, name, colour in OUTCOMES:
            value = int(row.total(key) or 0)
            if not value:
                continue
            h = axes.height_of(value)
            y -= h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{step * 0.7:.1f}" height="{h:.1f}" fill="{colour}">'
                         f"<title>{escape(labels[i])} · {escape(row.run_id)}: {name} {value:,}</title></rect>")
        rate = float(row.total("success_rate_percent") or 0)
        points.append((axes.x(i) + step / 2, top + plot_h - plot_h * rate / 100, rate, row))
        parts.append(axes.tick(i, labels[i], row.run_id))
    parts.append('<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="'
                 + " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points) + '"/>')
    parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" style="fill:var(--fg);stroke:var(--bg)" data-run-id="{escape(row.run_id)}" '
              f'data-value="{rate:g}"><title>{escape(label)} · {escape(row.run_id)}: success rate {rate:.2f}%</title></circle>'
              for (x, y, rate, row), label in zip(points, labels, strict=True)]
    legend = " ".join(f'<span style="color:{c}">■</span> {n}' for key, n, c in OUTCOMES
                      if any(r.total(key) for r in picked)) + " · ● success rate (right axis)"
    return (_svg(axes.width, axes.height, f"Outcomes and success rate of the {caption}", "".join(parts), "trend")
            + f'<p class="note">Records per run by outcome, {escape(caption)}. {legend}</p>')


# the history table's counts per run (report.json ``totals``); a report of a run without sync has no updated/removed
HISTORY_COUNTS = {"input": "Input", "imported": "Imported", "updated": "Updated", "removed": "Removed",
                  "rejected": "Rejected"}
TREND_LABEL_FORMATS = ("%m-%d", "%m-%d %H:%M", "%m-%d %H:%M:%S")


def trend_labels(dates: Sequence[datetime | None]) -> list[str]:
    """A label per trend point that tells the runs apart: the day, with the time when two runs share a day (and the
    seconds when they share a minute); runs that share even those are numbered."""
    for form in TREND_LABEL_FORMATS:
        labels = [f"{d:{form}}" if d else "–" for d in dates]
        if len(set(labels)) == len(labels):
            return labels
    seen: dict[str, int] = {}
    numbered = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        numbered.append(f"{label} #{seen[label]}")
    return numbered


def render_history(
    rows: Sequence[HistoryRow],
    *,
    prefix: str,
    lists: Sequence[str],
    selected_list: str | None,
    limit: int,
) -> str:
    """The CXone imports page: a trend chart and one row per run, newest first, filterable by contact list."""
    options = "".join(
        f'<option value="{escape(v)}"{" selected" if v == (selected_list or "") else ""}>{escape(v or "all lists")}</option>'
        for v in ["", *lists]
    )
    table_rows = []
    for row in rows:
        state = (row.report or {}).get("status") or row.state
        rate = row.total("success_rate_percent")
        link = (f'<a href="{escape(_report_href(prefix, row))}" data-ui-href="{escape(_tab_href(row))}">'
                f"{escape(row.run_id)}</a>")
        table_rows.append(
            f'<tr data-run-id="{escape(row.run_id)}" data-dag-id="{escape(row.dag_id)}">'
            f'<td>{escape(f"{row.date:%Y-%m-%d %H:%M}" if row.date else "–")}</td><td class="wrap">{link}</td>'
            f'<td class="wrap">{escape(row.dag_id)}</td><td data-col="list">'
            f"{escape(row.contact_list_id or '–')}</td>"
            + "".join(f'<td class="num" data-col="{k}">{_number(row.total(k))}</td>' for k in HISTORY_COUNTS)
            + f'<td class="num" data-col="success_rate">{_percent(rate)}</td>'
            f'<td class="num" data-col="duration">{_duration(row.started, row.ended)}</td>'
            f'<td data-col="status"><span class="badge {escape(state)}">{escape(state)}</span></td></tr>'
        )
    table = (
        '<table data-table="runs"><thead><tr><th>Date</th><th>Run</th><th>DAG</th><th>Contact list</th>'
        + "".join(f'<th class="num">{escape(label)}</th>' for label in HISTORY_COUNTS.values()) +
        '<th class="num">Success rate</th><th class="num">Duration</th><th>Status</th></tr></thead>'
        f'<tbody>{"".join(table_rows)}</tbody></table>'
        if rows else '<p class="note" data-metric="no-runs">No import runs yet.</p>'
    )
    body = f"""
<h1>CXone imports</h1>
<p class="meta">Every run of the DAGs that import into CXone and that you may read, newest first (last {limit}).
A run's numbers come from its report.json; open a run for its CXone report tab.</p>
<form class="filter" method="get"><label for="list">Contact list</label>
<select id="list" name="list" onchange="this.form.submit()">{options}</select>
<noscript><button type="submit">Filter</button></noscript></form>
<section><h2>Trend</h2>{_trend(rows)}</section><br>
<section><h2>Created, updated, removed</h2>{_list_changes(rows)}</section><br>
<section><h2>Runs</h2>{table}</section>"""
    return _page("CXone imports", body, scripts=(NAVIGATE_JS,))
