"""Wait until a wall-clock time of day in a given time zone (Airflow's TimeSensorAsync).

    pip install -e . && python examples/time_of_day.py

``next_occurrence`` turns "09:30 in Europe/Paris" into the next such instant (today if it is
still ahead, else tomorrow); the task defers on a ``DateTimeTrigger`` at that instant, which
the triggerer holds as one timer, no polling. ``DateTimeTrigger`` converts any time zone to
UTC, so daylight-saving changes are the ``zoneinfo`` database's business, not yours.

To keep the example short it targets a time a few seconds ahead. (Windows has no system time
zone database: ``pip install tzdata`` there.)

No server needed: see ``_embedded.py`` (filesystem broker, ``file://`` results, SQLite store).
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from _embedded import embedded_app, until_deferred, worker_and_triggerer

from celery_defer import DeferrableTask, TriggerEvent
from celery_defer.triggers import DateTimeTrigger

app = embedded_app("time_of_day")


def next_occurrence(at: time, zone: ZoneInfo, now: datetime | None = None) -> datetime:
    """The next instant whose wall-clock time in ``zone`` is ``at`` (strictly after ``now``)."""
    local_now = (now or datetime.now(timezone.utc)).astimezone(zone)
    candidate = datetime.combine(local_now.date(), at, tzinfo=zone)
    if candidate <= local_now:
        candidate = datetime.combine(local_now.date() + timedelta(days=1), at, tzinfo=zone)
    return candidate


@app.task(base=DeferrableTask, bind=True, name="time_of_day.daily_report")
def daily_report(
    self: DeferrableTask, at: str, zone: str, event: TriggerEvent | None = None
) -> str:
    """Runs at the next ``at`` (``"HH:MM:SS"``) in time zone ``zone``."""
    if event is None:
        moment = next_occurrence(time.fromisoformat(at), ZoneInfo(zone))
        self.defer(trigger=DateTimeTrigger(moment), kwargs={"at": at, "zone": zone})
    fired_at: datetime = event.payload
    return f"ran at {fired_at.astimezone(ZoneInfo(zone)):%H:%M:%S %Z} ({zone})"


def main() -> None:
    zone = "Europe/Paris"
    target = (datetime.now(ZoneInfo(zone)) + timedelta(seconds=3)).time().replace(microsecond=0)
    with worker_and_triggerer(app):
        result = daily_report.delay(target.isoformat(), zone)
        print(f"daily_report: {until_deferred(result)} until {target} {zone}")
        print(f"daily_report: {result.get(timeout=30)}")


if __name__ == "__main__":
    main()
