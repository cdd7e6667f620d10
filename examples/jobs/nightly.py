#!/usr/bin/env python3
"""chain.nightly: submits the chain sec.filings -> filing.analyze -> report.generate for each
ticker (a `[[schedules]]` entry runs it with params {"tickers": "@universe"}).

The schedule's tick carries a unique key, so a tick fires this job once; a rerun after a crash
submits the chains again, which store the same records (keyed, so nothing is duplicated).
"""

import warden_job as w

job = w.read_job()
tickers = (job["params"] or {}).get("tickers")
if not isinstance(tickers, list) or not tickers:
    w.fail(f"chain.nightly: expected params.tickers, a non-empty list, got {tickers!r}", w.EX_DATAERR)

admin = w.Admin()
submitted = []
for i, ticker in enumerate(tickers):
    answer = admin.request({
        "cmd": "submit_workflow",
        "kind": "chain",
        "jobs": [
            {"job": "sec.filings", "params": {"ticker": ticker, "forms": ["10-K", "10-Q", "8-K"]}},
            {"job": "filing.analyze"},
            {"job": "report.generate"},
        ],
    })
    submitted.append({"ticker": ticker, "workflow_id": answer["workflow_id"]})
    w.progress(i + 1, len(tickers), f"chain submitted for {ticker}")
w.result({"workflows": submitted})
