"""Running a request's coroutine without a Task until it first has to wait.

Many Access-Requests never wait for anything: with no primary check of our own (primary
`none`), a remembered login, or ports that answer from memory and a policy that needs no
second factor, the whole answer is computed in one go (a users-file password check waits on
its hashing thread, so it does get a Task). Python 3.11 has no eager task factory, and a
Task per request plus an `asyncio.timeout` around the pipeline cost about 16 us per request:
more than the packet checks and the signed reply together (docs/performance.md, "Core
throughput"). So:

- `start` steps the coroutine once, by hand, in the request's own contextvars context. If it
  finishes, no Task is made. If it suspends (an LDAP bind, a push), a Task takes over from
  exactly where it stopped (`_Resumed`).
- `in_task` moves the rest of a hand-driven coroutine into its Task: code that needs a
  current Task (`asyncio.timeout` in a backend) must not run in the hand-driven step. The
  pipeline calls it before any port that does not declare `runs_without_task`.
- `shielded` is `asyncio.shield` for a coroutine, with its Task made only if it waits.
- `Deadline` is an `asyncio.timeout` whose timer is armed only when the awaited coroutine
  suspends, so a request that finishes at once never touches the timer heap; and it needs
  no current Task when it starts, which `asyncio.timeout` does.

All are plain asyncio underneath: the same futures, the same cancellation; the tests in
tests/unit/test_eager.py pin the edge cases (cancel before the Task ran, expiry while
waiting on a bare yield, an outer cancel during the deadline).
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def start(coro: Coroutine[Any, Any, T], context: contextvars.Context,
          loop: asyncio.AbstractEventLoop) -> asyncio.Task[T] | None:
    """Run `coro` in `context` up to its first suspension; a Task for the rest, if any.

    Returns None when the coroutine finished (its result is dropped: the callers' coroutines
    return None and do their own work, such as sending the reply). Context changes made in
    the first step stay in `context`, which the Task goes on using.
    """
    try:
        yielded = context.run(coro.send, None)
    except StopIteration:
        return None
    return loop.create_task(_Resumed(coro, yielded), context=context)


@types.coroutine
def in_task() -> Generator[None, None, None]:
    """Make sure what follows runs inside a Task: `await in_task()` before calling code that
    needs one (`asyncio.timeout`, `asyncio.current_task`), such as most backends.

    Inside a Task this does nothing. In a step driven by `start`, it suspends once with a
    bare yield: `start` hands the coroutine to a new Task, whose next step resumes it here.
    """
    if asyncio.current_task() is None:
        yield


async def shielded(coro: Coroutine[Any, Any, T]) -> T:
    """`await asyncio.shield(coro)`, without the Task when coro finishes in one step.

    A shield matters only while coro waits (a Redis round trip): a cancel arriving then
    must not interrupt it. A coroutine that finishes at once (the memory store) cannot be
    interrupted, so the Task that `asyncio.shield` would wrap it in is skipped.
    """
    try:
        yielded = coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    task = asyncio.get_running_loop().create_task(_Resumed(coro, yielded))
    return await asyncio.shield(task)


class _Resumed(Coroutine[Any, Any, T]):
    """A coroutine stepped once by hand, continued by a Task.

    The Task's first step gets back what the coroutine yielded to us (the future it waits
    on, with `_asyncio_future_blocking` still set, or None for a bare yield), so the Task
    waits on it exactly as if it had taken that step itself; after that every step goes
    straight to the coroutine.
    """

    __slots__ = ("_coro", "_first", "_started")

    def __init__(self, coro: Coroutine[Any, Any, T], first: Any) -> None:
        self._coro = coro
        self._first = first
        self._started = False

    def send(self, value: Any) -> Any:
        if not self._started:
            self._started = True
            first, self._first = self._first, None
            return first
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        # A Task cancelled before its first step throws here first: straight into the
        # coroutine, which is suspended on the future it had yielded.
        self._started = True
        self._first = None
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # pragma: no cover - asyncio passes one argument

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:
        raise TypeError("a resumed coroutine is driven by its Task, not awaited")

    @property
    def cr_frame(self) -> Any:
        """The inner coroutine's frame, so `Task.get_stack()` shows where it waits."""
        return getattr(self._coro, "cr_frame", None)


class Deadline(Generic[T]):
    """`await Deadline(coro, delay)`: coro's result, or TimeoutError after `delay` seconds.

    Like `asyncio.timeout(delay)` around `await coro`, but the timer is armed only if coro
    suspends (counted from that moment; the part before it took no time worth counting).
    This awaitable forwards every step between the Task and coro itself, so at expiry it
    cancels the future coro is waiting on, as `Task.cancel()` would, and turns the
    resulting CancelledError into TimeoutError. A cancellation of the Task from outside
    (shutdown) stays a CancelledError.
    """

    __slots__ = ("_cancel_next", "_coro", "_delay", "_expired", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, T], delay: float) -> None:
        self._coro = coro
        self._delay = delay
        self._waiting: Any = None
        self._expired = False
        self._cancel_next = False

    def __await__(self) -> Generator[Any, Any, T]:
        coro = self._coro
        try:
            yielded = coro.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        timer = asyncio.get_running_loop().call_later(self._delay, self._expire)
        try:
            while True:
                self._waiting = yielded
                try:
                    sent = yield yielded
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:  # thrown in by the Task: coro's to handle
                    yielded = coro.throw(exc)
                else:
                    yielded = self._step(coro, sent)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            if self._expired and not _cancelled_from_outside():
                raise TimeoutError from None
            raise
        finally:
            timer.cancel()

    def _step(self, coro: Coroutine[Any, Any, T], sent: Any) -> Any:
        if self._cancel_next:
            self._cancel_next = False
            return coro.throw(asyncio.CancelledError())
        return coro.send(sent)

    def _expire(self) -> None:
        self._expired = True
        waiting = self._waiting
        if isinstance(waiting, asyncio.Future) and waiting.cancel():
            return  # the Task wakes up and throws CancelledError through us into coro
        self._cancel_next = True  # a bare yield, or a future already done: at the next step


def _cancelled_from_outside() -> bool:
    """Deadline never calls Task.cancel(), so a pending cancel request came from elsewhere."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
