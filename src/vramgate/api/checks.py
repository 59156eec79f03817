"""Type checks of the JSON the translations read: a client's at any depth, where each failure
is a 400 naming the field's path (`messages.2.content.0.text: must be a string`), never a
crash further on; and an engine's, where a field of the wrong type reads as absent."""

from __future__ import annotations

from types import UnionType
from typing import Any, TypeGuard

import orjson

from vramgate.api.guards import MAX_DURATION_S, check_depth
from vramgate.errors import BadRequest


def require(ok: bool, path: str, what: str) -> None:
    if not ok:
        raise BadRequest(f"{path}: {what}")


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_integer(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def optional(value: Any, kinds: type | UnionType | tuple[type, ...], path: str, what: str) -> None:
    """`value` is absent (None) or of `kinds`."""
    require(value is None or isinstance(value, kinds), path, what)


def strings(value: Any, path: str, sep: str = ".") -> list[str]:
    """A list of strings, or a 400 naming the first item that is not one."""
    require(isinstance(value, list), path, "must be a list of strings")
    for i, item in enumerate(value):
        require(isinstance(item, str), _item(path, i, sep), "must be a string")
    return value


def _item(path: str, i: int, sep: str) -> str:
    return f"{path}.{i}" if sep == "." else f"{path}[{i}]"


def reasoning_of(message: dict[str, Any]) -> str:
    """An engine's message's or delta's reasoning: `reasoning_content` (llama.cpp, vLLM,
    SGLang) or `reasoning` (vLLM from 0.10, OpenRouter)."""
    for key in ("reasoning_content", "reasoning"):
        if isinstance(value := message.get(key), str) and value:
            return value
    return ""


def count(value: Any) -> int:
    """A token count from an engine's usage (0 where it has none, or not a number)."""
    return value if is_integer(value) and value > 0 else 0


def nanoseconds(milliseconds: Any) -> int | None:
    """An engine's duration in milliseconds (llama-server's `timings`) as nanoseconds, or None
    where it is not a number, negative, or past MAX_DURATION_S (1e308 would be an infinite float,
    which int() cannot take)."""
    if not is_number(milliseconds) or not 0 <= milliseconds <= MAX_DURATION_S * 1e3:
        return None
    return int(milliseconds * 1e6)


def text(value: Any) -> str:
    """An engine's string field ("" where it is absent or not a string)."""
    return value if isinstance(value, str) else ""


def tool_arguments(value: Any) -> Any:
    """An engine's tool-call arguments (a JSON string in OpenAI's shape) as the object Ollama
    and Anthropic carry. What is not a JSON object is kept, not lost: text that is not JSON, or
    nests past guards.MAX_DEPTH (parsed, it would fail when the answer is written: orjson
    writes 255 levels), as `_raw`; another value as `_value`."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str | None):
        return {"_value": value}
    raw = value or "{}"
    try:
        parsed = orjson.loads(raw)
        check_depth(raw.encode(), parsed)
    except (orjson.JSONDecodeError, BadRequest):
        return {"_raw": value}
    return parsed if isinstance(parsed, dict) else {"_value": parsed}
