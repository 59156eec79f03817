"""An engine's interim (1xx) answers before its final one are skipped (RFC 9110 15.2: a client
MUST be able to parse one or more 1xx responses received before the final response, even if it
did not expect one); endless ones are held to the head limit."""

from __future__ import annotations

import sys
from pathlib import Path

import openai
import pytest

from tests.conftest import gateway  # noqa: F401  (the fixture)
from tests.integration.scripted import LOOPS, Peer, Scripted, framed, run
from vramgate.upstream import _HEAD_LIMIT, Broken, UpstreamPool

OK = framed(b'{"ok": true}', "length")


INTERIM = [
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n",
]


@pytest.mark.parametrize("interim", INTERIM)
@pytest.mark.parametrize("loop", LOOPS)
def test_an_interim_answer_is_skipped_for_the_final_one(loop, interim):
    """The engine sends a 1xx, then its 200: the relay must hand on the 200 and its body."""

    def script(peer: Peer) -> None:
        while peer.read_request() is not None:
            peer.send([interim + OK])

    out: list[tuple[int, bytes]] = []

    async def main() -> None:
        pool = UpstreamPool(read_timeout_s=5)
        try:
            answer = await pool.post("127.0.0.1", engine.port, "/x", b"{}")
            body = await answer.read()
            answer.release()
            out.append((answer.status, body))
        finally:
            pool.close()

    with Scripted(script) as engine:
        run(loop, main)
    assert out == [(200, b'{"ok": true}')]


def test_a_client_of_the_gateway_gets_the_final_answer_not_the_interim_one(gateway):  # noqa: F811
    """The same through `vramgate serve` and the openai SDK: the client must get the 200."""
    engine = Path(__file__).with_name("interim_engine.py")  # a raw engine: 100, then 200
    cmd = f"{sys.executable} {engine} --port ${{PORT}}"
    gw = gateway({"models": {"m": {"engine": "command", "cmd": cmd}}})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=20)
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "hello"


@pytest.mark.parametrize("loop", LOOPS)
def test_endless_interim_answers_are_held_to_the_head_limit(loop):
    """An engine that sends 1xx answers for ever: Broken once their heads pass _HEAD_LIMIT."""
    line = b"HTTP/1.1 103 Early Hints\r\nLink: </" + b"a" * 1000 + b">\r\n\r\n"

    def script(peer: Peer) -> None:
        if peer.read_request() is None:
            return
        for _ in range(4 * _HEAD_LIMIT // len(line)):
            peer.send([line])

    out: list[object] = []

    async def main() -> None:
        pool = UpstreamPool(read_timeout_s=5)
        try:
            await pool.post("127.0.0.1", engine.port, "/x", b"{}")
        except Broken as exc:
            out.append(exc)
        finally:
            pool.close()

    with Scripted(script) as engine:
        run(loop, main)
    assert len(out) == 1 and "head" in str(out[0]), out
