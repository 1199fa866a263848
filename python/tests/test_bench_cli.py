"""`python -m sonicmoe.bench` as a user runs it: the tiny config on the CPU,
one JSON line per impl, and flags it refuses by name."""

from __future__ import annotations

import json

import pytest

from conftest import needs_lib
from sonicmoe import bench


@needs_lib
def test_tiny_on_cpu_prints_one_json_line_per_impl(capsys):
    rc = bench.main(["--configs", "tiny", "--device", "cpu", "--impls", "sonicmoe,torch",
                     "--warmup", "0", "--iters", "1"])
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [r["impl"] for r in lines] == ["sonicmoe", "torch"]
    for r in lines:
        assert r["config"] == "tiny" and r["fwd_ms"] > 0 and r["bwd_ms"] > 0
        assert r["max_rel_err"] < 2e-2


@pytest.mark.parametrize("flag,value", [("--heat-ms", "-1"), ("--iters", "0")])
def test_bad_timing_flags_are_refused_by_name(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--configs", "tiny", "--device", "cpu", flag, value])
    assert e.value.code == 2
    assert flag.split("-")[-1] in capsys.readouterr().err
