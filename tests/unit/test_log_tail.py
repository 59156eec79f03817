"""The last lines of an engine's log, read from its end."""

from vramgate.api.admin import _tail


def test_tail_reads_the_last_lines_of_a_long_log(tmp_path):
    log = tmp_path / "m.log"
    log.write_text("".join(f"line {i}\n" for i in range(100_000)))  # ~1 MiB: many blocks
    assert _tail(log, 3) == ["line 99997", "line 99998", "line 99999"]
    every = _tail(log, 100_000)
    assert len(every) == 100_000 and every[0] == "line 0"


def test_tail_of_a_short_or_missing_log(tmp_path):
    log = tmp_path / "m.log"
    log.write_text("a\nb")  # no newline at the end
    assert _tail(log, 5) == ["a", "b"]
    assert _tail(tmp_path / "missing.log", 5) == []
