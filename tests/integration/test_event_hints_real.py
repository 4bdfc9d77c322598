"""External events: every triggerer hears an event's hint on real brokers (Redis, RabbitMQ)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from celery import Celery

from celery_defer.broker.event_hints import announce_event, event_hint_listener
from celery_defer.broker.listener import BrokerListener
from celery_defer.store import SqlStore

pytestmark = pytest.mark.timeout(60)

MakeStore = Callable[[str], SqlStore]


@pytest.mark.integration
@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_every_triggerer_hears_the_hint_on_real_brokers(
    request: pytest.FixtureRequest, broker: str
) -> None:
    """Hints go to a fanout exchange: each triggerer's own queue gets every one."""
    url = request.getfixturevalue(f"{broker}_url")
    if broker == "redis":
        url = url.rstrip("/") + "/14"
    app = Celery("hints", broker=url, set_as_current=False)
    heard: dict[str, list[str]] = {"one": [], "two": []}
    both = threading.Barrier(3, timeout=10)

    def listener(name: str) -> BrokerListener:
        def on_hint(key: str) -> None:
            heard[name].append(key)
            both.wait()

        return event_hint_listener(app, f"triggerer-{name}", on_hint)

    listeners = [listener("one"), listener("two")]
    for each in listeners:
        each.start()
    try:
        assert all(each.ready.wait(10) for each in listeners)
        time.sleep(0.2)  # the bindings are declared before the consumers start
        announce_event(app, "invoice:1")
        both.wait()
        assert heard == {"one": ["invoice:1"], "two": ["invoice:1"]}
    finally:
        for each in listeners:
            each.stop()
        for each in listeners:
            each.join(10)
        app.close()


# -- the command line -----------------------------------------------------------------------------

APP_MODULE = """
from celery import Celery
import celery_defer

app = Celery("eventsapp", broker="defer-filesystem://localhost//", backend="file://{data}/results")
app.conf.update(
    broker_transport_options={{"data_folder_in": "{data}/broker",
                               "data_folder_out": "{data}/broker",
                               "control_folder": "{data}/control"}},
    defer_database_url="sqlite:///{data}/store.sqlite3",
)
"""
