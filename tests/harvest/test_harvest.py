"""Harvesting from the gateway serving the tiny model."""

import json
from pathlib import Path

import datasets
from sqlalchemy import func, select

from alambic.harvest import (
    AnswerRow,
    HarvestDataset,
    HarvestJob,
    KeyStrategy,
    Pacing,
    Prompt,
    Sampling,
    ShardFormat,
    harvest,
)
from alambic.store.schema import RequestLog

COMPLETIONS = RequestLog.endpoint == "/v1/chat/completions"  # the harvest also checks each key on /v1/models


def prompts(count, prefix="Question"):
    return tuple(Prompt.of(f"{prefix} number {i}: what do you think?") for i in range(count))


def job(gateway, out, keys, items, **options):
    return HarvestJob(
        endpoint=f"{gateway.url}/v1",
        model="tiny",
        api_keys=tuple(keys),
        prompts=items,
        out=Path(out),
        sampling=options.pop("sampling", Sampling(max_tokens=6, seed=1)),
        **options,
    )


def rows(out):
    return [json.loads(line) for shard in sorted(Path(out).glob("part-*.jsonl")) for line in shard.open()]


def test_500_prompts_at_concurrency_32_give_500_rows_and_500_logged_requests(gateway, tmp_path):
    items = prompts(500)
    stats = harvest(job(gateway, tmp_path / "out", [gateway.key("harvester")], items, concurrency=32))
    assert stats.status == "complete" and stats.rows_done == 500
    written = rows(tmp_path / "out")
    assert sorted(r["prompt_id"] for r in written) == sorted(p.prompt_id for p in items)
    with gateway.store.session() as session:
        logged, prompt_tokens, completion_tokens = session.execute(
            select(func.count(), func.sum(RequestLog.prompt_tokens), func.sum(RequestLog.completion_tokens)).where(
                COMPLETIONS
            )
        ).one()
        checks = session.scalar(select(func.count()).where(RequestLog.endpoint == "/v1/models"))
    assert logged == 500 and checks == 1  # and one preflight check of the key
    assert sum(r["prompt_tokens"] for r in written) == prompt_tokens
    assert sum(r["completion_tokens"] for r in written) == completion_tokens == stats.completion_tokens
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["rows_done"] == 500 and manifest["model"] == "tiny"

    loaded = datasets.load_dataset(str(tmp_path / "out"), split="train")
    assert loaded.num_rows == 500 and {"prompt_id", "messages", "answer"} <= set(loaded.column_names)


def test_a_second_run_asks_nothing_more(gateway, tmp_path):
    key = gateway.key("harvester")
    items = prompts(20)
    harvest(job(gateway, tmp_path / "out", [key], items))
    again = harvest(job(gateway, tmp_path / "out", [key], items))
    assert again.rows_written == 0 and again.status == "complete"
    assert len(rows(tmp_path / "out")) == 20


