"""The stores the contract tests run on, and what a test needs beneath the interface.

Each :class:`Backend` holds one store plus the few things the ``Store`` interface cannot do on
its own: let time pass, look at every trigger, and set up states that only a race between
processes produces (a second deferral on one trigger, a triggerer reaped after its last claim).

Time: every store takes a clock (``clock=``), so time passes by moving a :class:`ManualClock`,
never by rewriting stored rows.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from celery_defer.store import DEFERRED, InMemoryStore, NewDeferral, SqlStore, Store
from celery_defer.store.memory_tables import DeferralRow
from celery_defer.store.sql.schema import deferrals, triggerers, triggers


class ManualClock:
    """A clock that stands still until a test moves it: ``clock()`` is now (aware UTC)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta | float) -> None:
        self.now += delta if isinstance(delta, timedelta) else timedelta(seconds=delta)


class Backend:
    """One store under test, and the helpers that reach beneath its interface."""

    kind: str
    store: Store

    def another(self) -> Store:
        """A handle on the same store, as another thread or process of one deployment has."""
        raise NotImplementedError

    def now(self) -> datetime:
        """The store's now (aware UTC)."""
        raise NotImplementedError

    def with_clock(self, clock: Callable[[], datetime]) -> Store:
        """A store of this kind on the same data (memory: a new, empty one) read by ``clock``."""
        raise NotImplementedError

    def advance(self, delta: timedelta) -> None:
        """Let ``delta`` pass for the store: everything it stored is that much older."""
        raise NotImplementedError

    def trigger_ids(self) -> set[int]:
        """The ids of every stored trigger, whether or not a deferral needs it."""
        raise NotImplementedError

    def add_waiter(self, deferral: NewDeferral, trigger_id: int) -> None:
        """Store ``deferral`` (generation 1) waiting on an existing trigger."""
        raise NotImplementedError

    def forget_triggerer(self, triggerer_id: str) -> None:
        """Unregister a triggerer and leave its triggers owned (reaped after its last claim)."""
        raise NotImplementedError

    def stored_values(self) -> tuple[dict[str, str], list[str]]:
        """Every deferral's kwargs by task id, and every trigger's kwargs, sorted."""
        raise NotImplementedError

    def states(self) -> dict[str, int]:
        """How many deferrals are in each state (states with none left out)."""
        raise NotImplementedError


class MemoryBackend(Backend):
    kind = "memory"

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.store = self.memory = InMemoryStore(clock=self.clock)

    def another(self) -> Store:
        return self.store  # one process, one store

    def with_clock(self, clock: Callable[[], datetime]) -> Store:
        return InMemoryStore(clock=clock)

    def now(self) -> datetime:
        return self.clock()

    def advance(self, delta: timedelta) -> None:
        self.clock.advance(delta)

    def trigger_ids(self) -> set[int]:
        return set(self.memory.tables.triggers)

    def add_waiter(self, deferral: NewDeferral, trigger_id: int) -> None:
        now = self.clock()
        self.memory.tables.deferrals[deferral.task_id] = DeferralRow(
            task_id=deferral.task_id,
            task_name=deferral.task_name,
            trigger_id=trigger_id,
            method=deferral.method,
            kwargs=deferral.kwargs,
            request=deferral.request,
            state=DEFERRED,
            outcome=None,
            generation=1,
            timeout_at=deferral.timeout_at,
            created_at=now,
            updated_at=now,
        )

    def forget_triggerer(self, triggerer_id: str) -> None:
        del self.memory.tables.triggerers[triggerer_id]

    def stored_values(self) -> tuple[dict[str, str], list[str]]:
        tables = self.memory.tables
        kwargs = {task_id: row.kwargs for task_id, row in tables.deferrals.items()}
        return kwargs, sorted(t.kwargs for t in tables.triggers.values())

    def states(self) -> dict[str, int]:
        return {state: n for state, n in self.memory.stats().by_state.items() if n}


class SqlBackend(Backend):
    def __init__(
        self, kind: str, store: SqlStore, make_store: Callable[..., SqlStore], clock: ManualClock
    ) -> None:
        self.kind = kind
        self.store = self.sql = store
        self._make_store = make_store
        self.clock = clock

    def execute(self, statement: Any) -> Any:
        with self.sql.engine.begin() as conn:
            return conn.execute(statement)

    def another(self) -> Store:
        return self._make_store(self.sql.url, clock=self.clock)

    def with_clock(self, clock: Callable[[], datetime]) -> Store:
        return self._make_store(self.sql.url, clock=clock)

    def now(self) -> datetime:
        return self.clock()

    def advance(self, delta: timedelta) -> None:
        self.clock.advance(delta)

    def trigger_ids(self) -> set[int]:
        return set(self.execute(sa.select(triggers.c.id)).scalars())

    def add_waiter(self, deferral: NewDeferral, trigger_id: int) -> None:
        now = self.clock()
        self.execute(
            sa.insert(deferrals).values(
                task_id=deferral.task_id,
                task_name=deferral.task_name,
                trigger_id=trigger_id,
                method=deferral.method,
                kwargs=deferral.kwargs,
                request=deferral.request,
                state=DEFERRED,
                outcome=None,
                generation=1,
                timeout_at=deferral.timeout_at,
                created_at=now,
                updated_at=now,
            )
        )

    def forget_triggerer(self, triggerer_id: str) -> None:
        self.execute(sa.delete(triggerers).where(triggerers.c.id == triggerer_id))

    def stored_values(self) -> tuple[dict[str, str], list[str]]:
        with self.sql.engine.connect() as conn:
            kwargs = dict(conn.execute(sa.select(deferrals.c.task_id, deferrals.c.kwargs)).all())
            trigger_kwargs = sorted(conn.execute(sa.select(triggers.c.kwargs)).scalars())
        return kwargs, trigger_kwargs

    def states(self) -> dict[str, int]:
        with self.sql.engine.begin() as conn:
            rows = conn.execute(sa.select(deferrals.c.state, sa.func.count()).group_by("state"))
            return {state: count for state, count in rows}
