"""asyncio for subscriptions and publishers, without a thread per subscription.

A read or publish in a coroutine never waits in C: it polls (Reader.poll, or a
publish with no timeout), and when there is nothing to read (no room to
publish) it gets the ring's wake word and the value it must change from
(pmq_ring_wait_word: the waiter is announced before the last look, so nothing
that comes after is missed). It then awaits the word: one waiter per event
loop, a thread asleep in futex_waitv on every word awaited in that loop at
once (up to 127 per thread, and a word of its own that tells it of new ones),
which wakes the loop (call_soon_threadsafe) for the words that changed. The
coroutines woken poll again. Publishers' fast path is unchanged: a publish
makes a system call only when a waiter is announced, sync or async.

Nothing is claimed while a coroutine awaits, so cancelling one (or its
timeout) leaves nothing taken: a read takes its records in the poll that
returns them, and returns at once.
"""

from __future__ import annotations

import asyncio
import errno
import threading
import weakref
from typing import Any

from . import _core
from ._core import ffi, lib
from .errors import Full

WORDS_PER_THREAD = 127  # futex_waitv takes 128 words: one is the thread's own
SLICE_NS = 1_000_000_000  # a waiter looks again at least this often (a waker killed mid-wake)
IDLE_NS = 5_000_000_000  # a thread with nothing to wait on ends after this long
BUSY_RETRY = 0.0005  # seconds before a read whose group's lock was busy looks again

WAIT_DATA = lib.PMQ_WAIT_DATA
WAIT_SPACE = lib.PMQ_WAIT_SPACE


class _Word:
    """An awaited word: its address, what keeps its mapping alive, the value
    the waiters saw, and their futures."""

    __slots__ = ("addr", "keep", "value", "futures")

    def __init__(self, addr: int, keep: Any, value: int):
        self.addr, self.keep, self.value = addr, keep, value
        self.futures: list[asyncio.Future[None]] = []


class _Sleeper(threading.Thread):
    """One thread asleep on up to WORDS_PER_THREAD words of one loop's waiter."""

    def __init__(self, waiter: "Waiter", n: int):
        super().__init__(daemon=True, name=f"pymq-aio-{n}")
        self.waiter = waiter
        self.words: dict[int, _Word] = {}
        self.ctl = ffi.new("uint32_t[1]")  # bumped to have it look at its words again

    def kick(self) -> None:
        self.ctl[0] = (self.ctl[0] + 1) & 0xFFFFFFFF
        lib.pmq_sync_wake(self.ctl)

    def run(self) -> None:
        waiter = self.waiter
        while True:
            with waiter.lock:
                words = list(self.words.values())
                ctl = self.ctl[0]
                if not words and waiter.sleepers.get(id(self)) is not self:
                    return
            n = len(words) + 1
            ptrs = ffi.new("uint32_t *[]", n)
            expected = ffi.new("uint32_t[]", n)
            ptrs[0], expected[0] = self.ctl, ctl
            for i, w in enumerate(words, 1):
                ptrs[i], expected[i] = ffi.cast("uint32_t *", w.addr), w.value
            rc = lib.pmq_sync_wait_any(ptrs, expected, n, SLICE_NS if words else IDLE_NS)
            if rc == -errno.ENOSYS:
                waiter.fail(self, RuntimeError("pymq's asyncio support needs Linux 5.16 or "
                                               "later (futex_waitv)"))
                return
            if not words and rc == -errno.ETIMEDOUT:
                if waiter.retire(self):
                    return
                continue
            # every word that changed (or all of them, after a slice) has its waiters
            # woken; until they look again, the thread sleeps on the word's new value
            changed = []
            with waiter.lock:
                for w in words:
                    now = ffi.cast("uint32_t *", w.addr)[0]
                    if now != w.value or rc == -errno.ETIMEDOUT:
                        changed.append(w.addr)
                        w.value = now
            if changed and not waiter.wake(changed):
                return  # the loop is closed


