"""The steps a decision returns, for the driver to carry out; each says what and why."""

from __future__ import annotations

from dataclasses import dataclass, field

from vramgate.errors import GatewayError


@dataclass(frozen=True)
class Serve:
    """Ready with a free slot: relay now."""


@dataclass(frozen=True)
class Queue:
    """Ready but at max_concurrency: wait for a slot, handed over by a finishing request."""


@dataclass(frozen=True)
class Begin:
    """Not running: begin its start (then join it)."""

    name: str


@dataclass(frozen=True)
class Join:
    """A start is under way: wait for it and share its outcome (one engine, however many ask)."""


@dataclass(frozen=True)
class Start:
    """Room is there: start now on these GPUs (none without GPU accounting)."""

    gpus: tuple[int, ...] = ()
    # Why there (the decision log): fits now, or fits once others made way.
    why: str = field(default="", compare=False)
    # On a cluster: the node whose RAM an engine on the CPU was placed in ("": the runtime's
    # choice, or the node of its GPUs).
    node: str = ""


@dataclass(frozen=True)
class Stop:
    name: str
    reason: str  # lru, discovery, oom, ttl, reload (metrics and events use it)
    why: str = ""
    for_: str = ""  # the start it makes room for, if any


@dataclass(frozen=True)
class Sleep:
    """Put an idle engine to sleep: its GPU memory is freed, its process (and, at level 1, its
    weights in host RAM) stays; the next request wakes it."""

    name: str
    reason: str  # lru (room for a start), sleep_after (idle)
    why: str = ""
    for_: str = ""


@dataclass(frozen=True)
class Drain:
    """A busy engine must make way: it takes no new requests until it is idle and stopped."""

    name: str
    for_: str  # the model it makes way for, or "reload"


@dataclass(frozen=True)
class Wait:
    """Nothing to do now: wait for a change (a start, a stop, a request's end); decide again."""

    why: str


@dataclass(frozen=True)
class Refuse:
    error: GatewayError


@dataclass(frozen=True)
class Forget:
    """A reload removed it and its engine is gone: drop it."""

    name: str


@dataclass(frozen=True)
class Replace:
    """A reload changed it and no engine runs: its next start uses the new definition."""

    name: str


Step = (
    Serve | Queue | Begin | Join | Start | Stop | Sleep | Drain | Wait | Refuse | Forget | Replace
)
