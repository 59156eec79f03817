"""Hand mutations of the relay and the translations (issue 23), each applied alone and its tests
run: CAUGHT where the tests fail. `python scripts/mutations.py [INDEX ...]` from the checkout
root, with the test environment; every file is restored after each run."""

# ruff: noqa: E501  (each mutation is the exact source text it replaces)
import pathlib
import subprocess
import sys

M = [
    (
        "retry a request after a reset with no FIN (a reset alone taken for 'never read')",
        "src/vramgate/upstream.py",
        "        if self.got_bytes or self.eof_at is None:\n            return False\n        if self.lost:",
        "        if self.got_bytes:\n            return False\n        if self.lost:",
        "tests/integration/test_upstream_closes.py",
    ),
    (
        "a stream's connection reused",
        "src/vramgate/upstream.py",
        "            and not self.streamed  # the engine may close it as we write (the docstring)\n",
        "",
        "tests/integration/test_upstream_review.py",
    ),
    (
        "a 5xx answer's connection reused",
        "src/vramgate/upstream.py",
        "            and self.status < 500  # likewise (uvicorn closes after an app's unhandled error)\n",
        "",
        "tests/integration/test_upstream_review.py",
    ),
    (
        "reads never resumed after the 1 MiB pause",
        "src/vramgate/upstream.py",
        "            self.transport.resume_reading()",
        "            pass",
        "tests/integration/test_upstream_wire.py",
    ),
    (
        "an idle connection taken as quiet without looking",
        "src/vramgate/upstream.py",
        "        return not poller.poll(0)",
        "        return True",
        "tests/integration/test_upstream_review.py",
    ),
    (
        "an SSE event end split across two pieces missed (off by one)",
        "src/vramgate/sse.py",
        "        start = max(0, len(self.pending) - 1)",
        "        start = len(self.pending)",
        "tests/unit/test_sse_splitter.py",
    ),
    (
        "reasoning deltas dropped from the Anthropic stream",
        "src/vramgate/api/anthropic_stream.py",
        '        if thinking := reasoning_of(delta):\n            out += self._piece("thinking", thinking)\n',
        "",
        "tests/unit/test_anthropic_convert.py tests/unit/test_translation_properties.py",
    ),
    (
        "interleaved tool calls merged (index ignored)",
        "src/vramgate/api/anthropic_stream.py",
        '        position = delta.get("index", 0)\n',
        "        position = 0\n",
        "tests/unit/test_anthropic_convert.py tests/unit/test_translation_properties.py",
    ),
    (
        "thinking dropped from Ollama stream lines",
        "src/vramgate/api/ollama_stream.py",
        '            if thinking:\n                line["thinking"] = thinking\n',
        "",
        "tests/unit/test_ollama_convert.py tests/unit/test_translation_properties.py",
    ),
    (
        "Host allow-list off (DNS rebinding let in)",
        "src/vramgate/api/guards.py",
        "    if host is not None and not host_allowed(host, settings, machine):",
        "    if False:",
        "tests/unit/test_api_guards.py tests/integration/test_api_guards.py",
    ),
    (
        "durations unbounded",
        "src/vramgate/api/guards.py",
        "    if seconds < 0 or seconds > MAX_DURATION_S:",
        "    if seconds < 0:",
        "tests/unit/test_api_guards.py tests/integration/test_api_guards.py",
    ),
    (
        "unload through Ollama without the admin rule",
        "src/vramgate/api/common.py",
        "    access.require_admin()\n    await scheduler.unload(name)",
        "    await scheduler.unload(name)",
        "tests/integration/test_api_guards.py",
    ),
    (
        "depth check skipped",
        "src/vramgate/api/guards.py",
        '    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:\n        return\n',
        "    return\n",
        "tests/unit/test_api_guards.py tests/integration/test_api_guards.py",
    ),
    (
        "native Anthropic error events mid-stream passed as they came",
        "src/vramgate/api/anthropic.py",
        '        return b"".join(native_event(e) for e in events) + raw',
        "        return data",
        "tests/integration/test_translated_streams_gateway.py",
    ),
]
only = sys.argv[1:]
for i, (what, path, old, new, tests) in enumerate(M):
    if only and str(i) not in only:
        continue
    p = pathlib.Path(path)
    src = p.read_text()
    if src.count(old) != 1:
        print(f"{i}: SKIP (text not found once): {what}", flush=True)
        continue
    p.write_text(src.replace(old, new))
    try:
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly", *tests.split()],
            capture_output=True,
            text=True,
            timeout=900,
        )
        failed = [line for line in r.stdout.splitlines() if line.startswith("FAILED")]
        print(f"{i}: {'CAUGHT' if r.returncode else 'MISSED'}: {what} :: {failed[:1]}", flush=True)
    finally:
        p.write_text(src)
