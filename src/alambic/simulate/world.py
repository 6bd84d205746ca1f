"""`alambic simulate`: a week of an API's traffic as request log v1 rows, with campaign labels on the side.

Deterministic for a seed: every actor draws from its own random stream, and the actors' time-ordered
streams are merged by (time, actor, order), so the same settings give the same bytes. Actors' days wait in a
`Spool` on disk while they are merged, so memory does not grow with the requests a day.
"""

from __future__ import annotations

import gzip
import heapq
import io
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alambic.errors import InvalidRequestError
from alambic.simulate.campaigns import CAMPAIGNS
from alambic.simulate.population import BENIGN, DAY, Actor, Request, World, make_pools
from alambic.simulate.spool import Spool
from alambic.simulate.text import TextBank

START = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday
CHAT_ENDPOINT = "/v1/chat/completions"
PROGRESS_ROWS = 10_000


@dataclass(frozen=True)
class SimulationSettings:
    seed: int = 0
    days: int = 7
    scale: float = 1.0
    campaigns: tuple[str, ...] = tuple(CAMPAIGNS)
    release_day: float = 3.5  # the new model comes out mid-week
    data: Path | None = None  # real prompts (a directory laid out as ../shared/data), else built-in text


@dataclass
class Simulation:
    """The actors of one simulated world; `rows` streams its log, `labels` says who is who."""

    settings: SimulationSettings
    world: World = field(init=False)
    actors: list[Actor] = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        if s.days < 1 or s.scale <= 0:
            raise InvalidRequestError("--days must be at least 1 and --scale above 0.")
        unknown = sorted(set(s.campaigns) - CAMPAIGNS.keys())
        if unknown:
            raise InvalidRequestError(
                f"Unknown campaign style {', '.join(unknown)}; choose from {', '.join(CAMPAIGNS)}."
            )
        rng = random.Random(s.seed)
        self.world = World(
            s.seed,
            s.days,
            s.scale,
            TextBank.from_directory(s.data),
            min(s.release_day, s.days - 0.5) * DAY,
            make_pools(rng, s.scale),
            rng,
        )
        self.actors = [actor for build in BENIGN.values() for actor in build(self.world)]
        for number, style in enumerate(s.campaigns):
            self.actors += CAMPAIGNS[style](self.world, f"campaign-{number + 1}-{style}")

    def labels(self, accounts: set[str] | None = None) -> dict[str, dict[str, Any]]:
        """Who is who (of `accounts`, e.g. those that sent anything), never written into the log itself. Once the
        rows are drawn, `extraction_requests` counts a campaign account's requests that carried its campaign's
        prompts (a `conversational` session once, follow-ups and all; the rest is cover traffic; None for a benign
        account)."""
        return {
            a.account: {
                "kind": a.kind,
                "style": a.style,
                "campaign_id": a.campaign_id,
                "extraction_requests": a.state["position"] if a.kind == "campaign" else None,
            }
            for a in self.actors
            if accounts is None or a.account in accounts
        }

    def rows(self) -> Iterator[dict[str, Any]]:
        """v1 rows in time order."""
        with Spool() as spool:
            streams = [
                _timeline(index, actor.days(self.world, spool.in_time_order)) for index, actor in enumerate(self.actors)
            ]
            for number, (at, index, _order, request) in enumerate(heapq.merge(*streams, key=lambda e: e[:3])):
                yield self._row(number, at, self.actors[index], request)

    def _row(self, number: int, at: float, actor: Actor, request: Request) -> dict[str, Any]:
        rng = random.Random((self.settings.seed << 32) ^ number)  # per row, so rows do not depend on each other
        prompt_tokens = sum(len(m.get("content") or "") for m in request.messages or []) // 4 + 4
        max_tokens = request.params.get("max_tokens")
        answer = min(request.answer_tokens, max_tokens) if max_tokens else request.answer_tokens
        served = request.status == 200
        return {
            "id": f"sim-{self.settings.seed}-{number:09d}",
            "time": (START + timedelta(seconds=at)).isoformat(timespec="milliseconds"),
            "account": actor.account,
            "client_ip": request.address or rng.choice(actor.addresses),
            "user_agent": actor.user_agent,
            "endpoint": CHAT_ENDPOINT,
            "model": request.model,
            "messages": request.messages,
            "params": request.params,
            "response": f"[{answer} tokens]" if served else None,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": answer * (request.params.get("n") or 1) if served else 0,  # all samples' (usage)
            "status": request.status,
            "latency_ms": round(120 + answer * rng.uniform(15, 30), 1) if served else round(rng.uniform(5, 40), 1),
        }


def _timeline(index: int, requests: Iterator[Request]) -> Iterator[tuple[float, int, int, Request]]:
    for order, request in enumerate(requests):
        yield request.at, index, order, request


def write_jsonl(
    simulation: Simulation,
    out: Path,
    labels: Path | None = None,
    on_progress: Callable[[int], None] = lambda rows: None,
) -> int:
    """The log to `out` (JSONL, gzipped if it ends in .gz) and the labels beside it; returns the rows written.
    `on_progress` hears of the rows written, a page at a time."""
    out.parent.mkdir(parents=True, exist_ok=True)
    written, accounts = 0, set()
    with _text_file(out) as handle:
        for row in simulation.rows():
            handle.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
            accounts.add(row["account"])
            written += 1
            if written % PROGRESS_ROWS == 0:
                on_progress(PROGRESS_ROWS)
    on_progress(written % PROGRESS_ROWS)
    write_labels(simulation, labels or out.parent / "labels.json", accounts)
    return written


def _text_file(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):  # no time stamp in the header: the same settings give the same bytes
        raw = open(path, "wb")  # noqa: SIM115 (closed with the wrapper)
        return io.TextIOWrapper(gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0), encoding="utf-8")
    return open(path, "w", encoding="utf-8")


def write_labels(simulation: Simulation, path: Path, accounts: set[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(simulation.labels(accounts), indent=1, sort_keys=True) + "\n")
