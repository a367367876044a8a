"""Running a request's coroutine without a Task until it waits (radius_proxy.eager).

`start` must behave like `loop.create_task` as far as the coroutine can tell (same context,
same cancellation), `Deadline` like `asyncio.timeout` (TimeoutError at expiry, an outer
cancel stays a cancel), `shielded` like `asyncio.shield`. Each test runs one event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from radius_proxy.eager import Deadline, in_task, shielded, start

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(scenario())  # type: ignore[arg-type]


# -- start ------------------------------------------------------------------------------------
def test_a_coroutine_that_never_waits_needs_no_task() -> None:
    seen: list[Any] = []

    async def work() -> None:
        VAR.set("request")
        seen.append((asyncio.current_task(), VAR.get()))

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        started: list[Any] = []
        # as the server does it: from a reader callback, where no Task is current
        loop.call_soon(lambda: started.append(start(work(), context, loop)))
        await asyncio.sleep(0.01)
        assert started == [None]
        assert context[VAR] == "request"
        assert VAR.get() == "unset"  # the caller's context is untouched

    run(scenario)
    assert seen == [(None, "request")]


def test_a_coroutine_that_waits_goes_on_in_a_task_with_its_context() -> None:
    seen: list[Any] = []

    async def work() -> str:
        VAR.set("request")
        await asyncio.sleep(0.01)
        seen.append((asyncio.current_task(), VAR.get()))
        return "done"

    async def scenario() -> None:
        task = start(work(), contextvars.copy_context(), asyncio.get_running_loop())
        assert task is not None
        assert await task == "done"
        assert seen == [(task, "request")]
        assert VAR.get() == "unset"

    run(scenario)


def test_a_bare_yield_in_the_first_step_is_resumed_by_the_task() -> None:
    async def work() -> int:
        await asyncio.sleep(0)
        return 7

    async def scenario() -> None:
        task = start(work(), contextvars.copy_context(), asyncio.get_running_loop())
        assert task is not None
        assert await task == 7

    run(scenario)


def test_cancel_before_the_task_ran_reaches_the_coroutine() -> None:
    cleaned: list[str] = []

    async def work() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append("finally")

    async def scenario() -> None:
        task = start(work(), contextvars.copy_context(), asyncio.get_running_loop())
        assert task is not None
        task.cancel()  # before its first step
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario)
    assert cleaned == ["finally"]


def test_an_exception_after_the_first_wait_ends_the_task() -> None:
    async def work() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    async def scenario() -> None:
        task = start(work(), contextvars.copy_context(), asyncio.get_running_loop())
        assert task is not None
        with pytest.raises(ValueError, match="boom"):
            await task

    run(scenario)


# -- in_task ----------------------------------------------------------------------------------
def test_in_task_moves_code_that_needs_a_task_into_one() -> None:
    async def work() -> str:
        await in_task()
        async with asyncio.timeout(1):  # raises RuntimeError outside a Task
            await asyncio.sleep(0)
        return "ok"

    async def scenario() -> None:
        task = start(work(), contextvars.copy_context(), asyncio.get_running_loop())
        assert task is not None
        assert await task == "ok"

    run(scenario)


def test_in_task_inside_a_task_does_not_wait() -> None:
    async def work() -> str:
        await in_task()
        return "ok"

    async def scenario() -> None:
        coro = work()
        with pytest.raises(StopIteration):  # finished in one step: nothing was yielded
            coro.send(None)

    async def outer() -> None:
        await asyncio.create_task(scenario())

    run(outer)


# -- Deadline ---------------------------------------------------------------------------------
def test_deadline_returns_the_result_of_a_coroutine_that_never_waits() -> None:
    async def quick() -> int:
        return 3

    async def scenario() -> int:
        return await Deadline(quick(), 0.01)

    assert run(scenario) == 3


def test_deadline_returns_the_result_after_waits() -> None:
    async def slow() -> int:
        await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        return 4

    async def scenario() -> int:
        return await Deadline(slow(), 5)

    assert run(scenario) == 4


def test_deadline_expiring_during_a_wait_is_a_timeout() -> None:
    cleaned: list[str] = []

    async def hangs() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append("finally")

    async def scenario() -> None:
        with pytest.raises(TimeoutError):
            await Deadline(hangs(), 0.02)

    run(scenario)
    assert cleaned == ["finally"]


def test_deadline_expiring_during_bare_yields_is_a_timeout() -> None:
    async def spins() -> None:
        while True:  # noqa: ASYNC110 - bare yields, never a future, are what is tested
            await asyncio.sleep(0)

    async def scenario() -> None:
        with pytest.raises(TimeoutError):
            await Deadline(spins(), 0.02)

    run(scenario)


def test_deadline_works_in_a_hand_driven_step_without_a_task() -> None:
    async def hangs() -> None:
        await asyncio.sleep(10)

    async def request() -> str:
        try:
            await Deadline(hangs(), 0.02)
        except TimeoutError:
            return "timeout"
        return "finished"

    async def scenario() -> None:
        task = start(request(), contextvars.copy_context(), asyncio.get_running_loop())
        assert task is not None
        assert await task == "timeout"

    run(scenario)


def test_a_cancel_from_outside_stays_a_cancel() -> None:
    async def hangs() -> None:
        await asyncio.sleep(10)

    async def scenario() -> None:
        task = asyncio.create_task(_await(Deadline(hangs(), 5)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario)


def test_a_coroutine_that_swallows_the_expiry_returns_its_value() -> None:
    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "cleaned up"
        return "finished"

    async def scenario() -> str:
        return await Deadline(stubborn(), 0.02)

    assert run(scenario) == "cleaned up"


def test_exceptions_pass_through_the_deadline() -> None:
    async def fails() -> None:
        await asyncio.sleep(0)
        raise KeyError("k")

    async def scenario() -> None:
        with pytest.raises(KeyError):
            await Deadline(fails(), 5)

    run(scenario)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


# -- shielded ---------------------------------------------------------------------------------
def test_shielded_finishes_a_quick_coroutine_at_once() -> None:
    async def quick() -> str:
        return "stored"

    async def scenario() -> str:
        return await shielded(quick())

    assert run(scenario) == "stored"


def test_shielded_work_survives_the_cancel_of_its_caller() -> None:
    done: list[str] = []

    async def store() -> None:
        await asyncio.sleep(0.02)
        done.append("stored")

    async def scenario() -> None:
        caller = asyncio.create_task(shielded(store()))
        await asyncio.sleep(0.005)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await asyncio.sleep(0.05)

    run(scenario)
    assert done == ["stored"]
