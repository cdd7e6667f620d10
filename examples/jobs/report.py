#!/usr/bin/env python3
"""report.generate: builds a `report/{cik}` record from a filing.analyze result.

params: {"input": <filing.analyze result>} in a chain.
"""

import warden_job as w

job = w.read_job()
a = (job["params"] or {}).get("input")
if not isinstance(a, dict) or not isinstance(a.get("cik"), int):
    w.fail(f"report.generate: expected params.input to be a filing.analyze result, got {a!r}", w.EX_DATAERR)

who = a.get("name") or f"CIK {a['cik']}"
top = sorted(a["forms"].items(), key=lambda kv: (-kv[1], kv[0]))[:5]
lines = [
    f"{who} ({a.get('ticker') or '-'}): {a['filings']} recent filings",
    "most filed forms: " + ", ".join(f"{form} x{n}" for form, n in top),
    f"latest annual report (10-K): {a.get('latest_10k') or 'none'}",
    f"latest quarterly report (10-Q): {a.get('latest_10q') or 'none'}",
]
key = f"report/{a['cik']}"
w.record(key, {"cik": a["cik"], "ticker": a.get("ticker"), "title": f"Filings report: {who}", "lines": lines})
w.result({"key": key, "summary": lines[0]})
