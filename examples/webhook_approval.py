"""A task waits for a human's approval, delivered by a webhook, off the worker.

    pip install -e . && python examples/webhook_approval.py

``publish_article`` defers on ``ExternalEventTrigger(f"approval:{article_id}")``. A tiny
``http.server`` handler takes ``POST /approvals/<article_id>`` with a JSON body and calls
``celery_defer.send_event``: the stored event resumes every task waiting on that key, with the
body as ``event.payload``. The script plays the approver by POSTing to its own server.

Events are stored and kept ``defer_event_retention`` seconds (a day by default), so an
approval that arrives *before* the task defers is not lost: article 8 shows it. From a shell,
``celery -A proj defer send-event approval:9 --payload '{"approved": false}'`` does the same.

No server needed: see ``_embedded.py`` (filesystem broker, ``file://`` results, SQLite store).
"""

from __future__ import annotations

import json
import threading
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from _embedded import embedded_app, until_deferred, worker_and_triggerer

import celery_defer
from celery_defer import DeferrableTask, TriggerEvent
from celery_defer.triggers import ExternalEventTrigger

app = embedded_app("webhook_approval")


@app.task(base=DeferrableTask, bind=True, name="webhook_approval.publish_article")
def publish_article(
    self: DeferrableTask, article_id: int, event: TriggerEvent | None = None
) -> str:
    """Publishes an article once an editor approved it (waits up to a day)."""
    if event is None:
        self.defer(
            trigger=ExternalEventTrigger(f"approval:{article_id}"),
            kwargs={"article_id": article_id},
            timeout=86400,
        )
    decision: dict[str, Any] = event.payload
    if not decision.get("approved"):
        return f"rejected by {decision.get('by')}"
    return f"published (approved by {decision.get('by')})"


class ApprovalHandler(BaseHTTPRequestHandler):
    """``POST /approvals/<article_id>`` with a JSON body -> ``send_event``; 202 Accepted."""

    def do_POST(self) -> None:
        prefix, _, article_id = self.path.rpartition("/")
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        except ValueError:
            self.send_error(HTTPStatus.BAD_REQUEST, "the body must be JSON")
            return
        if prefix != "/approvals" or not article_id.isdigit():
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        celery_defer.send_event(app, f"approval:{article_id}", body)
        self.send_response(HTTPStatus.ACCEPTED)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the example prints what matters itself


def post(base_url: str, article_id: int, decision: dict[str, Any]) -> int:
    """What the editor's browser (or another service) does."""
    request = urllib.request.Request(
        f"{base_url}/approvals/{article_id}",
        method="POST",
        data=json.dumps(decision).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ApprovalHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with worker_and_triggerer(app):
            waiting = publish_article.delay(7)
            print(f"article 7: {until_deferred(waiting)}, waiting for approval")
            status = post(base_url, 7, {"approved": True, "by": "alice"})
            print(f"POST /approvals/7 -> {status}")
            print(f"article 7: {waiting.get(timeout=30)}")

            status = post(base_url, 8, {"approved": False, "by": "bob"})
            print(f"POST /approvals/8 -> {status}, before its task even started")
            print(f"article 8: {publish_article.delay(8).get(timeout=30)}")
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
