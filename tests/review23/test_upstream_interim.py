"""Review 23: an engine's interim (1xx) answer before its final one. RFC 9110 15.2: a client
MUST be able to parse one or more 1xx responses received before the final response, even if it
did not expect one. The upstream client takes the 1xx for the answer."""

from __future__ import annotations

import sys
from pathlib import Path

import openai
import pytest

from tests.conftest import gateway  # noqa: F401  (the fixture)
from tests.integration.scripted import LOOPS, Peer, Scripted, framed, run
from vramgate.upstream import UpstreamPool

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
    engine = Path(__file__).with_name("interim_engine.py")
    cmd = f"{sys.executable} {engine} --port ${{PORT}}"
    gw = gateway({"models": {"m": {"engine": "command", "cmd": cmd}}})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=20)
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "hello"
