"""HTML of the approval page and its result and error pages.

Link previewers (Slack, Teams, mail scanners) fetch the page and show its
title and Open Graph metadata to everyone in a channel, so both are generic:
the data and reason appear only in the body. Every page is ``noindex``, is
never cached and contains no script, so nothing submits the form except a
person's click.
"""

from __future__ import annotations

import json
from html import escape

from resilience.escalation.models import EscalationRecord

__all__ = ["PAGE_HEADERS", "message_page", "review_page"]

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex, nofollow",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;
color:#1d1d1f}
pre,textarea{font-family:ui-monospace,monospace;font-size:.9rem}
textarea{width:100%;box-sizing:border-box}
.meta{color:#555}.error{color:#a00;font-weight:600}
button{font-size:1rem;padding:.5rem 1.2rem;margin-right:.5rem}
"""


def _document(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex, nofollow">'
        '<meta name="referrer" content="no-referrer">'
        '<meta property="og:title" content="Approval request">'
        '<meta property="og:description" '
        'content="Open this link to review a pending approval request.">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def review_page(
    record: EscalationRecord,
    *,
    approver: str,
    form_action: str,
    csrf_token: str,
    error: str | None = None,
    data_text: str | None = None,
) -> str:
    """Return the page that shows an escalation and its Approve/Reject form."""
    shown_data = data_text or json.dumps(record.data, indent=2, sort_keys=True)
    error_html = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    body = f"""
<h1>Approval request</h1>
{error_html}
<p class="meta">Type <strong>{escape(record.escalation_type)}</strong> ·
requested by {escape(record.requested_by or "an agent")} ·
expires <time datetime="{record.expires_at.isoformat()}">{
        escape(record.expires_at.strftime("%Y-%m-%d %H:%M UTC"))
    }</time></p>
<p class="meta">You are deciding as <strong>{escape(approver)}</strong>.</p>
<h2>Why a person must decide</h2>
<p id="reason">{escape(record.request_reason)}</p>
<form method="post" action="{escape(form_action)}">
<input type="hidden" name="csrf" value="{escape(csrf_token)}">
<h2><label for="data">Data (edit before approving if needed)</label></h2>
<textarea id="data" name="data" rows="12">{escape(shown_data)}</textarea>
<h2><label for="decision-reason">Reason (required to reject)</label></h2>
<textarea id="decision-reason" name="reason" rows="3"></textarea>
<p><button type="submit" name="decision" value="approve">Approve</button>
<button type="submit" name="decision" value="reject">Reject</button></p>
</form>
<p class="meta">Nothing is decided until you press a button.</p>
"""
    return _document("Approval request", body)


def message_page(heading: str, text: str, *, escalation_id: str | None = None) -> str:
    """Return a result or error page: a heading and one paragraph."""
    reference = (
        f'<p class="meta">Escalation <code>{escape(escalation_id)}</code></p>'
        if escalation_id
        else ""
    )
    body = f'<h1>{escape(heading)}</h1><p id="message">{escape(text)}</p>{reference}'
    return _document(heading, body)
