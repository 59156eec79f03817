"""The gateway's Ray driver, in a child process of its own: `ray.init`, the node table, the
agents' actors and their calls. The serving process never imports Ray's core worker, so that
what Ray does to a driver does not end the gateway: a head that comes back as a new cluster (no
GCS fault tolerance: a new cluster id) makes Ray abort the driver (global_state_accessor.cc,
WrongClusterID), which cut every request in flight. Here the child ends; its calls fail with
DriverLost, the cluster takes its nodes for dead (their agents were the driver's actors, and
died with it) and starts a new child, which joins the head that answers now.

The child dies with the gateway (PR_SET_PDEATHSIG), and its actors with it, as a driver's
non-detached actors do: no agent, and so no engine, outlives the gateway.

Frames both ways on the child's stdin and stdout: a 4-byte length, then a pickle. Requests are
`(id, op, args)`, answers `(id, ok, value)`; an answer's value is the result, or the exception
raised (Ray's own, RayActorError among them, pickle).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
from typing import IO, Any

from ray.exceptions import RayActorError

from vramgate.runtimes.local import _die_with_parent

log = logging.getLogger("vramgate.cluster")
_LENGTH = struct.Struct("!I")


class DriverLost(RayActorError):
    """The driver process ended: every agent it held died with it."""

    def __init__(self, why: str = "the Ray driver process ended") -> None:
        super().__init__(error_msg=why)
        self.why = why

    def __str__(self) -> str:
        return self.why

    def __reduce__(self) -> tuple[Any, ...]:
        return (DriverLost, (self.why,))


def _write(stream: IO[bytes], lock: threading.Lock, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    with lock:
        stream.write(_LENGTH.pack(len(data)) + data)
        stream.flush()


def _read(stream: IO[bytes]) -> Any | None:
    """The next frame, or None at EOF."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


class Driver:
    """The gateway's end: requests as concurrent futures (Ray's own refs are awaited so too)."""

    def __init__(self, env: dict[str, str]) -> None:
        # From the event loop's thread: PDEATHSIG fires when the thread that started the
        # child ends, and the loop's thread lives as long as the gateway.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vramgate.runtimes.ray_driver"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **env},
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        self._ids = itertools.count(1)
        self._keys = itertools.count(1)
        self._pending: dict[int, concurrent.futures.Future[Any]] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.ended: str | None = None  # why, once the child has ended
        self._reader = threading.Thread(target=self._answers, daemon=True, name="ray-driver")
        self._reader.start()

    def request(self, op: str, *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self.ended is not None:
                future.set_exception(DriverLost(self.ended))
                return future
            request_id = next(self._ids)
            self._pending[request_id] = future
        try:
            assert self.proc.stdin is not None
            _write(self.proc.stdin, self._write_lock, (request_id, op, args))
        except (OSError, ValueError):  # the child is gone: its reader fails the rest
            with self._lock:
                self._pending.pop(request_id, None)
            future.set_exception(DriverLost(self.ended or "the Ray driver process ended"))
        return future

    def agent(self, node_id: str, name: str, gateway: str) -> AgentHandle:
        """An agent actor on that node; its handle may be called at once (the child takes
        requests in order)."""
        key = next(self._keys)
        self.request("agent", key, node_id, name, gateway)
        return AgentHandle(self, key)

    def _answers(self) -> None:
        assert self.proc.stdout is not None
        try:
            while (message := _read(self.proc.stdout)) is not None:
                request_id, ok, value = message
                with self._lock:
                    future = self._pending.pop(request_id, None)
                if future is not None:
                    _settle(future, ok, value)
        except Exception as exc:  # a frame that does not unpickle: the child is not sane
            log.warning("the Ray driver's answer could not be read: %r", exc)
            with contextlib.suppress(OSError):
                self.proc.kill()
        code = self.proc.wait()
        why = f"the Ray driver process ended (exit {code})"
        with self._lock:
            self.ended = why
            pending, self._pending = self._pending, {}
        if pending:
            log.warning("%s: %d calls in flight fail", why, len(pending))
        for future in pending.values():
            _settle(future, False, DriverLost(why))

    def kill(self) -> None:
        """Ends a driver that stopped answering (its agents die with it); its reader then
        fails what was in flight and `ended` says why."""
        with contextlib.suppress(OSError):
            self.proc.kill()

    def close(self, timeout_s: float = 10.0) -> None:
        """Ends the child (its actors die with it); blocking, bounded."""
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)


def _settle(future: concurrent.futures.Future[Any], ok: bool, value: Any) -> None:
    """Its answer, unless the waiter gave up on it (a timeout cancels it, from its thread)."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class AgentHandle:
    """An agent as Ray's actor handle reads: `handle.method.remote(*args).future()`."""

    def __init__(self, driver: Driver, key: int) -> None:
        self.driver, self.key = driver, key

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("_"):
            raise AttributeError(method)
        return _Method(self, method)


class _Method:
    def __init__(self, handle: AgentHandle, name: str) -> None:
        self.handle, self.name = handle, name

    def remote(self, *args: Any) -> Ref:
        return Ref(self.handle.driver.request("call", self.handle.key, self.name, args))


