"""The serving benchmark keeps one run per kind of CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_serve


@pytest.mark.parametrize(
    ("flags", "kind"),
    [
        ({"avx2", "avx512f", "avx512_bf16"}, "cpu_with_bf16"),
        ({"avx2", "amx_bf16"}, "cpu_with_bf16"),
        ({"avx2", "avx512f", "avx512bw"}, "cpu_with_avx512"),
        ({"avx2", "f16c"}, "cpu_without_avx512"),
    ],
)
def test_the_cpu_kind_follows_its_flags(flags, kind):
    assert bench_serve.cpu_kind(frozenset(flags)) == kind


def test_a_run_on_one_kind_of_cpu_keeps_the_other_kind_s(tmp_path, monkeypatch):
    for kind, tok_s in (("cpu_without_avx512", 1.0), ("cpu_with_bf16", 2.0), ("cpu_with_bf16", 3.0)):
        monkeypatch.setattr(bench_serve, "cpu_kind", lambda kind=kind: kind)
        bench_serve.record({"tok_s": tok_s}, tmp_path)
    saved = json.loads((tmp_path / "serve.json").read_text())
    assert saved["cpu_without_avx512"] == {"tok_s": 1.0}
    assert saved["cpu_with_bf16"] == {"tok_s": 3.0}
    assert set(saved["measured"]) == {"cpu_without_avx512", "cpu_with_bf16"}


def test_no_prompt_is_sent_twice_to_a_server():
    prompts = [[{"role": "user", "content": str(i)}] for i in range(3)]
    fresh = bench_serve.FreshPrompts(prompts)
    assert [fresh.take() for _ in prompts] == prompts
    with pytest.raises(SystemExit, match="All 3 prompts were sent"):
        fresh.take()


def test_kgw_s_slowdown_is_paired_round_by_round():
    # the machine drifts between rounds (100 -> 120 -> 90 tok/s) while KGW costs 4% in each: the pairs see 4% alone
    plain = [{"streamed_16": {"tok_s": t}} for t in (100.0, 120.0, 90.0)]
    marked = [{"streamed_16": {"tok_s": 0.96 * t}} for t in (100.0, 120.0, 90.0)]
    steady = bench_serve.paired_by_round(plain, marked, ["streamed_16"], bench_serve.slowdown)["streamed_16"]
    assert steady["by_round"] == pytest.approx([0.04] * 3) and steady["ci95"] == pytest.approx([0.04, 0.04])
    two = bench_serve.paired_by_round(
        plain[:2], [{"streamed_16": {"tok_s": t}} for t in (100.0, 108.0)], ["streamed_16"], bench_serve.slowdown
    )
    # slowdowns 0 and 0.1: mean 0.05, and with one degree of freedom t = 12.706 times stdev / sqrt(2)
    assert two["streamed_16"]["mean"] == pytest.approx(0.05)
    assert two["streamed_16"]["ci95"] == pytest.approx([0.05 - 0.6353, 0.05 + 0.6353], abs=1e-3)


def test_a_block_the_host_slowed_moves_the_mean_but_not_the_median():
    # twelve pairs at 2% (10% tok/s drift between them), but the host halved one marked block's speed
    plain = [{"streamed_1": {"tok_s": 100.0 + 10 * (n % 2)}} for n in range(12)]
    marked = [{"streamed_1": {"tok_s": 0.98 * p["streamed_1"]["tok_s"]}} for p in plain]
    marked[4]["streamed_1"]["tok_s"] = 50.0
    paired = bench_serve.paired_by_round(plain, marked, ["streamed_1"], bench_serve.slowdown)["streamed_1"]
    assert paired["mean"] == pytest.approx(0.02 + 0.48 / 12)
    assert paired["median"] == pytest.approx(0.02) and paired["median_ci95"] == pytest.approx([0.02, 0.02])


@pytest.mark.parametrize(("count", "ranks"), [(5, None), (6, (1, 6)), (12, (3, 10)), (24, (7, 18))])
def test_the_median_s_interval_is_the_order_statistics_that_cover_it(count, ranks):
    # 1 - 2 P(Binomial(n, 1/2) <= k - 1) >= 95% for the k-th smallest and largest: k = 1 at n = 6, 3 at 12, 7 at 24
    values = [float(v) for v in range(count, 0, -1)]
    assert bench_serve.median_interval(values) == (list(map(float, ranks)) if ranks else None)


def test_the_ratio_to_llama_server_is_paired_round_by_round():
    # llama-server 100 -> 120 -> 90 tok/s as the machine drifts, alambic 1.1x of it in each round: 1.1 with no spread
    peer = [{"streamed_16": {"tok_s": t}} for t in (100.0, 120.0, 90.0)]
    alambic = [{"streamed_16": {"tok_s": 1.1 * t}} for t in (100.0, 120.0, 90.0)]
    paired = bench_serve.paired_by_round(peer, alambic, ["streamed_16"], bench_serve.ratio)["streamed_16"]
    assert paired["by_round"] == pytest.approx([1.1] * 3) and paired["ci95"] == pytest.approx([1.1, 1.1])
