"""The baselines a provider has without alambic: they catch the loud campaigns and miss the hydra."""

from __future__ import annotations

import json

import pytest

from alambic.logs.exporter import export_log
from alambic.logs.importer import LogImporter
from alambic.monitor.baselines import BASELINES, RULES, account_summaries, rule_verdicts
from alambic.monitor.scoring import score_by_style, tpr_at_fpr
from alambic.monitor.source import open_log
from alambic.simulate import Simulation, SimulationSettings, write_jsonl
from alambic.store import Store


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    out = tmp_path_factory.mktemp("week") / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=11, days=3, scale=0.3)), out)
    return out, json.loads((out.parent / "labels.json").read_text())


def test_rules_catch_bulk_extraction_and_neither_baseline_sees_the_hydra(simulated):
    log, labels = simulated
    summaries = account_summaries(open_log([log]))
    assert {s.account for s in summaries} == set(labels)
    rules = score_by_style(BASELINES["rules"](summaries), labels)
    volume = score_by_style(BASELINES["volume"](summaries), labels)
    assert rules["bulk"]["auc"] > 0.99 and rules["bulk"]["tpr_at_1pct_fpr"] == 1.0
    assert volume["hydra"]["auc"] < 0.5 and rules["hydra"]["tpr_at_1pct_fpr"] == 0.0


def test_the_same_summaries_from_jsonl_and_from_the_stores_parquet_export(simulated, tmp_path):
    log, _ = simulated
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    LogImporter(store).import_files([log])
    parquet = tmp_path / "export.parquet"
    export_log(store, parquet)
    assert account_summaries(open_log([parquet])) == account_summaries(open_log([log]))


def test_tpr_at_fpr_lets_through_at_most_that_share_of_benign_accounts():
    benign = [float(i) for i in range(1000)]  # 0 .. 999
    assert tpr_at_fpr(benign, [998.5, 999.5, 500], 0.001) == pytest.approx(2 / 3)  # threshold 998: one benign above
    assert tpr_at_fpr(benign, [998.5], 0.0) == 0.0
    assert tpr_at_fpr(benign, [989.5, 5], 0.01) == 0.5


def test_rule_verdicts_flag_the_accounts_a_rule_fires_on_and_say_which(simulated):
    log, labels = simulated
    connection = open_log([log])
    summaries = {s.account: s for s in account_summaries(connection)}
    verdicts = rule_verdicts(connection)
    assert [v.account for v in verdicts] == sorted(summaries)
    for verdict in verdicts:
        fired = [rule.description for rule in RULES if rule.fires(summaries[verdict.account])]
        assert verdict.reasons == tuple(fired) and verdict.action == ("flag" if fired else "none")
    assert all(v.action == "flag" for v in verdicts if labels[v.account]["style"] == "bulk")
