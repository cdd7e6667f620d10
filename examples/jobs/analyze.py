#!/usr/bin/env python3
"""filing.analyze: reads the SEC filings records that sec.filings stored for one company and
stores an `analysis/{cik}` record: filings per form and the latest 10-K and 10-Q dates.

params: {"input": <sec.filings result: {ticker, cik, ...}>} in a chain, or {"cik": 320193}.
"""

import warden_job as w

job = w.read_job()
params = job["params"] or {}
source = params.get("input") or params
cik = source.get("cik")
if not isinstance(cik, int):
    w.fail(f"filing.analyze: expected params.cik or params.input.cik (a number), got {cik!r}", w.EX_DATAERR)

admin = w.Admin()
forms, latest, name, seen = {}, {}, None, 0
w.progress(0, None, f"reading sec/filings/{cik}/")
for rec in admin.records(f"sec/filings/{cik}/"):
    filing = rec["value"]
    form, date = filing.get("form"), filing.get("filingDate")
    name = name or filing.get("name")
    seen += 1
    if form:
        forms[form] = forms.get(form, 0) + 1
    if form in ("10-K", "10-Q") and date and date > latest.get(form, ""):
        latest[form] = date
    if seen % 500 == 0:
        w.progress(seen, None, f"{seen} filings read")

if seen == 0:
    # Nothing to analyze is a data problem, not a passing one: sec.filings has to run first.
    w.fail(f"filing.analyze: no filings stored under sec/filings/{cik}/ (run sec.filings first)", w.EX_DATAERR)

analysis = {
    "cik": cik,
    "ticker": source.get("ticker"),
    "name": name,
    "filings": seen,
    "forms": dict(sorted(forms.items())),
    "latest_10k": latest.get("10-K"),
    "latest_10q": latest.get("10-Q"),
}
w.record(f"analysis/{cik}", analysis)
w.progress(seen, seen, "analysis stored")
w.result(analysis)
