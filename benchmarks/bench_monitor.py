"""The monitor against the baselines on simulated weeks it was not tuned on: per campaign style ROC AUC, TPR at 0.1%
and 1% benign FPR, benign accounts blocked, linking (also with each campaign alone in a week of its own, where no
other campaign's prompts bridge its accounts), and each campaign's requests (all its accounts) before the replay
first flagged it; then, on a million-row week, the feature pass's rows/s and peak RSS (and at a quarter of the
rows, and over four and sixteen weeks of that quarter's accounts), as DuckDB sizes its memory and within a limit,
the same SQL on Spark, and the embeddings' prompts/s and share served from the cache.

Risk is calibrated on benign-only weeks of other seeds (`Reference`), never on campaign labels; the replay's risk on
those weeks replayed at the same step (`RiskOverSteps`: a flag once raised stays, so the thresholds must hold their
benign rates over a week of steps, not at each step). Every setting was chosen on seeds 0-2 with the styles not held
out; the defaults here are other seeds and every style.

    .venv/bin/python benchmarks/bench_monitor.py [--seeds 10 11 12] [--scale 0.5] [--replay-step-hours 6]
        [--million-scale 2.6] [--extras-week quarter|full] [--visible-only] [--smoke] [--out DIR] [--no-write]

At scale 0.5 a week holds ~600 accounts (~350 benign): the three seeds pool to ~1,800 (~1,060 benign), so that
0.1% FPR means one benign account. The replay re-scores the week as known at every step (28 at 6 h), so it takes
most of the time: about 14 full-week assessments a seed. Estimated from short runs on two cores: ~6 min a seed at
scale 0.5 and ~12 min at scale 1.0, so ~28 min and ~47 min in all; a 12 h step halves the replay. `--smoke` runs
every step on tiny weeks and writes nothing unless `--out` names a directory: a check that the script runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import shutil
import tempfile
import time
import warnings
from collections import Counter
from datetime import timedelta
from functools import partial
from pathlib import Path

import numpy as np

import feature_pass
from alambic.monitor.assess import assess, benign_units
from alambic.monitor.baselines import BASELINES, RULES, account_summaries, rule_verdicts
from alambic.monitor.content import account_tasks, text_key
from alambic.monitor.embeddings import EmbeddingCache, Encoder, encoder_key, minilm_encoder
from alambic.monitor.linking import link_accounts
from alambic.monitor.mmd_baseline import SAMPLE, WINDOW, MmdBaseline, account_windows
from alambic.monitor.near_duplicates import Signatures
from alambic.monitor.replay import Assess, SteppedMonitor, campaign_requests_before_flag, highest_risks
from alambic.monitor.risk import THRESHOLDS, Reference, RiskOverSteps, surprise
from alambic.monitor.scoring import before_flag_by_style, score_by_style
from alambic.monitor.source import open_log
from alambic.monitor.tables import load_tables
from alambic.paths import cache_dir
from alambic.simulate import CAMPAIGNS, HELD_OUT, Simulation, SimulationSettings, write_jsonl
from common import write_result

REFERENCE_SEEDS = (1000, 1001, 1002)  # benign-only weeks that calibrate risk
DAYS = 7
TARGET = 1000  # every campaign flagged before this many of its requests
MILLION_SEED = 1  # the week of a million rows (scale 2.6: ~1.04 million)
REPLAYED = ("quarter", "quarter_four_weeks")  # the replay's weeks at a million rows: one, and four of its accounts
SPARK_WARM_ROWS = 2000
FEATURE_PASS_MEMORY = "128MB"  # DuckDB's memory limit for the bounded passes (`source.connect`): past it, they spill
SMOKE = {"seeds": [10], "scale": 0.05, "replay_step_hours": 24.0, "million_scale": 0.04}


def simulate(directory: Path, seed: int, scale: float, campaigns: tuple[str, ...]) -> tuple[Path, dict]:
    out = directory / f"seed-{seed}" / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=seed, days=DAYS, scale=scale, campaigns=campaigns)), out)
    return out, json.loads((out.parent / "labels.json").read_text())


def embeddings() -> EmbeddingCache:
    """The prompt embeddings the content signals read, kept between runs in a cache named by what the encoder's
    vectors depend on (`embeddings.encoder_key`)."""
    return EmbeddingCache(minilm_encoder(), path=cache_dir() / "benchmarks" / f"monitor-embeddings-{encoder_key()}")


def benign_reference(
    directory: Path, scale: float, content: EmbeddingCache | None, step: timedelta
) -> tuple[Reference, RiskOverSteps, MmdBaseline | None]:
    """What the benign-only weeks calibrate: the monitor's risk (on their accounts and their linked groups), common
    phrasing, and risk over the replay's steps (each week replayed, its accounts compared with the others only);
    with content, the MMD window baseline."""
    rows, groups, phrasing, windows, weeks = [], [], [], {}, []
    for seed in REFERENCE_SEEDS:
        log, _ = simulate(directory, seed, scale, ())
        units = benign_units(open_log([log]), content)
        weeks.append((log, len(rows), units.accounts))
        rows, groups, phrasing = rows + units.rows, groups + units.groups, [*phrasing, units.phrasing]
        if content is not None:
            for account, found in account_windows(open_log([log]), content).items():
                windows[f"{seed}:{account}"] = found  # account ids may repeat across seeds
    common = np.unique(np.concatenate(phrasing), axis=0)  # the weeks' common texts, each once
    reference = Reference(rows, groups=groups, phrasing=common)
    highest = []
    for log, first, accounts in weeks:
        scoring = partial(
            assess, reference=reference.excluding_own(accounts, first), content=content, signatures=Signatures()
        )
        highest += highest_risks(open_log([log], name="log"), scoring, step)
    return reference, RiskOverSteps(highest), MmdBaseline.calibrate(windows) if windows else None


def linking(campaign_of: dict[str, str | None], labels: dict[str, dict]) -> dict[str, dict]:
    """Per multi-account campaign: the share of its accounts in its largest linked group (of all of them, and of
    those that sent any of its prompts: one that sent only cover traffic holds none of its evidence), and the benign
    accounts and the campaigns (itself included) with accounts in that group."""
    members: dict[str, list[str]] = {}
    for account, label in labels.items():
        if label["kind"] == "campaign":
            members.setdefault(label["campaign_id"], []).append(account)
    found = {}
    for campaign, accounts in sorted(members.items()):
        if len(accounts) < 2:
            continue
        groups = Counter(campaign_of[a] for a in accounts if campaign_of[a] is not None)
        group, size = groups.most_common(1)[0] if groups else (None, 0)
        in_group = [a for a, g in campaign_of.items() if group and g == group]
        benign = sum(labels[a]["kind"] == "benign" for a in in_group)
        extracting = [a for a in accounts if labels[a].get("extraction_requests") != 0]
        joined = sum(group is not None and campaign_of[a] == group for a in extracting)
        found[campaign] = {
            "style": labels[accounts[0]]["style"],
            "accounts": len(accounts),
            "largest_group_share": size / len(accounts),
            "largest_group_share_sent_extraction": joined / len(extracting) if extracting else None,
            "benign_in_group": benign,
            "campaigns_in_group": len({labels[a]["campaign_id"] for a in in_group} - {None}),
        }
    return found


def linking_alone(
    directory: Path, seeds: list[int], scale: float, campaigns: tuple[str, ...], common: np.ndarray | None
) -> dict[str, dict]:
    """Per multi-account style, its campaign linked (with the benign weeks' `common` phrasing) in weeks (one a seed)
    where it is the only campaign, so that no other campaign's prompts bridge its accounts: the worst share of its
    accounts in its largest linked group (of all of them, and of those that sent a campaign prompt), and the benign
    accounts in those groups."""
    found: dict[str, list[dict]] = {}
    for seed in seeds:
        for style in campaigns:
            log, labels = simulate(directory / f"alone-{style}", seed, scale, (style,))
            connection = open_log([log])
            load_tables(connection)
            campaign_of = link_accounts(connection, None, common).campaign_of
            found.setdefault(style, []).extend(linking({a: campaign_of.get(a) for a in labels}, labels).values())
            shutil.rmtree(log.parent)
    return {
        style: {
            "campaigns": len(linked),
            "worst_share": min(c["largest_group_share"] for c in linked),
            "worst_share_sent_extraction": min(
                (share for c in linked if (share := c["largest_group_share_sent_extraction"]) is not None), default=None
            ),
            "benign_in_groups": sum(c["benign_in_group"] for c in linked),
        }
        for style, linked in found.items()
        if linked
    }


def replay_week(log: Path, scoring: Assess, step: timedelta, labels: dict[str, dict], tables: bool = True) -> dict:
    """The week fed in time order through the stepped monitor: per campaign its style, accounts, requests and
    requests (all its accounts) before the first flag of any of them (None: never flagged); the replay's speed.
    `tables` as `SteppedMonitor`'s: off for a baseline, which reads `requests` alone."""
    connection = open_log([log], name="log")
    rows = connection.execute("SELECT count(*) FROM log").fetchone()[0]
    started = time.perf_counter()
    monitor = SteppedMonitor(connection, scoring, step, tables=tables)
    monitor.advance()
    seconds = time.perf_counter() - started
    members: dict[str, list[str]] = {}
    for account, label in sorted(labels.items()):
        if label["kind"] == "campaign":
            members.setdefault(label["campaign_id"], []).append(account)
    sent = dict(
        connection.execute("SELECT account, count(*) FROM log WHERE account IS NOT NULL GROUP BY account").fetchall()
    )
    benign = [a for a, label in labels.items() if label["kind"] == "benign"]
    benign_first = Counter(monitor.flags[a].action for a in benign if a in monitor.flags)
    before = campaign_requests_before_flag(monitor, members)
    campaigns = {
        campaign: {
            "style": labels[accounts[0]]["style"],
            "accounts": len(accounts),
            "requests": sum(sent.get(a, 0) for a in accounts),
            "requests_before_flag": before[campaign],
        }
        for campaign, accounts in members.items()
    }
    return {
        "campaigns": campaigns,
        "benign_flagged": sum(benign_first.values()),  # at some step of the week
        "benign_first_actions": dict(benign_first),
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
    }


def evaluate(
    log: Path,
    labels: dict,
    reference: Reference,
    over_steps: RiskOverSteps,
    content: EmbeddingCache | None,
    mmd: MmdBaseline | None,
    tag: str,
    step: timedelta,
) -> dict:
    """Scores keyed `tag:account`, so that seeds pool; actions; campaigns; the replay; seconds per step."""
    connection = open_log([log])
    started = time.perf_counter()
    verdicts = assess(connection, reference, content)
    seconds = time.perf_counter() - started
    summaries = account_summaries(connection)
    baselines = {name: score(summaries) for name, score in BASELINES.items()}
    if mmd is not None and content is not None:
        baselines["mmd"] = mmd.scores(account_windows(connection, content))
    signatures = Signatures()  # kept from step to step, as the CLI's replay keeps them
    replayed = replay_week(log, lambda c: assess(c, reference, content, signatures, over_steps), step, labels)
    # the volume score has no flag to replay
    rules_replayed = replay_week(log, rule_verdicts, step, labels, tables=False)
    return {
        "labels": {
            f"{tag}:{a}": {**label, "campaign_id": label["campaign_id"] and f"{tag}:{label['campaign_id']}"}
            for a, label in labels.items()
        },
        "monitor": {f"{tag}:{v.account}": v.risk for v in verdicts},
        "actions": {f"{tag}:{v.account}": v.action for v in verdicts},
        "campaign_of": {f"{tag}:{v.account}": v.campaign and f"{tag}:{v.campaign}" for v in verdicts},
        "baselines": {name: {f"{tag}:{a}": s for a, s in scores.items()} for name, scores in baselines.items()},
        "rules_fired": {f"{tag}:{s.account}": any(rule.fires(s) for rule in RULES) for s in summaries},
        "campaigns": {f"{tag}:{c}": figures for c, figures in replayed.pop("campaigns").items()},
        "rules_campaigns": {f"{tag}:{c}": figures for c, figures in rules_replayed.pop("campaigns").items()},
        "replay": replayed,
        "rules_replay": rules_replayed,
        "assess_seconds": seconds,
    }


def pooled(runs: list[dict]) -> dict:
    """The seeds' accounts as one population (risk is calibrated, so scores compare across seeds)."""
    keys = ("labels", "monitor", "actions", "campaign_of", "rules_fired", "campaigns", "rules_campaigns")
    merged = {key: {a: v for run in runs for a, v in run[key].items()} for key in keys}
    merged["baselines"] = {
        name: {a: s for run in runs for a, s in run["baselines"][name].items()} for name in runs[0]["baselines"]
    }
    return merged


def style_table(run: dict) -> dict:
    labels = run["labels"]
    benign = [a for a, label in labels.items() if label["kind"] == "benign"]
    monitor = score_by_style(run["monitor"], labels)
    baselines = {name: score_by_style(scores, labels) for name, scores in run["baselines"].items()}
    links = linking(run["campaign_of"], labels)
    stopped = _stopped(run["campaigns"])
    rules_only = {"benign_blocked": _rules_blocked(run, benign)}
    rules_stopped = _stopped(run["rules_campaigns"])
    table = {}
    for style, figures in monitor.items():
        per_style = [c for c in links.values() if c["style"] == style]
        table[style] = {
            **figures,
            **stopped[style],
            "benign_blocked": sum(run["actions"][a] == "block" for a in benign),
            "campaign_accounts_blocked": sum(
                run["actions"][a] == "block" for a, label in labels.items() if label["style"] == style
            ),
            "linking_worst_share": min((c["largest_group_share"] for c in per_style), default=None),
            "linking_worst_share_sent_extraction": min(
                (c["largest_group_share_sent_extraction"] for c in per_style), default=None
            ),
            "linking_benign_in_groups": sum(c["benign_in_group"] for c in per_style) if per_style else None,
            "linking_most_campaigns_in_group": max((c["campaigns_in_group"] for c in per_style), default=None),
            "baselines": {
                name: {
                    **scores[style],
                    **({**rules_only, **rules_stopped[style]} if name == "rules" else {}),
                }
                for name, scores in baselines.items()
            },
        }
    return table


def _stopped(campaigns: dict[str, dict]) -> dict[str, dict]:
    """Per style: the worst campaign's requests before its first flag in the replay, and those flagged in time."""
    counts = {c: f["requests_before_flag"] for c, f in campaigns.items()}
    return before_flag_by_style(counts, {c: f["style"] for c, f in campaigns.items()}, TARGET)


def _rules_blocked(run: dict, benign: list[str]) -> int:
    """Benign accounts a provider blocking on any rule would block."""
    return sum(run["rules_fired"][a] for a in benign)


def at_a_million_rows(directory: Path, scale: float, extras: str, step: timedelta) -> dict:
    """A week of ~a million rows, one of a quarter of them, and four and sixteen weeks of the quarter's accounts (as
    many rows as the full week, and four times as many, from a quarter of its accounts): the feature pass's rows/s
    on one thread and peak RSS, each in a process of its own, as DuckDB sizes its memory and within
    `FEATURE_PASS_MEMORY`; the replay (`step`, a week's window, scored against a benign week of the quarter's size,
    without content) over the quarter's week and its four weeks, each in a process of its own; on the `extras`
    week, the same SQL on Spark and the embeddings."""
    logs = {}
    for size, at, days in (
        ("quarter", scale / 4, DAYS),
        ("full", scale, DAYS),
        ("quarter_four_weeks", scale / 4, 4 * DAYS),
        ("quarter_sixteen_weeks", scale / 4, 16 * DAYS),
    ):
        logs[size] = directory / f"million-{size}" / "log.jsonl"
        settings = SimulationSettings(seed=MILLION_SEED, days=days, scale=at, campaigns=CAMPAIGNS)
        write_jsonl(Simulation(settings), logs[size])
    passes = {size: feature_pass.measure([log]) for size, log in logs.items()}
    bounded = {size: feature_pass.measure([log], FEATURE_PASS_MEMORY) for size, log in logs.items()}
    for size in logs:
        print(f"feature pass, {size}: {passes[size]}\n  within {FEATURE_PASS_MEMORY}: {bounded[size]}", flush=True)
    replaying = feature_pass.Replay(million_reference(directory, scale / 4), step / timedelta(hours=1), DAYS * 24)
    replays = {size: feature_pass.measure([logs[size]], replaying=replaying) for size in REPLAYED}
    print(f"replay: {replays}", flush=True)
    found = {
        "scale": scale,
        "feature_pass": passes,
        **_rss_ratios(passes, ""),
        "feature_pass_within_memory_limit": bounded,
        **_rss_ratios(bounded, "_within_memory_limit"),
        "replay": replays,
        "replay_peak_rss_four_weeks_over_one": replays[REPLAYED[1]]["peak_rss_mib"]
        / replays[REPLAYED[0]]["peak_rss_mib"],
        "spark": {"week": extras, **spark_speed(logs[extras]), "duckdb_rows_per_s": passes[extras]["rows_per_s"]},
        "embeddings": {"week": extras, **embedding_speed(logs[extras], minilm_encoder())},
    }
    print(f"spark: {found['spark']}\nembeddings: {found['embeddings']}", flush=True)
    return found


def million_reference(directory: Path, scale: float) -> Path:
    """A benign week's `Reference` (without content) at `scale`, pickled for the replays at a million rows."""
    log, _ = simulate(directory / "million-reference", REFERENCE_SEEDS[0], scale, ())
    units = benign_units(open_log([log]))
    pickled = directory / "million-reference.pkl"
    pickled.write_bytes(pickle.dumps(Reference(units.rows, groups=units.groups, phrasing=units.phrasing)))
    return pickled


def _rss_ratios(passes: dict[str, dict], suffix: str) -> dict[str, float]:
    """Peak RSS over the full week and over four and sixteen weeks of the quarter's accounts, each against the
    quarter's."""
    rss = {size: figures["peak_rss_mib"] for size, figures in passes.items()}
    return {
        f"peak_rss_full_over_quarter{suffix}": rss["full"] / rss["quarter"],
        f"peak_rss_four_weeks_over_one{suffix}": rss["quarter_four_weeks"] / rss["quarter"],
        f"peak_rss_sixteen_weeks_over_one{suffix}": rss["quarter_sixteen_weeks"] / rss["quarter"],
    }


def spark_speed(log: Path) -> dict:
    """The feature SQL, transpiled, on PySpark in local mode on one core, after a pass over the log's first rows
    that warms the JVM; rows/s of reading and the pass together, as DuckDB's are."""
    from alambic.monitor import spark

    warm = log.with_name("warm.jsonl")
    with open(log, encoding="utf-8") as rows, open(warm, "w", encoding="utf-8") as out:
        out.writelines(itertools.islice(rows, SPARK_WARM_ROWS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pyspark's note about pandas 3, which it is not given
        session = spark.local_session(cores=1)
    try:
        for path in (warm, log):
            started = time.perf_counter()
            spark.open_log(session, [path])
            accounts = len(spark.account_features(session))
            seconds = time.perf_counter() - started
        rows = session.sql("SELECT count(*) FROM requests").collect()[0][0]
    finally:
        session.stop()
    return {"cores": 1, "rows": rows, "accounts": accounts, "seconds": seconds, "rows_per_s": rows / seconds}


def embedding_speed(log: Path, encoder: Encoder) -> dict:
    """The prompts the content signals embed (a bounded sample per account) with the log scored as known at the
    end of each day, one cache throughout: prompts embedded per second of encoding, and the share of the prompts
    asked for that the cache served (a monitor re-scoring a growing log asks for most of them again)."""
    timed = _Timed(encoder)
    cache = EmbeddingCache(timed)
    connection = open_log([log], name="log")
    first = connection.execute("SELECT epoch_us(min(t)) FROM log").fetchone()[0]
    asked = []
    for day in range(1, DAYS + 1):  # the last step: every row
        known = f"epoch_us(t) < {first + day * 86_400_000_000}" if day < DAYS else "true"
        connection.execute(f"CREATE OR REPLACE VIEW requests AS SELECT * FROM log WHERE {known}")
        load_tables(connection)
        prompts = {text_key(task): task for tasks in account_tasks(connection).values() for task in tasks}
        cache.embed(prompts)
        asked.append(len(prompts))
    return {
        "steps": DAYS,
        "prompts_asked": sum(asked),
        "prompts_embedded": cache.embedded,
        "encode_seconds": timed.seconds,
        "prompts_per_s": cache.embedded / timed.seconds if timed.seconds else None,
        "cached_share": cache.cached_share,
    }


class _Timed:
    """An encoder that adds up the seconds spent in it."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.seconds = 0.0

    def __call__(self, texts: list[str]) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self.encoder(texts)
        finally:
            self.seconds += time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[10, 11, 12])
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--replay-step-hours", type=float, default=6.0, help="the replay scores the log this often")
    parser.add_argument("--million-scale", type=float, default=2.6, help="the scale of the million-row week")
    parser.add_argument(
        "--extras-week",
        choices=("quarter", "full"),
        default="quarter",
        help="the week Spark and the embeddings run on (on the full one they take minutes each on two cores)",
    )
    parser.add_argument("--visible-only", action="store_true", help="leave the held-out styles out (development)")
    parser.add_argument("--no-content", action="store_true", help="score without the content signals (embeddings)")
    parser.add_argument("--smoke", action="store_true", help=f"tiny weeks ({SMOKE}); writes only with --out")
    parser.add_argument("--out", type=Path, help="write monitor.json into this directory, not benchmarks/results")
    parser.add_argument("--no-write", action="store_true", help="print the figures, write no results")
    args = parser.parse_args(argv)
    if args.smoke:
        vars(args).update(SMOKE)
    campaigns = tuple(s for s in CAMPAIGNS if not (args.visible_only and s in HELD_OUT))
    step = timedelta(hours=args.replay_step_hours)
    begun = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as directory:
        directory = Path(directory)
        content = None if args.no_content else embeddings()
        reference, over_steps, mmd = benign_reference(directory, args.scale, content, step)
        print(
            f"reference: {len(reference)} benign accounts, {len(reference.phrasing)} common texts, "
            f"{time.perf_counter() - begun:.0f} s",
            flush=True,
        )
        runs = []
        for seed in args.seeds:
            log, labels = simulate(directory, seed, args.scale, campaigns)
            runs.append(evaluate(log, labels, reference, over_steps, content, mmd, str(seed), step))
            kinds = Counter(label["kind"] for label in labels.values())
            replay = runs[-1]["replay"]
            print(
                f"seed {seed}: {dict(kinds)}, assess {runs[-1]['assess_seconds']:.0f} s, replay {replay['rows']:,} "
                f"rows in {replay['seconds']:.0f} s (benign flagged at some step: {replay['benign_flagged']}), "
                f"rules replay {runs[-1]['rules_replay']['seconds']:.0f} s",
                flush=True,
            )
            for style, row in style_table(runs[-1]).items():
                print(f"  {style}: {_brief(row)}", flush=True)
        alone = linking_alone(directory, args.seeds, args.scale, campaigns, reference.phrasing)
        for style, linked in alone.items():
            print(f"  {style} alone in its weeks: linked {linked}", flush=True)
        scaled = at_a_million_rows(directory, args.million_scale, args.extras_week, step)
    merged = pooled(runs)
    benign = [a for a, label in merged["labels"].items() if label["kind"] == "benign"]
    table = style_table(merged)
    replays = {name: [run[key] for run in runs] for name, key in (("monitor", "replay"), ("rules", "rules_replay"))}
    figures = {
        "settings": {
            "seeds": args.seeds,
            "scale": args.scale,
            "days": DAYS,
            "reference_seeds": REFERENCE_SEEDS,
            "replay_step_hours": args.replay_step_hours,
            "content": not args.no_content,
            "requests_before_flag_target": TARGET,
            "million_rows_scale": args.million_scale,
            "extras_week": args.extras_week,
            "mmd_baseline": None
            if mmd is None
            else {
                "window": WINDOW,
                "sample": SAMPLE,
                "min_requests": mmd.min_requests,
                "reference_prompts": len(mmd.reference),
                "calibration_windows": len(mmd.benign_statistics),
            },
        },
        "accounts": dict(Counter(label["kind"] for label in merged["labels"].values())),
        "benign_actions": dict(Counter(merged["actions"][a] for a in benign)),
        "benign_in_linked_groups": sum(merged["campaign_of"][a] is not None for a in benign),
        # the benign weeks' replay that calibrates risk over steps: the share of their accounts whose risk, calibrated
        # per step, passed each action's threshold at some step (what per-step risk would have done to them)
        "reference_replay": {
            "accounts": len(over_steps.highest),
            "past_threshold_at_some_step": {
                action: float(np.mean(over_steps.highest >= surprise(threshold))) for action, threshold in THRESHOLDS
            },
        },
        "replay": {
            name: {
                "rows_per_s": sum(r["rows"] for r in found) / sum(r["seconds"] for r in found),
                "benign_flagged": sum(r["benign_flagged"] for r in found),
                "by_seed": dict(zip(map(str, args.seeds), found, strict=True)),
            }
            for name, found in replays.items()
        },
    }
    print(figures, flush=True)
    for style, row in table.items():
        print(f"all seeds, {style}: {_brief(row)}", flush=True)
    print(f"the run took {time.perf_counter() - begun:.0f} s", flush=True)
    if args.no_write or (args.smoke and args.out is None):
        return
    write_result(
        "monitor",
        {
            **figures,
            "reference_accounts": len(reference),
            "styles": table,
            "campaigns": merged["campaigns"],
            "rules_campaigns": merged["rules_campaigns"],
            "by_seed": {str(seed): style_table(run) for seed, run in zip(args.seeds, runs, strict=True)},
            "linking_alone": alone,
            "assess_seconds_per_week": [run["assess_seconds"] for run in runs],
            "at_a_million_rows": scaled,
            "run_seconds": time.perf_counter() - begun,
        },
        directory=args.out,
    )


def _brief(row: dict) -> str:
    base = " ".join(
        f"{name} auc {b['auc']:.3f}/tpr {b['tpr_at_0.1pct_fpr']:.2f}" for name, b in row["baselines"].items()
    )
    return (
        f"auc {row['auc']:.4f} tpr@0.1% {row['tpr_at_0.1pct_fpr']:.3f} tpr@1% {row['tpr_at_1pct_fpr']:.3f} "
        f"benign blocked {row['benign_blocked']} linked {row['linking_worst_share']} "
        f"(campaigns in its group {row['linking_most_campaigns_in_group']}) "
        f"(cover-only accounts {row['accounts_cover_only']}: without them auc {_shown(row['auc_sent_extraction'])}, "
        f"linked {row['linking_worst_share_sent_extraction']}) "
        f"before flag {row['requests_before_flag']} ({row['flagged_before_target']}/{row['campaigns']}) | {base}"
    )


def _shown(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    main()
