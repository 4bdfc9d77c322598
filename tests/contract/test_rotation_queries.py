"""``rewrite_user_values``, the store side of ``celery defer rotate-keys``: memory, SQL stores.

The store never interprets the text: these tests rewrite with plain string functions and
check which rows changed, in batches of any size, and that a row changed between the read
and the write (a task deferring again) is left as it now is.
"""

from __future__ import annotations

import json

import pytest

from celery_defer.store import NewDeferral, Store
from tests.support.store_backends import Backend


def deferral(task_id: str, n: int = 0) -> NewDeferral:
    return NewDeferral(
        task_id=task_id,
        task_name="proj.task",
        method="run",
        kwargs=json.dumps({"task": task_id, "n": n}),
        request=json.dumps({}),
        trigger_classpath="proj.Trigger",
        trigger_kwargs=json.dumps({"trigger": task_id}),
        timeout_at=None,
    )


def mark(text: str) -> str | None:
    return None if text.startswith("X") else "X" + text


@pytest.mark.parametrize("batch_size", [1, 2, 500])
def test_every_row_is_rewritten_once_in_batches_of_any_size(
    store: Store, backend: Backend, batch_size: int
) -> None:
    for task_id in ("a", "b", "c"):
        store.save_deferral(deferral(task_id))
    done = store.rewrite_user_values(mark, batch_size)
    assert (done.deferrals, done.triggers) == (3, 3)
    kwargs, trigger_kwargs = backend.stored_values()
    assert kwargs == {t: "X" + json.dumps({"task": t, "n": 0}) for t in "abc"}
    assert trigger_kwargs == ["X" + json.dumps({"trigger": t}) for t in "abc"]
    again = store.rewrite_user_values(mark, batch_size)
    assert (again.deferrals, again.triggers) == (0, 0)


def test_an_empty_store_rewrites_nothing(store: Store) -> None:
    done = store.rewrite_user_values(mark)
    assert (done.deferrals, done.triggers) == (0, 0)


def test_a_row_changed_meanwhile_is_left_as_it_now_is(store: Store, backend: Backend) -> None:
    store.save_deferral(deferral("a"))
    store.save_deferral(deferral("b"))

    def rewrite(text: str) -> str | None:
        if '"task": "a"' in text and '"n": 0' in text:
            store.save_deferral(deferral("a", n=1))  # task a defers again meanwhile
        return mark(text)

    done = store.rewrite_user_values(rewrite, batch_size=10)
    assert done.deferrals == 1  # only b: a's row is a new generation now
    kwargs, _ = backend.stored_values()
    assert kwargs["a"] == json.dumps({"task": "a", "n": 1})
    assert kwargs["b"] == "X" + json.dumps({"task": "b", "n": 0})


def test_batch_size_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        store.rewrite_user_values(mark, 0)
