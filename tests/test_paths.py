"""The fingerprint that keys a cached result (benchmarks' intermediate results, a follower's calibration) by the
settings and code that made it."""

from __future__ import annotations

import shutil

from alambic.paths import fingerprint


def test_a_fingerprint_changes_with_the_settings_and_the_code_and_not_with_where_the_code_lies(tmp_path):
    code = tmp_path / "a" / "pkg"
    code.mkdir(parents=True)
    (code / "train.py").write_text("STEPS = 1\n")
    first = fingerprint({"epochs": 2}, code)
    shutil.copytree(code, tmp_path / "b" / "pkg")
    assert fingerprint({"epochs": 2}, tmp_path / "b" / "pkg") == first
    assert fingerprint({"epochs": 1}, code) != first
    (code / "train.py").write_text("STEPS = 2\n")
    assert fingerprint({"epochs": 2}, code) != first
