"""The CI-sized part of the peer suite (bench/llama_server_suite.py): llama.cpp's own server tests
of its tokenizer, props, models and slots routes, each run against llama-server directly and
through vramgate; every one that passes directly passes through vramgate too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bench import llama_server_suite as suite

from tests.e2e.test_llama_server import BINARY, CHAT_GGUF, GGUF, _require_e2e

# (file, -k): a few minutes on two cores, both runs together.
SUBSET = (
    ("test_tokenize.py", ""),
    ("test_basic.py", "props or models or slots"),
    ("test_security.py", "correct_api_key"),
)


def test_llama_server_tests_pass_through_vramgate(tmp_path):
    """The subset's directly-passing tests all pass through the stand-in binary as well."""
    _require_e2e(("chat GGUF", CHAT_GGUF))
    work = tmp_path / "peer"
    work.mkdir()
    try:
        tests = suite.extract_tests(work)
    except Exception as exc:  # the sdist comes from PyPI where the build cache has none
        if os.environ.get("VRAMGATE_REQUIRE_E2E"):
            raise
        pytest.skip(f"llama.cpp's server tests are not at hand: {exc}")
    env = {"VRAMGATE_REAL_LLAMA_SERVER": BINARY, "VRAMGATE_DEFAULT_GGUF": GGUF,
           "VRAMGATE_CHAT_GGUF": CHAT_GGUF}  # fmt: skip
    binaries = {"direct": Path(BINARY), "vramgate": suite.standin_binary(work)}
    lost: list[str] = []
    passed = 0
    for test_file, k in SUBSET:
        found = {}
        for mode, binary in binaries.items():
            report = work / mode / f"{test_file}.xml"
            report.parent.mkdir(exist_ok=True)
            found[mode] = suite.run_file(tests, test_file, binary, report, k, 600, env)
        direct = {t for t, o in found["direct"].items() if o == "passed"}
        via = {t for t, o in found["vramgate"].items() if o == "passed"}
        passed += len(direct)
        lost += sorted(direct - via)
    assert passed >= 8, f"only {passed} tests passed directly: is the subset still there?"
    # llama-server's 401 says `authentication_error`, OpenAI's (and so the gateway's) does not.
    lost = [t for t in lost if "incorrect_api_key" not in t]
    assert not lost, f"pass directly but not through vramgate: {lost}"
