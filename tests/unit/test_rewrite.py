"""Mending the answers of engines that stray from OpenAI's API (rewrite.AnswerFix)."""

from __future__ import annotations

import orjson

from vramgate.rewrite import AnswerFix


def event(payload: object) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def test_a_stream_split_anywhere_is_renamed_event_by_event_and_ends_with_done():
    events = [{"model": "/m@main", "choices": [{"delta": {"content": f"t{i}"}}]} for i in range(3)]
    stream = b"".join(event(e) for e in events)
    for cut in range(1, len(stream)):
        fix = AnswerFix("smol", add_done=True)
        out = fix.chunk(stream[:cut]) + fix.chunk(stream[cut:]) + fix.end()
        assert out.endswith(b"data: [DONE]\n\n")
        parsed = [orjson.loads(line[6:]) for line in out.split(b"\n\n") if line[6:7] == b"{"]
        assert [p["model"] for p in parsed] == ["smol"] * 3
        assert [p["choices"][0]["delta"]["content"] for p in parsed] == ["t0", "t1", "t2"]


def test_a_stream_that_sends_done_itself_gets_no_second_one():
    fix = AnswerFix("smol", add_done=True)
    out = fix.chunk(event({"model": "x"}) + b"data: [DONE]\n\n") + fix.end()
    assert out.count(b"[DONE]") == 1


def test_responses_streams_get_no_done_and_nested_names_are_mended():
    fix = AnswerFix("smol", add_done=False)
    out = fix.chunk(event({"type": "response.created", "response": {"model": "/m@main"}}))
    out += fix.end()
    assert orjson.loads(out[6:])["response"]["model"] == "smol" and b"[DONE]" not in out


def test_a_whole_answer_is_renamed():
    fix = AnswerFix("smol", add_done=True)
    _, kind, body = fix.whole(200, b"application/json", orjson.dumps({"model": "/m@main", "id": 1}))
    assert kind == b"application/json" and orjson.loads(body) == {"model": "smol", "id": 1}


def test_a_stream_sent_where_json_was_asked_becomes_the_final_response():
    stream = event({"type": "response.created", "response": {"status": "queued"}})
    final = {"status": "completed", "model": "/m@main", "output": []}
    stream += event({"type": "response.completed", "response": final})
    _, kind, body = AnswerFix("smol", add_done=False).whole(200, b"text/event-stream", stream)
    assert kind == b"application/json"
    assert orjson.loads(body) == {**final, "model": "smol"}


def test_errors_take_openai_shape():
    fix = AnswerFix("smol", add_done=True)
    _, _, body = fix.whole(400, b"application/json", b'{"detail": "Server is pinned to x"}')
    error = orjson.loads(body)["error"]
    assert error["message"] == "the engine answered 400: Server is pinned to x"
    assert error["type"] == "invalid_request_error" and error["code"] == "engine_error"
    _, _, body = fix.whole(500, b"text/plain", b"Internal Server Error")
    assert orjson.loads(body)["error"]["type"] == "server_error"
    _, _, body = fix.whole(422, b"application/json", b'{"detail": [{"loc": ["body", "x"]}]}')
    assert '"loc"' in orjson.loads(body)["error"]["message"]
    already = b'{"error": {"message": "m", "type": "t", "code": "c", "param": null}}'
    assert orjson.loads(fix.whole(404, b"application/json", already)[2]) == orjson.loads(already)


def test_a_stream_with_crlf_line_ends_is_split_into_its_events_at_any_cut():
    """Reproduced: a stream whose events end in CRLF (no LF LF) was held whole until its end."""
    stream = b"".join(event({"model": "/m", "n": i}).replace(b"\n", b"\r\n") for i in range(3))
    for cut in range(1, len(stream)):
        fix = AnswerFix("smol", add_done=True)
        first = fix.chunk(stream[:cut])
        out = first + fix.chunk(stream[cut:]) + fix.end()
        parsed = [orjson.loads(e[6:]) for e in out.split(b"\n\n") if e[6:7] == b"{"]
        assert [p["n"] for p in parsed] == [0, 1, 2] and {p["model"] for p in parsed} == {"smol"}
        if cut >= len(event({"model": "/m", "n": 0})) + 4:  # its first event is whole
            assert b'"n":0' in first


def test_an_event_that_never_ends_is_passed_on_past_the_limit_in_linear_time():
    fix = AnswerFix("smol", add_done=False)
    piece = b"x" * 65536
    passed = b"".join(fix.chunk(piece) for _ in range(200))  # 13 MiB with no blank line
    assert len(passed) + len(fix.end()) >= 200 * len(piece) - 2