class Waiter:
    """The waiter of one event loop (see the module's comment)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.lock = threading.Lock()
        self.sleepers: dict[int, _Sleeper] = {}
        self.where: dict[int, _Sleeper] = {}  # word address -> the thread that watches it
        self.made = 0

    def wait(self, addr: int, value: int, keep: Any) -> asyncio.Future[None]:
        """A future done once the word at addr no longer holds value (or after
        a slice: the caller looks again either way)."""
        fut: asyncio.Future[None] = self.loop.create_future()
        with self.lock:
            sleeper = self.where.get(addr)
            kick = sleeper is None  # a word it does not sleep on yet
            if sleeper is None:
                sleeper = next((s for s in self.sleepers.values()
                                if len(s.words) < WORDS_PER_THREAD), None)
                if sleeper is None:
                    self.made += 1
                    sleeper = _Sleeper(self, self.made)
                    self.sleepers[id(sleeper)] = sleeper
                    sleeper.start()
                sleeper.words[addr] = _Word(addr, keep, value)
                self.where[addr] = sleeper
            word = sleeper.words[addr]
            if word.value != value:  # it changed since the others looked: they look again
                stale, word.futures, word.value = word.futures, [], value
                for f in stale:
                    if not f.done():
                        f.set_result(None)
                kick = True
            word.futures.append(fut)
        fut.add_done_callback(lambda f: self._forget(addr, f))
        if kick:  # else it sleeps on this word and value already
            sleeper.kick()
        return fut

    def _forget(self, addr: int, fut: asyncio.Future[None]) -> None:
        """A future done (woken, timed out or cancelled): off its word's list;
        a word nobody awaits any more goes."""
        with self.lock:
            sleeper = self.where.get(addr)
            word = sleeper.words.get(addr) if sleeper is not None else None
            if sleeper is None or word is None:
                return
            try:
                word.futures.remove(fut)
            except ValueError:
                pass
            if not word.futures:
                del sleeper.words[addr]
                del self.where[addr]

    def wake(self, addrs: list[int]) -> bool:
        """From a sleeper: wake the loop for these words. False if it is closed."""
        try:
            self.loop.call_soon_threadsafe(self._fire, addrs)
            return True
        except RuntimeError:
            return False

    def _fire(self, addrs: list[int]) -> None:
        with self.lock:
            futures = []
            for addr in addrs:
                sleeper = self.where.get(addr)
                word = sleeper.words.get(addr) if sleeper is not None else None
                if word is not None:
                    futures += word.futures
        for fut in futures:
            if not fut.done():
                fut.set_result(None)

    def retire(self, sleeper: _Sleeper) -> bool:
        """A sleeper idle for IDLE_NS ends, unless words came meanwhile."""
        with self.lock:
            if sleeper.words:
                return False
            self.sleepers.pop(id(sleeper), None)
            return True

    def fail(self, sleeper: _Sleeper, exc: BaseException) -> None:
        def fail_all() -> None:
            with self.lock:
                self.sleepers.pop(id(sleeper), None)
                futures = [f for w in sleeper.words.values() for f in w.futures]
            for fut in futures:
                if not fut.done():
                    fut.set_exception(exc)
        try:
            self.loop.call_soon_threadsafe(fail_all)
        except RuntimeError:
            pass


_waiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Waiter] = \
    weakref.WeakKeyDictionary()
_waiters_lock = threading.Lock()


def waiter() -> Waiter:
    """The running loop's waiter."""
    loop = asyncio.get_running_loop()
    w = _waiters.get(loop)
    if w is None:
        with _waiters_lock:
            w = _waiters.get(loop)
            if w is None:
                w = _waiters[loop] = Waiter(loop)
    return w


def _left(deadline: float | None, loop: asyncio.AbstractEventLoop) -> float | None:
    return None if deadline is None else max(0.0, deadline - loop.time())


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _sleep_on(addr: int, value: int, keep: Any, left: float | None) -> None:
    """Until the word changes, or left seconds pass (the caller looks again)."""
    fut = waiter().wait(addr, value, keep)
    if left is None:
        await fut
        return
    timer = fut.get_loop().call_later(left, _expire, fut)
    try:
        await fut
    finally:
        timer.cancel()


async def receive(reader: _core.Reader, n: int, timeout_ns: int, keep: Any) -> list[Any]:
    """1..n payloads (Messages) of a subscription, awaiting up to timeout_ns
    (< 0: for ever). Raises as Subscription.get_many."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout_ns < 0 else loop.time() + timeout_ns / 1e9
    while True:
        got = reader.poll(n)
        if type(got) is list:
            return got
        left = _left(deadline, loop)
        if left == 0:
            raise _core.error(_core.EMPTY, f"topic {reader.topic!r}", timeout_ns=timeout_ns)
        if got is None:  # an ack group's lock held by another member for a moment
            await asyncio.sleep(BUSY_RETRY if left is None else min(BUSY_RETRY, left))
            continue
        addr, value = got
        await _sleep_on(addr, value, keep, left)


async def publish(ring: _core.Ring, attempt: Any, timeout_ns: int, size: int) -> Any:
    """attempt() (a publish that does not wait; raises Full) until it is done
    or timeout_ns (< 0: for ever) passes, awaiting room in between."""
    try:
        return attempt()
    except Full:
        if timeout_ns == 0:
            raise
    loop = asyncio.get_running_loop()
    deadline = None if timeout_ns < 0 else loop.time() + timeout_ns / 1e9
    while True:
        addr, value = ring.wait_word(WAIT_SPACE)
        try:
            return attempt()  # announced: one more look before sleeping
        except Full:
            pass
        left = _left(deadline, loop)
        if left == 0:
            raise _core.error(lib.PMQ_FULL, f"topic {ring.topic!r}", timeout_ns=timeout_ns,
                              size=size, capacity=ring.capacity) from None
        await _sleep_on(addr, value, ring, left)


__all__ = ["Waiter", "publish", "receive", "waiter"]