class Ref:
    """A call's answer to come. Each `future()` is a new one, as a Ray ObjectRef's is: a waiter
    that gives up (a timeout, a cancelled start) cancels its own, never the answer that another
    waits on (a cancelled spawn's clean-up awaits the same call's end)."""

    def __init__(self, future: concurrent.futures.Future[Any]) -> None:
        self._future = future

    def future(self) -> concurrent.futures.Future[Any]:
        mine: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def copy(answer: concurrent.futures.Future[Any]) -> None:
            if answer.cancelled():
                mine.cancel()
            elif (exc := answer.exception()) is not None:
                _settle(mine, False, exc)
            else:
                _settle(mine, True, answer.result())

        self._future.add_done_callback(copy)
        return mine


# -- the child ---------------------------------------------------------------------------------


def _serve() -> None:
    """The child: Ray's driver, answering the gateway's requests until its stdin closes."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from vramgate.runtimes.ray_agent import NodeAgent

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # Ray's prints must not land in the frames
    lock = threading.Lock()
    agents: dict[int, Any] = {}
    creating: dict[int, threading.Event] = {}  # set once its actor exists (or failed)
    failed: dict[int, BaseException] = {}

    def reply(request_id: int, ok: bool, value: Any) -> None:
        candidates = [value]
        if not ok:
            # What does not pickle (Ray's RayTaskError is a class made at run time, its
            # cause's subclass): the cause where it has one, else what it says.
            cause = getattr(value, "cause", None)
            if isinstance(cause, BaseException):
                candidates.append(cause)
            candidates.append(RuntimeError(str(value)))
        for candidate in candidates:
            try:
                pickle.dumps(candidate)
            except Exception:
                continue
            _write(stdout, lock, (request_id, ok, candidate))
            return
        _write(
            stdout,
            lock,
            (
                request_id,
                False,
                RuntimeError(f"an answer that does not pickle: {type(value).__name__}"),
            ),
        )

    def blocking(request_id: int, work: Any) -> None:
        """Ops that wait on the head run in a thread each: a head that is down holds them,
        never the agents' calls."""

        def run() -> None:
            try:
                reply(request_id, True, work())
            except BaseException as exc:
                reply(request_id, False, exc)

        threading.Thread(target=run, daemon=True).start()

    def init(address: str, namespace: str, loopback: bool) -> dict[str, str]:
        if loopback:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False
        ray.init(
            address=address, namespace=namespace, logging_level=logging.WARNING,
            log_to_driver=False, ignore_reinit_error=True, include_dashboard=False,
        )  # fmt: skip
        from ray._private import worker  # pyright: ignore[reportPrivateImportUsage]

        node: Any = worker.global_worker.node
        return {"node_ip": node.node_ip_address, "gcs": node.gcs_address}

    def new_agent(key: int, node_id: str, name: str, gateway: str) -> None:
        """In its own thread (a named actor is registered with the head, which may hang);
        calls to it wait for it there, never holding up the others' (or the ping)."""
        created = creating[key]
        try:
            agents[key] = make_agent(node_id, name, gateway)
        except BaseException as exc:
            failed[key] = exc
            raise
        finally:
            created.set()

    def make_agent(node_id: str, name: str, gateway: str) -> Any:
        return (
            ray.remote(NodeAgent)
            .options(
                # soft=False: on that node or nowhere (Ray listed it alive); every wait on it
                # is bounded by the gateway, so a node that dies meanwhile costs a timeout.
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                num_cpus=0, max_restarts=0, max_concurrency=1000, name=name,
                get_if_exists=False,
            )
            .remote(gateway)
        )  # fmt: skip

    def submit(request_id: int, key: int, method: str, call_args: tuple[Any, ...]) -> None:
        try:
            if key in failed:
                raise RuntimeError(f"the agent was not created: {failed[key]!r}")
            ref = getattr(agents[key], method).remote(*call_args)
        except BaseException as exc:
            reply(request_id, False, exc)
            return
        ref.future().add_done_callback(lambda f, i=request_id: done(i, f))

    def done(request_id: int, future: concurrent.futures.Future[Any]) -> None:
        try:
            reply(request_id, True, future.result())
        except BaseException as exc:
            reply(request_id, False, exc)

    while (message := _read(stdin)) is not None:
        request_id, op, args = message
        try:
            if op == "call":
                created = creating.get(args[0])
                if created is not None and not created.is_set():  # waits in a thread of its own
                    threading.Thread(
                        target=lambda i=request_id, a=args, c=created: (c.wait(), submit(i, *a)),
                        daemon=True,
                    ).start()
                else:
                    submit(request_id, *args)
            elif op == "ping":  # the head is not asked: a hung driver is told from a lost head
                reply(request_id, True, None)
            elif op == "agent":
                creating[args[0]] = threading.Event()  # before any call to it is read
                blocking(request_id, lambda a=args: new_agent(*a))
            elif op == "init":
                blocking(request_id, lambda a=args: init(*a))
            elif op == "nodes":
                blocking(request_id, ray.nodes)
            elif op == "kill":
                handle = agents.pop(args[0], None)
                if handle is None:
                    reply(request_id, True, None)
                else:
                    blocking(request_id, lambda h=handle: ray.kill(h, no_restart=True))
            else:
                raise ValueError(f"unknown op {op!r}")
        except BaseException as exc:
            reply(request_id, False, exc)
    with contextlib.suppress(Exception):
        ray.shutdown()


if __name__ == "__main__":
    _serve()