def test_conversations_are_replayed_with_the_teachers_replies(gateway, tmp_path):
    conversation = Prompt.of(["Hello there", "And then?", "Finally?"])
    harvest(job(gateway, tmp_path / "out", [gateway.key("harvester")], (conversation,)))
    turns = sorted(rows(tmp_path / "out"), key=lambda r: r["turn"])
    assert [r["turn"] for r in turns] == [0, 1, 2]
    assert [m["role"] for m in turns[2]["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert turns[2]["messages"][1]["content"] == turns[0]["answer"]
    assert turns[2]["messages"][3]["content"] == turns[1]["answer"]


def test_samples_and_logprobs_are_kept(gateway, tmp_path):
    sampling = Sampling(max_tokens=5, n=3, seed=2, top_logprobs=4)
    harvest(job(gateway, tmp_path / "out", [gateway.key("harvester")], prompts(4), sampling=sampling))
    written = rows(tmp_path / "out")
    assert len(written) == 12 and {r["sample"] for r in written} == {0, 1, 2}
    for row in written:
        assert len(row["logprobs"]) == row["completion_tokens"] > 0
        assert all(len(t["top_logprobs"]) == 4 for t in row["logprobs"])


def test_a_torn_last_line_is_repaired_on_resume(gateway, tmp_path):
    key = gateway.key("harvester")
    items = prompts(10)
    harvest(job(gateway, tmp_path / "out", [key], items))
    [shard] = Path(tmp_path / "out").glob("part-*.jsonl")
    content = shard.read_bytes()
    shard.write_bytes(content[: len(content) - 40])  # the last row cut mid-line, as by kill -9
    assert len(HarvestDataset(tmp_path / "out").done) == 9
    harvest(job(gateway, tmp_path / "out", [key], items))
    assert sorted(r["prompt_id"] for r in rows(tmp_path / "out")) == sorted(p.prompt_id for p in items)


def test_a_prompt_that_keeps_failing_is_recorded_and_the_rest_complete(gateway, tmp_path):
    items = (*prompts(5), Prompt.of("word " * 2100))  # longer than the tiny model's context: a 400
    stats = harvest(job(gateway, tmp_path / "out", [gateway.key("harvester")], items))
    assert stats.rows_done == 5 and stats.failed == 1 and stats.status == "incomplete"
    [error] = [json.loads(line) for line in (tmp_path / "out" / "errors.log").open()]
    assert error["prompt_id"] == items[-1].prompt_id and "HTTP 400" in error["error"] and error["attempts"] == 1


def test_token_budget_stops_the_job_cleanly(gateway, tmp_path):
    stats = harvest(
        job(gateway, tmp_path / "out", [gateway.key("harvester")], prompts(50), concurrency=1, budget=budget(200))
    )
    assert stats.status == "budget_exhausted"
    assert 0 < len(rows(tmp_path / "out")) < 50
    assert stats.prompt_tokens + stats.completion_tokens >= 200


def budget(tokens):
    from alambic.harvest import Budget

    return Budget(max_tokens=tokens, price_per_1k_prompt_tokens=0.5, price_per_1k_completion_tokens=1.5)


def test_keys_share_the_prompts_by_strategy_with_pacing(gateway, tmp_path):
    keys = [gateway.key(f"linked-{i}") for i in range(20)]
    items = prompts(1000)
    pacing = Pacing(requests_per_minute=600, jitter=0.2)  # a gap of 0.1 s ± 20% per key
    stats = harvest(
        job(gateway, tmp_path / "out", keys, items, concurrency=32, key_strategy=KeyStrategy.SHARD, pacing=pacing)
    )
    assert stats.status == "complete"
    with gateway.store.session() as session:
        per_account = session.execute(
            select(RequestLog.account_id, func.count()).where(COMPLETIONS).group_by(RequestLog.account_id)
        ).all()
        times = session.execute(
            select(RequestLog.account_id, RequestLog.created_at).where(COMPLETIONS).order_by(RequestLog.created_at)
        ).all()
    assert len(per_account) == 20 and sum(count for _, count in per_account) == 1000
    # shard: each key owns the prompts its hash picks
    expected = {}
    for prompt in items:
        index = int(prompt.prompt_id[:8], 16) % 20
        expected[index] = expected.get(index, 0) + 1
    assert sorted(count for _, count in per_account) == sorted(expected.values())
    arrivals: dict[int, list] = {}
    for account, created in times:
        arrivals.setdefault(account, []).append(created)
    for account_times in arrivals.values():
        # each gap is at least 0.08 s at the client; the server's clock adds a little noise at both ends
        span = (account_times[-1] - account_times[0]).total_seconds()
        assert span / (len(account_times) - 1) >= 0.075


def test_parquet_shards_load_and_resume(gateway, tmp_path):
    key = gateway.key("harvester")
    items = prompts(30)
    stats = harvest(job(gateway, tmp_path / "out", [key], items, shard_format=ShardFormat.PARQUET))
    assert stats.status == "complete" and list((tmp_path / "out").glob("part-*.parquet"))
    loaded = datasets.load_dataset(str(tmp_path / "out"), split="train")
    assert sorted(loaded["prompt_id"]) == sorted(p.prompt_id for p in items)
    again = harvest(job(gateway, tmp_path / "out", [key], items, shard_format=ShardFormat.PARQUET))
    assert again.rows_written == 0


def test_parquet_rows_not_yet_flushed_are_asked_again_never_duplicated(tmp_path):
    def row(i):
        return AnswerRow(f"p{i}", 0, 0, [], "a", "stop", 1, 1, 0.1, 1, 0, "h", "m", 0.0)

    crashed = HarvestDataset(tmp_path, ShardFormat.PARQUET, parquet_flush_rows=4)
    for i in range(10):
        crashed.write(row(i))  # two flushes of 4; rows 8 and 9 only in memory when the process dies
    resumed = HarvestDataset(tmp_path, ShardFormat.PARQUET, parquet_flush_rows=4)
    assert sorted(resumed.done) == [(f"p{i}", 0, 0) for i in range(8)]
    for i in range(10):
        resumed.write(row(i))
    resumed.close()
    assert sorted(HarvestDataset(tmp_path, ShardFormat.PARQUET).done) == sorted((f"p{i}", 0, 0) for i in range(10))


def test_an_unreachable_endpoint_or_a_refused_key_fails_at_once(gateway, tmp_path):
    import pytest

    from alambic.errors import InvalidRequestError

    items = prompts(3)
    unreachable = HarvestJob("http://127.0.0.1:9/v1", "tiny", ("k",), items, tmp_path / "a")
    with pytest.raises(InvalidRequestError, match="Cannot reach"):
        harvest(unreachable)
    with pytest.raises(InvalidRequestError, match="refused API key #2"):
        harvest(job(gateway, tmp_path / "b", [gateway.key("ok"), "alb-wrong"], items))
