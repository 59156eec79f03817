"""llama.cpp's own server tests as our peer suite: run directly against llama-server, then through
vramgate (bench/llama_server_standin.py standing in for the binary), and compared per file.

    python -m bench.llama_server_suite [--files test_basic.py,...] [-k EXPR] [--out FILE.json]

The tests come out of the pinned llama-cpp-python sdist (scripts/build-llama-server.sh's version;
its vendor/llama.cpp/tools/server/tests), patched as little as can be: their Hugging Face models
become our local GGUFs (VRAMGATE_CHAT_GGUF, SmolLM2, for the small chat and story models;
VRAMGATE_DEFAULT_GGUF, gemma, for the others), nothing is downloaded, and `wget` need not be
installed; header names are looked up case-insensitively (the gateway's HTTP server, uvicorn's,
sends them in lower case, as HTTP/2 must; the tests read them into a plain dict). Tests marked
slow (multi-GB models) are left out. A test counts where it passes directly; the ratio is how
many of those pass through vramgate too. Needs llama-server (VRAMGATE_ENGINES__LLAMACPP__BINARY)
and both GGUFs (scripts/setup.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from vramgate.runtimes.local import free_port

ROOT = Path(__file__).resolve().parent.parent
VERSION = os.environ.get("LLAMA_CPP_PYTHON_VERSION", "0.3.36")
TESTS_IN_SDIST = "vendor/llama.cpp/tools/server/tests/"
# Which local GGUF stands for which of the tests' Hugging Face models.
PEER_MODELS = '''"""vramgate's peer suite: local GGUFs stand in for the tests' HF models."""
import os

GEMMA_FOR = ("bert", "jina", "gemma", "rerank")


def localize(server):
    repo = server.model_hf_repo or server.model_file
    if repo is None:  # the router preset: no model
        return
    wants_gemma = any(word in repo.lower() for word in GEMMA_FOR)
    server.model_file = os.environ["VRAMGATE_DEFAULT_GGUF" if wants_gemma else "VRAMGATE_CHAT_GGUF"]
    server.model_hf_repo = server.model_hf_file = None
'''
PATCHES = (  # (file, text, replacement): each must match once
    ("utils.py", "import wget\n", "try:\n    import wget\nexcept ImportError:\n    wget = None\n"),
    (
        "utils.py",
        "        server_args = [\n",
        "        import peer_models; peer_models.localize(self)\n        server_args = [\n",
    ),
    (  # header names are case-insensitive (RFC 9110), as requests' own dict of them knows
        "utils.py",
        "        result.headers = dict(response.headers)\n",
        "        result.headers = response.headers\n",
    ),
    (
        "utils.py",
        '        """ Load all server presets to ensure model files are cached. """\n',
        '        """ Load all server presets to ensure model files are cached. """\n'
        "        return  # vramgate's peer suite: the models are local\n",
    ),
)


def sdist_path(work: Path) -> Path:
    """The sdist the build script downloaded, else one downloaded now (pip, no dependencies)."""
    cache = Path(os.environ.get("VRAMGATE_CACHE", Path.home() / ".cache/vramgate"))
    name = f"llama_cpp_python-{VERSION}.tar.gz"
    for candidate in (cache / f"build-{VERSION}" / name, work / name):
        if candidate.exists():
            return candidate
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
         f"llama-cpp-python=={VERSION}", "-d", str(work)],
        check=True,
    )  # fmt: skip
    return work / name


def extract_tests(work: Path) -> Path:
    """tools/server/tests of the sdist in `work`/tests, patched."""
    dest = work / "tests"
    stamp = repr((PATCHES, PEER_MODELS))
    if (dest / "peer_models.py").exists() and (dest / ".patched").read_text() == stamp:
        return dest  # patched already, the same way (a run may be using it)
    shutil.rmtree(dest, ignore_errors=True)
    with tarfile.open(sdist_path(work)) as tar:
        for member in tar.getmembers():
            _, _, inner = member.name.partition("/")
            if inner.startswith(TESTS_IN_SDIST) and member.isfile():
                target = dest / inner[len(TESTS_IN_SDIST) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                target.write_bytes(source.read())
    for name, text, replacement in PATCHES:
        path = dest / name
        content = path.read_text()
        assert content.count(text) == 1, f"patch does not apply to {name}: {text!r}"
        path.write_text(content.replace(text, replacement))
    (dest / "peer_models.py").write_text(PEER_MODELS)
    (dest / ".patched").write_text(stamp)
    return dest


def standin_binary(work: Path) -> Path:
    """An executable that llama.cpp's tests start as llama-server: vramgate, via the stand-in."""
    path = work / "bin" / "llama-server"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nexec {sys.executable} -m bench.llama_server_standin "$@"\n')
    path.chmod(0o755)
    return path


