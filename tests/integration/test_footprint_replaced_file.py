"""Issue 24, defect 9 ("learned footprints go stale the same way"), a variant the fix leaves:
the key is computed anew at each measurement, from the file on disk *now*, not from the file
the running engine loaded. A file replaced at the same path while its engine runs gets the old
engine's measurements (its re-measurement after the first requests, or at a sleep) learned
under the new file's key, marked "measured": the new file is then placed by a footprint that
no load of it ever had."""

from __future__ import annotations

import json
import os

from tests.conftest import fake_cmd


def test_a_running_engines_measurement_is_not_learned_for_the_file_that_replaced_its_own(
    gateway, tmp_path
):
    model_file = tmp_path / "m.gguf"
    model_file.write_bytes(b"x" * 100)
    gw = gateway({
        "gpus": {"simulate_mib": [10_000], "reserve_mib": 512},
        "models": {"m": {"engine": "command", "source": str(model_file),
                         "cmd": fake_cmd("--vram-mib", "3000")}},
    })  # fmt: skip
    ask = lambda: gw.client.completions.create(model="m", prompt="x", max_tokens=1)  # noqa: E731
    ask()
    assert gw.model("m")["footprint_source"] == "measured"
    # Another file (a bigger quantization) written over it while the old engine still runs.
    model_file.write_bytes(b"y" * 5000)
    os.utime(model_file, ns=(2_000_000_000_000_000_000, 2_000_000_000_000_000_000))
    assert gw.model("m")["footprint_source"] != "measured"  # the new file: never loaded
    ask()  # the old engine's re-measurement after its first requests
    ask()
    saved = json.loads((gw.state_dir / "footprints.json").read_text())
    m = gw.model("m")
    # The new file was never loaded: nothing may be "measured" for it.
    assert m["footprint_source"] != "measured", (m["footprint_mib"], m["footprint_source"], saved)


def test_a_cpu_engines_host_measurement_is_not_learned_for_the_file_that_replaced_its_own(
    gateway, tmp_path
):
    """The same in host RAM: a CPU engine's re-measurements go under the key of the file it
    loaded (host_key with the spawn's footprint_key), not the new file's."""
    model_file = tmp_path / "m.gguf"
    model_file.write_bytes(b"x" * 100)
    gw = gateway({
        "host_ram_mib": 4000,
        "models": {"m": {"engine": "command", "source": str(model_file), "device": "cpu",
                         "cmd": fake_cmd("--ram-mib", "200")}},
    })  # fmt: skip
    ask = lambda: gw.client.completions.create(model="m", prompt="x", max_tokens=1)  # noqa: E731
    ask()
    assert gw.model("m")["ram_source"] == "measured"
    model_file.write_bytes(b"y" * 5000)
    os.utime(model_file, ns=(2_000_000_000_000_000_000, 2_000_000_000_000_000_000))
    assert gw.model("m")["ram_source"] != "measured"
    ask()
    ask()
    m = gw.model("m")
    assert m["ram_source"] != "measured", (m["ram_mib"], m["ram_source"])
