"""Helpers for Warden exec tasks in Python (stdlib only): read the job, speak the stdout
protocol, and call the node's admin port. See docs/tasks.md for the contract.

    job = warden_job.read_job()          # {"job_id", "attempt", "name", "params"}
    warden_job.progress(3, 10, "page 3")
    warden_job.record("analysis/320193", {...})
    warden_job.result({...})
    warden_job.admin({"cmd": "records", "prefix": "sec/filings/320193/"})

Exit codes: 0 succeeded, 75 (EX_TEMPFAIL) retried, 65 (EX_DATAERR) dead-lettered at once.
"""

import json
import os
import socket
import sys

EX_TEMPFAIL = 75
EX_DATAERR = 65


def read_job():
    """The job object Warden writes on stdin."""
    return json.load(sys.stdin)


def _say(kind, value):
    # One protocol line; flushed so progress shows while the task runs.
    sys.stdout.write(json.dumps({kind: value}, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def record(key, value):
    """Stores a record (same store and dedup as the built-in sources)."""
    _say("record", {"key": key, "value": value})


def progress(done, total=None, message=None):
    """Reports how far the job is; `warden status` shows the latest report."""
    _say("progress", {"done": done, "total": total, "message": message})


def result(value):
    """The job's result; the last one wins."""
    _say("result", value)


def fail(message, code):
    """Ends the attempt: the message goes to stderr (and the job's error), `code` decides."""
    print(message, file=sys.stderr)
    sys.exit(code)


class Admin:
    """One connection to the node's admin port (WARDEN_ADDR), requests answered in order."""

    def __init__(self):
        host, _, port = os.environ["WARDEN_ADDR"].rpartition(":")
        try:
            self.sock = socket.create_connection((host, int(port)), timeout=30)
        except OSError as e:
            fail(f"cannot reach the node's admin port {host}:{port}: {e}", EX_TEMPFAIL)
        self.lines = self.sock.makefile("r", encoding="utf-8")
        self.token = os.environ.get("WARDEN_ADMIN_TOKEN")

    def request(self, req):
        if self.token:
            req = dict(req, token=self.token)
        self.sock.sendall((json.dumps(req) + "\n").encode())
        answer = json.loads(self.lines.readline() or "null")
        if not answer or not answer.get("ok"):
            error = (answer or {}).get("error", {})
            # A node that is shutting down or out of space may take it next time.
            code = EX_TEMPFAIL if error.get("code") in (None, "shutting_down", "storage_unavailable", "overloaded", "internal") else EX_DATAERR
            fail(f"admin {req.get('cmd')} failed: {error}", code)
        return answer

    def records(self, prefix):
        """Every record under `prefix`, in key order, a page at a time."""
        after = None
        while True:
            req = {"cmd": "records", "prefix": prefix, "limit": 1000}
            if after:
                req["after"] = after
            page = self.request(req)["records"]
            yield from page
            if len(page) < 1000:
                return
            after = page[-1]["key"]
