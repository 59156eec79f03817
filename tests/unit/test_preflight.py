"""preflight's pure parts: the flags a --help lists, and the flags of a model's args."""

from __future__ import annotations

from tests.integration.test_check_command import HELP
from vramgate.preflight import flags_of, parse_help


def test_parse_help_reads_flags_not_placeholders_or_descriptions():
    """Every flag of a line (comma separated), none of its placeholders or description."""
    flags = parse_help(HELP)
    assert {"-c", "--ctx-size", "-ngl", "--gpu-layers", "--n-gpu-layers", "--no-mmap"} <= flags
    assert not {"N", "-", "auto:", "-----", "mmap,", "print"} & flags


def test_flags_of_args_skips_values_and_splits_equals():
    """`--name=value` is `--name`; values, negative numbers among them, are not flags."""
    args = ["-c", "512", "--temp", "-1", "--ctx-size=4", "--lora", "a.gguf"]
    assert list(flags_of(args)) == [(0, "-c"), (2, "--temp"), (4, "--ctx-size"), (5, "--lora")]
