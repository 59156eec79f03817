"""Hypothesis strategies for the translations' property tests: requests drawn from each client
API's schema and then mistyped at any depth, and engine streams drawn from OpenAI's chunk grammar
(interleaved tool calls, reasoning, empty deltas, usage-only chunks, errors) as SSE bytes; plus
the checks of what comes out against the SDKs' own types."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk
from openai.types.chat.completion_create_params import CompletionCreateParams
from openai.types.completion_create_params import (
    CompletionCreateParams as TextCompletionCreateParams,
)
from openai.types.embedding_create_params import EmbeddingCreateParams
from pydantic import TypeAdapter

# A few hundred examples per property in CI, derandomized (the same on every run); more by hand:
# VRAMGATE_HYPOTHESIS_EXAMPLES=5000 python -m pytest tests/unit/test_translation_properties.py
# draws at random (a failure prints the seed; `--hypothesis-seed=N` repeats it).
_BY_HAND = os.environ.get("VRAMGATE_HYPOTHESIS_EXAMPLES")
SETTINGS = settings(
    max_examples=int(_BY_HAND or 200),
    deadline=None,
    derandomize=_BY_HAND is None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- JSON values and mistyping -------------------------------------------------------------------

TEXT = st.text(max_size=12)
NAMES = st.text(alphabet="abcdefghij_", min_size=1, max_size=8)
SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | TEXT
SCALARS |= st.floats(allow_nan=False, allow_infinity=False)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


def mistypings(data: st.DataObject, value: Any) -> list[Any]:
    """`value` itself, then for every node of its tree (every depth, itself included) a copy
    where that node is replaced by a drawn JSON value of any type or, in an object, dropped."""
    return [value] + [_replaced(data, value, path) for path in _paths(value)]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Any:
    yield prefix
    if isinstance(value, dict | list):
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            yield from _paths(item, (*prefix, key))


def _replaced(data: st.DataObject, value: Any, path: tuple[Any, ...]) -> Any:
    if not path:
        return data.draw(JSON, "instead")
    copy: Any = dict(value) if isinstance(value, dict) else list(value)
    key = path[0]
    if len(path) == 1 and isinstance(copy, dict) and data.draw(st.booleans(), "drop"):
        del copy[key]
    else:
        copy[key] = _replaced(data, value[key], path[1:])
    return copy


# -- requests drawn from each API's schema --------------------------------------------------------

_IMAGE_SOURCE = st.fixed_dictionaries(
    {"type": st.just("base64"), "media_type": st.just("image/png"), "data": st.just("iVBORw0=")}
) | st.fixed_dictionaries({"type": st.just("url"), "url": st.just("https://x.test/a.png")})
_TEXT_BLOCK = st.fixed_dictionaries({"type": st.just("text"), "text": TEXT})
_ANTHROPIC_BLOCK = st.one_of(
    _TEXT_BLOCK,
    st.fixed_dictionaries({"type": st.just("image"), "source": _IMAGE_SOURCE}),
    st.fixed_dictionaries(
        {
            "type": st.just("tool_use"),
            "id": NAMES,
            "name": NAMES,
            "input": st.dictionaries(NAMES, JSON, max_size=2),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("tool_result"),
            "tool_use_id": NAMES,
            "content": TEXT | st.lists(_TEXT_BLOCK, max_size=2),
        },
        optional={"is_error": st.booleans()},
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("document"),
            "source": st.fixed_dictionaries({"type": st.just("text"), "data": TEXT}),
        }
    ),
    st.fixed_dictionaries({"type": st.just("thinking"), "thinking": TEXT, "signature": TEXT}),
    st.fixed_dictionaries({"type": st.just("server_tool_use"), "id": NAMES}),
)
_ANTHROPIC_MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system"]),
        "content": TEXT | st.lists(_ANTHROPIC_BLOCK, max_size=3),
    }
)
_ANTHROPIC_TOOL = st.fixed_dictionaries(
    {"name": NAMES},
    optional={
        "description": TEXT,
        "input_schema": st.just({"type": "object"}),
        "type": st.just("custom"),
    },
) | st.just({"type": "web_search_20250305", "name": "web_search"})
ANTHROPIC_REQUEST = st.fixed_dictionaries(
    {
        "model": NAMES,
        "max_tokens": st.integers(1, 2**40),
        "messages": st.lists(_ANTHROPIC_MESSAGE, min_size=1, max_size=3),
    },
    optional={
        "system": TEXT | st.lists(_TEXT_BLOCK, max_size=2),
        "stop_sequences": st.lists(TEXT, max_size=2),
        "tools": st.lists(_ANTHROPIC_TOOL, max_size=2),
        "tool_choice": st.fixed_dictionaries(
            {"type": st.sampled_from(["auto", "any", "tool", "none"])},
            optional={"name": NAMES, "disable_parallel_tool_use": st.booleans()},
        ),
        "temperature": st.floats(0, 1),
        "top_p": st.floats(0, 1),
        "top_k": st.integers(1, 100),
        "stream": st.booleans(),
        "metadata": st.just({"user_id": "u"}),
        "thinking": st.just({"type": "enabled", "budget_tokens": 1024}),
    },
)

_OLLAMA_CALL = st.fixed_dictionaries(
    {
        "function": st.fixed_dictionaries(
            {"name": NAMES, "arguments": st.dictionaries(NAMES, JSON, max_size=2)}
        )
    }
)
_OLLAMA_MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "tool"]), "content": TEXT},
        optional={"images": st.lists(st.just("iVBORw0KGgo="), max_size=1)},
    ),
    st.fixed_dictionaries(
        {"role": st.just("assistant"), "content": TEXT},
        optional={"tool_calls": st.lists(_OLLAMA_CALL, max_size=2), "thinking": TEXT},
    ),
)
_OLLAMA_OPTIONS = st.fixed_dictionaries(
    {},
    optional={"temperature": st.floats(0, 2), "top_k": st.integers(1, 100),
              "seed": st.integers(0, 2**31), "num_predict": st.integers(-2, 4096),
              "stop": TEXT | st.lists(TEXT, max_size=2), "mirostat": st.integers(0, 2)},
)  # fmt: skip
_OLLAMA_TOOL = st.fixed_dictionaries(
    {"type": st.just("function"),
     "function": st.fixed_dictionaries(
         {"name": NAMES}, optional={"description": TEXT,
                                    "parameters": st.just({"type": "object"})})}
)  # fmt: skip
_OLLAMA_COMMON = {
    "options": _OLLAMA_OPTIONS,
    "stream": st.booleans(),
    "format": st.just("json") | st.just({"type": "object"}) | st.just(""),
    "think": st.booleans(),
}
OLLAMA_CHAT = st.fixed_dictionaries(
    {"model": NAMES, "messages": st.lists(_OLLAMA_MESSAGE, max_size=3)},
    optional={**_OLLAMA_COMMON, "tools": st.lists(_OLLAMA_TOOL, max_size=2)},
)
OLLAMA_GENERATE = st.fixed_dictionaries(
    {"model": NAMES, "prompt": TEXT},
    optional={**_OLLAMA_COMMON, "system": TEXT, "suffix": TEXT, "raw": st.booleans(),
              "images": st.lists(st.just("iVBORw0KGgo="), max_size=1)},
)  # fmt: skip
OLLAMA_EMBED = st.fixed_dictionaries(
    {"model": NAMES, "input": TEXT | st.lists(TEXT, min_size=1, max_size=3)},
    optional={"dimensions": st.integers(1, 64), "truncate": st.booleans()},
)

# -- checks of a translated request against OpenAI's types ----------------------------------------

_CHAT = TypeAdapter(CompletionCreateParams)
_TEXT = TypeAdapter(TextCompletionCreateParams)
_EMBED = TypeAdapter(EmbeddingCreateParams)


def _consume(value: Any) -> Any:
    """pydantic checks a TypedDict's Iterable fields lazily (a ValidatorIterator, which each
    item's check raises from as it is read): this reads them all."""
    if type(value).__name__ == "ValidatorIterator":
        return [_consume(v) for v in value]
    if isinstance(value, dict):
        return {k: _consume(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_consume(v) for v in value]
    return value


def check_openai_request(request: dict[str, Any], kind: str = "chat") -> None:
    """A request the engine can take: OpenAI's own types accept it, and it serialises."""
    orjson.dumps(request)
    adapter = {"chat": _CHAT, "completions": _TEXT, "embeddings": _EMBED}[kind]
    _consume(adapter.validate_python(request))


# -- engine streams drawn from OpenAI's chunk grammar ---------------------------------------------


@dataclass
class Script:
    """What an engine said, and the SSE bytes it said it in."""

    text: str = ""
    reasoning: str = ""
    reasoning_key: str = "reasoning_content"  # or `reasoning`, as vLLM names it from 0.10
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # id, name, args
    sent: list[str] = field(default_factory=list)  # each call's arguments as the engine wrote them
    finish: str | None = None
    usage: tuple[int, int] | None = None
    error: str | None = None  # an error chunk ended it (text etc. are what came before)
    raw: bytes = b""


_FINISH = st.sampled_from([None, "stop", "length", "tool_calls", "content_filter"])
_PIECE = st.text(min_size=1, max_size=6)


def _pieces(data: st.DataObject, whole: str, label: str) -> list[str]:
    """`whole` cut into pieces at drawn places."""
    if not whole:
        return []
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(whole) - 1)), max_size=4), label))
    bounds = [0, *(c for c in cuts if c < len(whole)), len(whole)]
    return [whole[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _frame(data: st.DataObject, payload: bytes) -> bytes:
    """One SSE event as engines frame it: `data: ` or `data:`, LF or CRLF, an event name."""
    prefix = data.draw(st.sampled_from([b"data: ", b"data:", b"event: chunk\ndata: "]), "frame")
    event = prefix + payload + b"\n\n"
    return event.replace(b"\n", b"\r\n") if data.draw(st.booleans(), "crlf") else event


def engine_stream(data: st.DataObject, *, with_error: bool = True) -> Script:
    """A chat completion stream: reasoning (under either key engines use), text and up to three
    tool calls whose deltas interleave in any order (each call's first delta before the first of
    the next call's, as engines number them; its name maybe in pieces, its id maybe on its second
    delta, its arguments maybe not JSON, as small models write them), empty deltas, other
    choices (index 1, which a one-answer API skips), a finish reason, a usage-only chunk, and
    maybe an error chunk anywhere."""
    script = Script()
    script.reasoning_key = data.draw(st.sampled_from(["reasoning_content", "reasoning"]), "key")
    script.reasoning = "".join(data.draw(st.lists(_PIECE, max_size=3), "reasoning"))
    script.text = "".join(data.draw(st.lists(_PIECE, max_size=3), "text"))
    drawn = []  # each call's name pieces, expected arguments, text sent and its pieces
    for i in range(data.draw(st.integers(0, 3), "calls")):
        arguments = data.draw(st.dictionaries(NAMES, JSON, max_size=3), "arguments")
        sent = orjson.dumps(arguments).decode()
        if data.draw(st.integers(0, 3), "not json") == 0:
            sent = sent[:-1]  # an object cut before its `}`: never JSON
            arguments = {"_raw": sent}  # what the non-streamed answer makes of it
        names = _pieces(data, data.draw(NAMES, "name"), f"n{i}")
        drawn.append((names, arguments, sent, _pieces(data, sent, f"a{i}")))
    streams: list[list[dict[str, Any]]] = [
        [{script.reasoning_key: p} for p in _pieces(data, script.reasoning, "r")],
        [{"content": p} for p in _pieces(data, script.text, "t")],
    ]
    labels = [0] * len(streams[0]) + [1] * len(streams[1])
    for i, (names, _, _, pieces) in enumerate(drawn):
        labels += [2 + i] * (len(names) + len(pieces))
    order = data.draw(st.permutations(labels), "order")
    # Engines number calls as they begin: the k-th call to begin is index k.
    begun = list(dict.fromkeys(k for k in order if k >= 2))
    for index, label in enumerate(begun):
        names, arguments, sent, pieces = drawn[label - 2]
        ident = f"call_{index}"
        script.calls.append((ident, "".join(names), arguments))
        script.sent.append(sent)
        calls = [{"index": index, "function": {"name": n}} for n in names]
        calls += [{"index": index, "function": {"arguments": p}} for p in pieces]
        calls[0]["function"]["arguments"] = calls[0]["function"].get("arguments", "")
        late = len(calls) > 1 and data.draw(st.booleans(), "id late")
        calls[1 if late else 0].update(id=ident, type="function")
        streams.append([{"tool_calls": [call]} for call in calls])
    relabel = {label: 2 + index for index, label in enumerate(begun)}
    order = [relabel.get(k, k) for k in order]
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    taken = [0] * len(streams)
    for k in order:
        deltas.append(streams[k][taken[k]])
        taken[k] += 1
        if data.draw(st.integers(0, 5), "empty") == 0:
            deltas.append(data.draw(st.sampled_from([{}, {"content": ""}, {"content": None}])))
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    choices = [[{"index": 0, "delta": d, "finish_reason": None}] for d in deltas]
    script.finish = data.draw(_FINISH, "finish")
    if script.finish is not None:
        choices.append([{"index": 0, "delta": {}, "finish_reason": script.finish}])
    for both in choices:
        if data.draw(st.integers(0, 3), "other choice") == 0:
            other = {"index": 1, "delta": data.draw(_OTHER_DELTA), "finish_reason": "length"}
            both.insert(data.draw(st.integers(0, 1), "other first"), other)
    chunks = [{**base, "choices": both} for both in choices]
    if data.draw(st.booleans(), "usage"):
        script.usage = (data.draw(st.integers(0, 10**6)), data.draw(st.integers(0, 10**6)))
        usage = {"prompt_tokens": script.usage[0], "completion_tokens": script.usage[1],
                 "total_tokens": sum(script.usage)}  # fmt: skip
        chunks.append({**base, "choices": [], "usage": usage})
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)  # the grammar is OpenAI's
    events = [_frame(data, orjson.dumps(c)) for c in chunks]
    if with_error and data.draw(st.integers(0, 4), "error") == 0:
        at = data.draw(st.integers(0, len(events)), "error at")
        script.error = data.draw(st.text(min_size=1, max_size=10), "message")
        error = orjson.dumps({"error": {"message": script.error, "type": "server_error"}})
        events = [*events[:at], _frame(data, error), *events[at:]]
    if data.draw(st.booleans(), "comment"):
        events.insert(data.draw(st.integers(0, len(events))), b": keep-alive\n\n")
    if data.draw(st.booleans(), "done"):
        events.append(_frame(data, b"[DONE]"))
    script.raw = b"".join(events)
    return script


# A second choice's delta (n > 1): none of it may reach a one-answer API's stream.
_OTHER_CALL = {"index": 0, "id": "other", "type": "function",
               "function": {"name": "other", "arguments": "{}"}}  # fmt: skip
_OTHER_DELTA = st.sampled_from([
    {"content": "OTHER"}, {"reasoning_content": "OTHER"}, {"reasoning": "OTHER"},
    {"tool_calls": [_OTHER_CALL]},
])  # fmt: skip


def split(data: st.DataObject, raw: bytes) -> list[bytes]:
    """`raw` cut at drawn places (any byte: inside a CRLF, a UTF-8 character, a field name)."""
    if len(raw) < 2:
        return [raw]
    cuts = sorted(data.draw(st.sets(st.integers(1, len(raw) - 1), max_size=12), "cuts"))
    bounds = [0, *cuts, len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(bounds)]
