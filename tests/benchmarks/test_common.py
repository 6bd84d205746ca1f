"""What the benchmarks' results record: each figure's own date and machine, the CPU's AVX-512 and AMX flags."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import common


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    return tmp_path


def test_an_update_keeps_each_earlier_figures_own_machine(results, monkeypatch):
    monkeypatch.setattr(common, "machine", lambda: {"cpu": "first"})
    common.write_result("bench", {"speed": 1.0, "memory": 2.0})
    monkeypatch.setattr(common, "machine", lambda: {"cpu": "second"})
    common.write_result("bench", {"speed": 3.0}, update=True)
    written = json.loads((results / "bench.json").read_text())
    assert written["speed"] == 3.0 and written["memory"] == 2.0
    assert written["measured"]["speed"]["machine"] == {"cpu": "second"}
    assert written["measured"]["memory"]["machine"] == {"cpu": "first"}
    assert written["measured"]["memory"]["date"][:4].isdigit()


def test_an_update_of_a_file_from_before_dates_keeps_its_machine_and_claims_no_date(results, monkeypatch):
    (results / "bench.json").write_text(json.dumps({"machine": {"cpu": "old"}, "memory": 2.0}))
    monkeypatch.setattr(common, "machine", lambda: {"cpu": "new"})
    common.write_result("bench", {"speed": 3.0}, update=True)
    written = json.loads((results / "bench.json").read_text())
    assert "machine" not in written
    assert written["measured"]["memory"] == {"date": None, "machine": {"cpu": "old"}}
    assert written["measured"]["speed"]["machine"] == {"cpu": "new"}


def test_the_machine_names_the_cpus_avx512_and_amx_flags(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Test CPU\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    monkeypatch.setattr(common, "CPUINFO", cpuinfo)
    described = common.machine()
    assert described["cpu"] == "Test CPU"
    assert described["cpu_flags"] == ["amx_bf16", "amx_tile", "avx512_bf16", "avx512f"]
