"""Writing a polling trigger: wait for a remote job's status over HTTP, off the worker.

    pip install -e . && python examples/polling_trigger.py

``JobStatusTrigger`` asks ``GET <url>`` every ``poll_interval`` seconds until the JSON answer's
``state`` is final, and fires with that answer. The same shape fits any API with a status
endpoint (a batch job, a payment, an export). The rules it follows:

* ``serialize()`` returns an importable class path and plain kwargs: the triggerer rebuilds the
  trigger from them, maybe in another process, after a restart;
* the blocking HTTP call runs in ``asyncio.to_thread`` (or use an async client such as
  ``httpx.AsyncClient``): one triggerer runs thousands of triggers on one event loop;
* it only reads: after a triggerer failover the trigger may run twice for a while;
* a transient error (connection refused, a 5xx) means "not yet", not "failed"; raising fails
  the waiting task with ``TriggerFailed``.

Here the example starts the "remote" API itself: a tiny local HTTP server whose job reports
``running`` for its first three polls and ``done`` after that.

No server needed: see ``_embedded.py`` (filesystem broker, ``file://`` results, SQLite store).
In a real project the trigger lives in an importable module of yours (``proj.triggers``) so
that the triggerer process can import it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from _embedded import embedded_app, until_deferred, worker_and_triggerer

from celery_defer import BaseTrigger, DeferrableTask, TriggerEvent

app = embedded_app("polling_trigger")

FINAL_STATES = ("done", "failed")


def fetch_json(url: str) -> dict[str, Any] | None:
    """GET ``url`` and parse the JSON; None for a transient failure (try again later)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            answer: dict[str, Any] = json.load(response)
            return answer
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            return None
        raise  # 404 and friends will not get better: fail the task
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return None


class JobStatusTrigger(BaseTrigger):
    """Fire with the job's status once ``GET url`` says its ``state`` is final."""

    def __init__(self, url: str, poll_interval: float = 30.0) -> None:
        super().__init__()
        self.url = url
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{__name__}.JobStatusTrigger",
            {"url": self.url, "poll_interval": self.poll_interval},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            status = await asyncio.to_thread(fetch_json, self.url)
            if status is not None and status.get("state") in FINAL_STATES:
                yield TriggerEvent(status)
                return
            await asyncio.sleep(self.poll_interval)


@app.task(base=DeferrableTask, bind=True, name="polling_trigger.run_report")
def run_report(self: DeferrableTask, status_url: str, event: TriggerEvent | None = None) -> str:
    """Waits for the remote report job, then hands back where its output is."""
    if event is None:
        # (Here the job was started by the caller; usually the task starts it first.)
        self.defer(
            trigger=JobStatusTrigger(status_url, poll_interval=0.3),
            kwargs={"status_url": status_url},
            timeout=3600,
        )
    status: dict[str, Any] = event.payload
    if status["state"] != "done":
        raise RuntimeError(f"the report job failed: {status}")
    return f"report ready at {status['output']} after {status['polls']} polls"


class FakeJobApi(BaseHTTPRequestHandler):
    """``GET /jobs/<id>``: ``running`` for the first three polls, then ``done``."""

    polls: dict[str, int] = {}

    def do_GET(self) -> None:
        job_id = self.path.rsplit("/", 1)[-1]
        polls = FakeJobApi.polls[job_id] = FakeJobApi.polls.get(job_id, 0) + 1
        state = "running" if polls <= 3 else "done"
        print(f"  api: poll {polls} of job {job_id} -> {state}", flush=True)
        body = {"state": state, "polls": polls}
        if state == "done":
            body["output"] = f"s3://reports/{job_id}.csv"
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJobApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/jobs/42"
    try:
        with worker_and_triggerer(app):
            started = time.monotonic()
            result = run_report.delay(url)
            print(f"run_report: {until_deferred(result)} (the worker slot is free)")
            print(f"run_report: {result.get(timeout=30)}")
            print(f"done in {time.monotonic() - started:.1f}s")
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
