"""The SQLAlchemy store: SQLite (embedded default), PostgreSQL, MySQL/MariaDB.

Every method is one short transaction. Claims lock rows with
``FOR UPDATE SKIP LOCKED`` where the dialect has it (PostgreSQL, MySQL 8,
MariaDB 10.6); SQLite has no row locks, so every SQLite transaction starts
with ``BEGIN IMMEDIATE``, which serialises writers across processes and
makes the same select-then-update sequences safe there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Engine,
    Integer,
    Select,
    String,
    Text,
    any_,
    bindparam,
    column,
    delete,
    func,
    insert,
    inspect,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.schema import CreateIndex

from celery_defer.exceptions import ConfigurationError
from celery_defer.store.base import Store
from celery_defer.store.engine import chunks, create_store_engine, to_naive_utc, translated, utcnow
from celery_defer.store.events import EventQueries
from celery_defer.store.inspection import InspectionQueries
from celery_defer.store.orders import ORDER_COLUMNS, order_of
from celery_defer.store.records import (
    DEFERRED,
    FIRING,
    RESUMED,
    RUNNING,
    Cancelled,
    DeferralInfo,
    NewDeferral,
    ResumeOrder,
    StoredDeferral,
    TriggerOutcome,
)
from celery_defer.store.recovery import RecoveryQueries
from celery_defer.store.rotation import RotationQueries
from celery_defer.store.schema import (
    SCHEMA_VERSION,
    deferrals,
    metadata,
    schema_info,
    triggers,
    unowned_triggers,
)
from celery_defer.store.triggerers import TriggererQueries

logger = logging.getLogger(__name__)


def _postgresql_fire() -> Select[Any]:
    """fire() on PostgreSQL: one statement, one round trip, whatever the batch.

    Locks the waiting deferrals in (trigger, task) order (so two triggerers
    firing overlapping batches cannot deadlock), moves them to ``firing``
    with their trigger's outcome, deletes the triggers, and returns the
    resume orders. Parameters: ``ids`` and ``outcomes`` (parallel arrays) and ``now``.
    """
    ids = bindparam("ids", type_=ARRAY(BigInteger))
    outcomes = bindparam("outcomes", type_=ARRAY(Text))
    locked = (
        select(deferrals.c.task_id)
        .where(deferrals.c.trigger_id == any_(ids), deferrals.c.state == DEFERRED)
        .order_by(deferrals.c.trigger_id, deferrals.c.task_id)
        .with_for_update()
        .cte("locked")
    )
    pairs = (
        func.unnest(ids, outcomes)
        .table_valued(column("trigger_id", BigInteger), column("outcome", Text))
        .render_derived(name="pairs")
    )
    fired = (
        update(deferrals)
        .where(
            deferrals.c.task_id == locked.c.task_id, deferrals.c.trigger_id == pairs.c.trigger_id
        )
        .values(state=FIRING, outcome=pairs.c.outcome, trigger_id=None, updated_at=bindparam("now"))
        .returning(*ORDER_COLUMNS)
        .cte("fired")
    )
    gone = delete(triggers).where(triggers.c.id == any_(ids)).cte("gone")
    return select(fired).add_cte(gone)


_POSTGRESQL_FIRE = _postgresql_fire()


def _postgresql_save() -> Any:
    """save_deferral() on PostgreSQL: one statement instead of three.

    Inserts the trigger and the deferral; a task deferring again under the
    same id updates its row to the next generation (``ON CONFLICT``, which
    also settles two saves of one task id racing each other).
    """
    now = bindparam("now", type_=DateTime)
    trigger = (
        insert(triggers)
        .values(
            classpath=bindparam("classpath"), kwargs=bindparam("trigger_kwargs"), created_at=now
        )
        .returning(triggers.c.id)
        .cte("new_trigger")
    )
    values = {
        "task_id": bindparam("task_id", type_=String),
        "task_name": bindparam("task_name", type_=String),
        "trigger_id": trigger.c.id,
        "method": bindparam("method", type_=String),
        "kwargs": bindparam("kwargs", type_=Text),
        "request": bindparam("request", type_=Text),
        "state": literal(DEFERRED, type_=String),
        "outcome": null(),
        "generation": literal(1, type_=Integer),
        "timeout_at": bindparam("timeout_at", type_=DateTime),
        "created_at": now,
        "updated_at": now,
    }
    statement = postgresql.insert(deferrals).from_select(list(values), select(*values.values()))
    replaced = {
        name: statement.excluded[name]
        for name in values
        if name not in ("task_id", "generation", "created_at")
    }
    return statement.on_conflict_do_update(
        index_elements=[deferrals.c.task_id],
        set_={**replaced, "generation": deferrals.c.generation + 1},
    ).returning(deferrals.c.trigger_id, deferrals.c.generation)


_POSTGRESQL_SAVE = _postgresql_save()


class SqlStore(
    TriggererQueries, EventQueries, InspectionQueries, RecoveryQueries, RotationQueries, Store
):
    """A :class:`~celery_defer.store.base.Store` on any SQLAlchemy 2 database."""

    def __init__(self, url: str, *, create_schema: bool = True) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ConfigurationError(f"defer_database_url is not a database URL: {url!r}") from exc
        self.url = url
        self.dialect = parsed.get_backend_name()
        self.engine: Engine = create_store_engine(url)
        self._schema_checked = not create_schema

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        if not self._schema_checked:
            self.create_schema()
        with self.engine.begin() as conn:
            yield conn

    # -- schema -----------------------------------------------------------

    @translated
    def create_schema(self) -> None:
        for attempt in range(3):
            try:
                metadata.create_all(self.engine, checkfirst=True)
                break
            except (IntegrityError, OperationalError):
                # Two processes creating the schema at once: the loser's
                # CREATE fails; the tables exist now, so check again.
                if attempt == 2:
                    raise
        self._add_later_indexes()
        with self.engine.begin() as conn:
            version = conn.execute(select(schema_info.c.version)).scalar()
            if version is None:
                conn.execute(insert(schema_info).values(id=1, version=SCHEMA_VERSION))
            elif version > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"the store at {self.url!r} has schema version {version}, newer than "
                    f"this celery-defer understands ({SCHEMA_VERSION}): upgrade celery-defer"
                )
            elif version < SCHEMA_VERSION:
                # create_all above added the newer tables; record the upgrade.
                conn.execute(update(schema_info).values(version=SCHEMA_VERSION))
        self._schema_checked = True

    def _add_later_indexes(self) -> None:
        """Indexes added after the tables shipped (``create_all`` skips existing tables)."""
        if self.dialect not in ("postgresql", "sqlite"):
            return
        if inspect(self.engine).has_index(triggers.name, str(unowned_triggers.name)):
            return
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    conn.execute(CreateIndex(unowned_triggers, if_not_exists=True))
                return
            except (IntegrityError, OperationalError):
                # Another process created it at the same moment.
                if attempt == 2:
                    raise

    @translated
    def schema_version(self) -> int | None:
        """The stored schema version, or None when the schema is absent."""
        if not inspect(self.engine).has_table(schema_info.name):
            return None
        with self.engine.connect() as conn:
            return conn.execute(select(schema_info.c.version)).scalar()

    # -- task side --------------------------------------------------------

    @translated
    def save_deferral(self, deferral: NewDeferral) -> StoredDeferral:
        now = utcnow()
        timeout_at = to_naive_utc(deferral.timeout_at) if deferral.timeout_at else None
        with self._begin() as conn:
            if self.dialect == "postgresql":
                row = conn.execute(
                    _POSTGRESQL_SAVE,
                    {
                        "task_id": deferral.task_id,
                        "task_name": deferral.task_name,
                        "method": deferral.method,
                        "kwargs": deferral.kwargs,
                        "request": deferral.request,
                        "classpath": deferral.trigger_classpath,
                        "trigger_kwargs": deferral.trigger_kwargs,
                        "timeout_at": timeout_at,
                        "now": now,
                    },
                ).one()
                return StoredDeferral(trigger_id=int(row.trigger_id), generation=row.generation)
            inserted = conn.execute(
                insert(triggers).values(
                    classpath=deferral.trigger_classpath,
                    kwargs=deferral.trigger_kwargs,
                    created_at=now,
                )
            ).inserted_primary_key
            assert inserted is not None
            trigger_id = inserted[0]
            previous = conn.execute(
                select(deferrals.c.generation)
                .where(deferrals.c.task_id == deferral.task_id)
                .with_for_update()
            ).scalar()
            values = dict(
                task_name=deferral.task_name,
                trigger_id=trigger_id,
                method=deferral.method,
                kwargs=deferral.kwargs,
                request=deferral.request,
                state=DEFERRED,
                outcome=None,
                timeout_at=timeout_at,
                updated_at=now,
            )
            if previous is None:
                generation = 1
                conn.execute(
                    insert(deferrals).values(
                        task_id=deferral.task_id, generation=1, created_at=now, **values
                    )
                )
            else:
                generation = previous + 1
                conn.execute(
                    update(deferrals)
                    .where(deferrals.c.task_id == deferral.task_id)
                    .values(generation=generation, **values)
                )
        return StoredDeferral(trigger_id=int(trigger_id), generation=generation)

    @translated
    def begin_resume(self, task_id: str, generation: int, *, reclaim: bool = False) -> bool:
        states = (FIRING, RESUMED, RUNNING) if reclaim else (FIRING, RESUMED)
        with self._begin() as conn:
            claimed = conn.execute(
                update(deferrals)
                .where(
                    deferrals.c.task_id == task_id,
                    deferrals.c.generation == generation,
                    deferrals.c.state.in_(states),
                )
                .values(state=RUNNING, updated_at=utcnow())
            ).rowcount
        return bool(claimed == 1)

    @translated
    def reopen_resume(self, task_id: str, generation: int) -> None:
        with self._begin() as conn:
            conn.execute(
                update(deferrals)
                .where(
                    deferrals.c.task_id == task_id,
                    deferrals.c.generation == generation,
                    deferrals.c.state == RUNNING,
                )
                .values(state=RESUMED, updated_at=utcnow())
            )

    @translated
    def finish(self, task_id: str, generation: int) -> None:
        with self._begin() as conn:
            conn.execute(
                delete(deferrals).where(
                    deferrals.c.task_id == task_id,
                    deferrals.c.generation == generation,
                    deferrals.c.state == RUNNING,
                )
            )

    # -- firing and resuming ----------------------------------------------

    @translated
    def fire(self, outcomes: Sequence[TriggerOutcome]) -> list[ResumeOrder]:
        if not outcomes:
            return []
        by_trigger = {o.trigger_id: o.outcome for o in outcomes}
        now = utcnow()
        orders: list[ResumeOrder] = []
        trigger_ids = sorted(by_trigger)
        with self._begin() as conn:
            if self.dialect == "postgresql":
                rows = conn.execute(
                    _POSTGRESQL_FIRE,
                    {
                        "ids": trigger_ids,
                        "outcomes": [by_trigger[i] for i in trigger_ids],
                        "now": now,
                    },
                )
                return [order_of(row) for row in rows]
            # Locked in (trigger, task) order across chunks, so two triggerers
            # firing overlapping batches cannot deadlock.
            for ids in chunks(trigger_ids):
                waiting = conn.execute(
                    select(
                        *(c for c in ORDER_COLUMNS if c is not deferrals.c.outcome),
                        deferrals.c.trigger_id,
                    )
                    .where(deferrals.c.trigger_id.in_(ids), deferrals.c.state == DEFERRED)
                    .order_by(deferrals.c.trigger_id, deferrals.c.task_id)
                    .with_for_update()
                ).all()
                orders.extend(order_of(r, by_trigger[r.trigger_id]) for r in waiting)
            if orders:
                # One executemany (pipelined by psycopg), not one round trip per deferral.
                conn.execute(
                    update(deferrals)
                    .where(
                        deferrals.c.task_id == bindparam("b_task_id"),
                        deferrals.c.state == DEFERRED,
                    )
                    .values(
                        state=FIRING,
                        outcome=bindparam("b_outcome"),
                        trigger_id=None,
                        updated_at=now,
                    ),
                    [{"b_task_id": o.task_id, "b_outcome": o.outcome} for o in orders],
                )
            for ids in chunks(trigger_ids):
                conn.execute(delete(triggers).where(triggers.c.id.in_(ids)))
        return orders

    @translated
    def mark_resumed(self, orders: Sequence[ResumeOrder]) -> None:
        if not orders:
            return
        now = utcnow()
        with self._begin() as conn:
            conn.execute(
                update(deferrals)
                .where(
                    deferrals.c.task_id == bindparam("b_task_id"),
                    deferrals.c.generation == bindparam("b_generation"),
                    # Not IN (...): expanding parameters cannot take an executemany.
                    or_(deferrals.c.state == FIRING, deferrals.c.state == RESUMED),
                )
                .values(state=RESUMED, updated_at=now),
                [{"b_task_id": o.task_id, "b_generation": o.generation} for o in orders],
            )

    # -- inspection -------------------------------------------------------

    @translated
    def get_deferral(self, task_id: str) -> DeferralInfo | None:
        with self._begin() as conn:
            row = conn.execute(select(deferrals).where(deferrals.c.task_id == task_id)).first()
        if row is None:
            return None
        return DeferralInfo(
            task_id=row.task_id,
            task_name=row.task_name,
            state=row.state,
            generation=row.generation,
            method=row.method,
            trigger_id=row.trigger_id,
            timeout_at=row.timeout_at,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    @translated
    def cancel_deferrals(self, task_ids: Sequence[str]) -> Cancelled:
        if not task_ids:
            return Cancelled(task_ids=[], trigger_ids=[])
        with self._begin() as conn:
            rows = conn.execute(
                select(deferrals.c.task_id, deferrals.c.trigger_id)
                .where(
                    deferrals.c.task_id.in_(list(task_ids)),
                    deferrals.c.state.in_((DEFERRED, FIRING, RESUMED)),
                )
                .with_for_update()
            ).all()
            if not rows:
                return Cancelled(task_ids=[], trigger_ids=[])
            cancelled = [r.task_id for r in rows]
            conn.execute(delete(deferrals).where(deferrals.c.task_id.in_(cancelled)))
            candidates = {int(r.trigger_id) for r in rows if r.trigger_id is not None}
            still_needed = conn.execute(
                select(deferrals.c.trigger_id).where(deferrals.c.trigger_id.in_(candidates))
            ).scalars()
            unneeded = sorted(candidates - {int(i) for i in still_needed})
            if unneeded:
                conn.execute(delete(triggers).where(triggers.c.id.in_(unneeded)))
        return Cancelled(task_ids=cancelled, trigger_ids=unneeded)

    def close(self) -> None:
        self.engine.dispose()
