"""Request slots: a lease on a ready engine, max_concurrency slots handed from a finishing request
to the oldest waiter, and joining a start under way."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from vramgate.errors import Unloaded
from vramgate.instances import Instance
from vramgate.runtimes.base import EngineHandle
from vramgate.scheduling.snapshot import State


@dataclass
class Lease:
    """A request's hold on a ready engine; release it when the response is done."""

    instance: Instance
    handle: EngineHandle

    @property
    def url(self) -> str:
        return self.handle.base_url

    @property
    def head(self) -> bytes:
        """Header lines every request to its engine carries (its key, on another node)."""
        headers = self.handle.headers
        if not headers:  # the engines on this machine: the hot path
            return b""
        return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()


async def wait_for_slot(inst: Instance, notify: Callable[[], None]) -> Lease | None:
    """A slot handed over by a finishing request, or None: decide again (engine gone)."""
    handle = inst.handle
    slot: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    inst.slot_waiters.append(slot)
    hand_over(inst)  # a slot may be free already (none is lost if one is)
    try:
        handed = await slot
    except asyncio.CancelledError:  # the client left
        if slot.done() and not slot.cancelled() and slot.result():
            free_slot(inst, handle, notify)  # handed to us just as we left: pass it on
        else:
            with contextlib.suppress(ValueError):
                inst.slot_waiters.remove(slot)
            notify()
        raise
    if not handed:
        return None
    if inst.state is State.READY and handle is not None and inst.handle is handle:
        return Lease(inst, handle)
    free_slot(inst, handle, notify)  # it went away between the handover and now
    return None


def free_slot(inst: Instance, handle: EngineHandle | None, notify: Callable[[], None]) -> None:
    """A request gave its slot back (`handle`: the engine it held, which may be gone since)."""
    inst.in_flight -= 1
    hand_over(inst)
    if inst.in_flight == 0:
        notify()


def hand_over(inst: Instance) -> None:
    """The free slots of a ready engine that takes requests go to its oldest waiters.

    Counted per model, whoever's slot came free: a request on an engine that died releases its
    slot after the next engine is ready, and that slot is the new engine's (handing over only
    to the engine a request held lost the wake-up of every request queued for the new one).
    """
    if inst.state is not State.READY or inst.handle is None or inst.draining_for is not None:
        return
    limit = inst.model.max_concurrency
    waiters = inst.slot_waiters
    while waiters and (limit is None or inst.in_flight < limit):
        slot = waiters.popleft()
        if not slot.done():
            inst.in_flight += 1
            slot.set_result(True)


def send_back(inst: Instance) -> None:
    """Every request queued for a slot decides again: its engine went, or it drains (it must
    become idle to make way, so its queue waits for it to come back instead)."""
    waiters, inst.slot_waiters = inst.slot_waiters, deque()
    for slot in waiters:
        if not slot.done():
            slot.set_result(False)


async def join_start(inst: Instance) -> None:
    """Waits for the start under way; its failure is ours too."""
    task = inst.start_task
    assert task is not None
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not task.cancelled() or (current is not None and current.cancelling()):
            raise  # our own client left
        raise Unloaded(f"model '{inst.name}' was stopped while starting; retry") from None


# Engines the gateway itself began to stop (an unload, reload, eviction, TTL, shutdown): their
# exit says nothing of what they had read (lifecycle.discard adds each before its stop).
GATEWAY_STOPS: weakref.WeakSet[EngineHandle] = weakref.WeakSet()
_KILLED = (-signal.SIGKILL, 128 + signal.SIGKILL)  # a process, or a shell or container's code


def killed_unasked(handle: EngineHandle) -> bool:
    """The engine was killed outright by nothing of the gateway's: SIGKILL (the kernel's OOM
    killer, an operator's kill -9), or lost with its node or agent (Ray). Such a death, not the
    engine's own doing, is what resets the requests still unread in its sockets; an engine that
    exits or crashes of itself may have read the request that made it (a poison request)."""
    if handle in GATEWAY_STOPS:
        return False
    if handle.returncode is None:
        return getattr(handle, "lost_reason", None) is not None
    return handle.returncode in _KILLED


async def confirm_exit(lease: Lease, timeout_s: float = 2.0) -> bool:
    """The engine refused a connection or broke off an answer: wait (bounded) until its exit,
    if it is dying, has been seen, so that the next decision (and the slot this request frees)
    knows it is gone. Whether it was seen."""
    exited = True
    try:
        await asyncio.wait_for(asyncio.shield(lease.handle.wait()), timeout_s)
    except TimeoutError:
        exited = False
    await asyncio.sleep(0)  # let the exit watcher mark the model first
    return exited


class LeaseHold:
    """What `Scheduler.lease` returns: `async with` gives a lease and releases it at the end,
    whatever happens (a class, not a generator: this is the hot path)."""

    def __init__(
        self,
        acquire: Callable[[str], Awaitable[Lease]],
        release: Callable[[Lease], None],
        name: str,
    ) -> None:
        self.acquire, self.release, self.name = acquire, release, name
        self.lease: Lease | None = None
        self.released_later = False  # release_after_exit took the release over

    async def __aenter__(self) -> Lease:
        self.lease = await self.acquire(self.name)
        return self.lease

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.lease is not None
        if not self.released_later:
            self.release(self.lease)