def run_file(
    tests: Path,
    test_file: str,
    binary: Path,
    report: Path,
    k: str = "",
    timeout_s: float = 1800,
    extra_env: dict[str, str] | None = None,
) -> dict[str, str]:
    """One test file's outcomes by test id: passed, failed, error or skipped."""
    env = {**os.environ, **(extra_env or {}), "LLAMA_SERVER_BIN_PATH": str(binary),
           "PORT": str(free_port()), "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}  # fmt: skip
    argv = [sys.executable, "-m", "pytest", f"unit/{test_file}", "-q", "-m", "not slow",
            "-p", "no:cacheprovider", f"--junitxml={report}"]  # fmt: skip
    if k:
        argv += ["-k", k]
    log = report.with_suffix(".log")
    with log.open("wb") as out:
        try:
            subprocess.run(argv, cwd=tests, env=env, stdout=out, stderr=subprocess.STDOUT,
                           timeout=timeout_s)  # fmt: skip
        except subprocess.TimeoutExpired:
            out.write(b"\n[suite] timed out\n")
    return outcomes(report)


def outcomes(report: Path) -> dict[str, str]:
    if not report.exists():
        return {}
    found: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if tag in kinds:
                outcome = {"failure": "failed"}.get(tag, tag)
        found[test_id] = outcome
    return found


def table(results: dict[str, dict[str, dict[str, str]]]) -> tuple[list[str], dict]:
    """The per-file table's lines and the totals."""
    lines = ["| file | pass directly | of those, pass through vramgate | ratio |",
             "|---|---:|---:|---:|"]  # fmt: skip
    direct_total = both_total = 0
    differing: list[str] = []
    for test_file, modes in results.items():
        direct = {t for t, o in modes.get("direct", {}).items() if o == "passed"}
        via = {t for t, o in modes.get("vramgate", {}).items() if o == "passed"}
        both = direct & via
        differing += sorted(direct - via)
        direct_total += len(direct)
        both_total += len(both)
        ratio = f"{len(both) / len(direct):.0%}" if direct else "-"
        lines.append(f"| {test_file} | {len(direct)} | {len(both)} | {ratio} |")
    ratio = both_total / direct_total if direct_total else 0.0
    lines.append(f"| **all** | **{direct_total}** | **{both_total}** | **{ratio:.1%}** |")
    return lines, {"direct": direct_total, "both": both_total, "ratio": ratio,
                   "differing": differing}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--files", default="", help="Comma-separated test files (default: all).")
    p.add_argument("-k", default="", help="pytest -k expression, for both runs.")
    p.add_argument(
        "--modes",
        default="direct,vramgate",
        help="The runs to make now; the other's last reports (under --work) are compared.",
    )
    p.add_argument("--work", type=Path, default=ROOT / ".peer")
    p.add_argument("--file-timeout-s", type=float, default=1800)
    p.add_argument("--out", type=Path, default=None, help="Save the results as JSON.")
    args = p.parse_args()
    real = os.environ.get("VRAMGATE_ENGINES__LLAMACPP__BINARY") or shutil.which("llama-server")
    for what, value in (("llama-server", real), ("VRAMGATE_CHAT_GGUF", os.environ.get(
            "VRAMGATE_CHAT_GGUF")), ("VRAMGATE_DEFAULT_GGUF", os.environ.get(
            "VRAMGATE_DEFAULT_GGUF"))):  # fmt: skip
        if not value:
            sys.exit(f"needs {what} (source scripts/setup.sh's exports)")
    assert real is not None
    args.work.mkdir(parents=True, exist_ok=True)
    tests = extract_tests(args.work)
    files = [f for f in args.files.split(",") if f] or sorted(
        p.name for p in (tests / "unit").glob("test_*.py")
    )
    binaries = {"direct": Path(real), "vramgate": standin_binary(args.work)}
    extra = {"VRAMGATE_REAL_LLAMA_SERVER": real}
    results: dict[str, dict[str, dict[str, str]]] = {}
    started = time.monotonic()
    for test_file in files:
        for mode in binaries:
            report = args.work / "reports" / mode / f"{test_file}.xml"
            if mode not in args.modes.split(","):  # its last run's report, where there is one
                results.setdefault(test_file, {})[mode] = outcomes(report)
                continue
            report.parent.mkdir(parents=True, exist_ok=True)
            report.unlink(missing_ok=True)
            t0 = time.monotonic()
            found = run_file(
                tests, test_file, binaries[mode], report, args.k, args.file_timeout_s, extra
            )
            results.setdefault(test_file, {})[mode] = found
            passed = sum(o == "passed" for o in found.values())
            print(f"{test_file} {mode}: {passed}/{len(found)} passed in "
                  f"{time.monotonic() - t0:.0f} s", flush=True)  # fmt: skip
    lines, totals = table(results)
    print("\n".join(lines))
    print(f"{totals['both']} of {totals['direct']} directly-passing tests pass through vramgate "
          f"({totals['ratio']:.1%}) in {time.monotonic() - started:.0f} s")  # fmt: skip
    for test_id in totals["differing"]:
        print(f"  differs: {test_id}")
    if args.out:
        args.out.write_text(json.dumps({"results": results, "totals": totals}, indent=1))


if __name__ == "__main__":
    main()
