"""Extraction campaigns, as providers reported them: bulk, sharded over linked accounts, chain-of-thought
elicitation, a pivot onto a new model, and the hydra; plus styles an adversary who read the monitor would try.

Each style is one function in `CAMPAIGNS`: (world, campaign id) -> its accounts. Labels never enter the log.
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Callable, Sequence

from alambic.simulate.population import (
    BROWSER_AGENTS,
    BUSINESS_HOURS,
    DAY,
    EVENING_HOURS,
    FLAT_HOURS,
    NEW_MODEL,
    SDK_AGENTS,
    Actor,
    Request,
    World,
    address_in,
    chat,
    chat_sessions,
)
from alambic.simulate.text import FOLLOW_UPS, Prompts

# Styles kept out of sight while the monitor is designed: it is scored on them last.
HELD_OUT = ("low-and-slow", "mimic", "paraphrase", "conversational")
# Per hydra account, alive one or two days: fewer requests than the benign median account sends in a week.
HYDRA_DAILY_VOLUME, HYDRA_REQUESTS = 8.0, (5, 14)


def _extract(
    prompts: Sequence[str],
    params: dict,
    hours: list[float],
    *,
    reasoning: bool = False,
    cover: float = 0.0,
    new_model: bool = False,
):
    """Works through `prompts` in order at the actor's daily volume; `cover` of its requests look benign."""

    def behave(actor: Actor, world: World, rng: random.Random, day: int) -> list[Request]:
        if not actor.state["first"] <= day < actor.state["last"]:
            return []
        requests = []
        for t in world.times(rng, day, actor.state["volume"], hours, actor.tz_hours):
            if new_model and t < world.release_at:
                continue
            if actor.state["sent"] >= actor.state["budget"]:
                break
            actor.state["sent"] += 1
            if rng.random() < cover:
                requests.append(
                    Request(
                        t,
                        messages=chat(None, world.text.conversation(rng)[0]),
                        params={"temperature": 0.7},
                        answer_tokens=rng.randint(50, 300),
                        address=rng.choice(actor.addresses),
                    )
                )
                continue
            position = actor.state["position"]
            actor.state["position"] = position + 1
            prompt = prompts[position % len(prompts)]
            if reasoning:
                prompt = f"{prompt}\n\n{world.text.reasoning(rng)}"
            requests.append(
                Request(
                    t,
                    messages=chat(None, prompt),
                    params=dict(params),
                    model=NEW_MODEL if new_model else world.model_at(t, actor.state.get("adopts")),
                    answer_tokens=rng.randint(250, params.get("max_tokens") or 1024),
                    address=rng.choice(actor.addresses),
                )
            )
        return requests

    return behave


def _campaign_actor(
    world: World, campaign: str, style: str, agent: str, addresses: list[str], behave: Callable, **state
) -> Actor:
    return Actor(
        world.account_name(),
        "campaign",
        style,
        campaign,
        agent,
        addresses,
        behave,
        world.rng.getrandbits(64),
        state.pop("tz", 0),
        {"first": 0, "last": world.days, "position": 0, "sent": 0, "budget": math.inf, **state},
    )


def _prompt_set(world: World, per_week: int, accounts: int) -> Prompts:
    """A campaign's prompts: `per_week` scaled to the simulation, at least a few for each account."""
    return world.text.task_set(max(world.weekly(per_week), accounts * 3), seed=world.rng.getrandbits(32))


def _crew(
    world: World,
    campaign: str,
    style: str,
    prompts: Prompts,
    accounts: int,
    behaviour: Callable[[Prompts], Callable],
    *,
    agent: Callable[[], str],
    addresses: Callable[[], list[str]],
    tz: Callable[[], int] = lambda: 0,
    volume: float | None = None,
    days: float | None = None,
    **state,
) -> list[Actor]:
    """`accounts` actors of one campaign, each working through its own slice of `prompts` at `volume` a day
    (by default, its whole slice over `days`, the simulation's length); `agent`, `addresses` and `tz` are
    drawn for each actor."""
    per_day = volume if volume is not None else len(prompts) / accounts / (days or world.days)
    return [
        _campaign_actor(
            world,
            campaign,
            style,
            agent(),
            addresses(),
            behaviour(prompts[i::accounts]),
            tz=tz(),
            volume=per_day,
            **state,
        )
        for i in range(accounts)
    ]


def bulk(world: World, campaign: str) -> list[Actor]:
    """One account asking for everything, fast, with long answers."""
    return _crew(
        world,
        campaign,
        "bulk",
        _prompt_set(world, 20000, 1),
        1,
        lambda prompts: _extract(prompts, {"max_tokens": 1024, "temperature": 0.7}, FLAT_HOURS),
        agent=lambda: "python-httpx/0.28.1",
        addresses=lambda: [address_in(world.rng, 47)],
    )


def sharded(world: World, campaign: str) -> list[Actor]:
    """Twenty linked accounts, each with its own disjoint slice of one prompt set, paced alike."""
    prompts = _prompt_set(world, 12000, 20)
    addresses = world.rng.sample(world.pools["cloud-nat"], 5)
    agent = world.rng.choice(SDK_AGENTS)
    return _crew(
        world,
        campaign,
        "sharded",
        prompts,
        20,
        lambda prompts: _extract(prompts, {"max_tokens": 800, "temperature": 0.8}, FLAT_HOURS),
        agent=lambda: agent,
        addresses=lambda: addresses,
    )


def chain_of_thought(world: World, campaign: str) -> list[Actor]:
    """Reasoning traces over many domains: every prompt asks for all the steps."""
    return _crew(
        world,
        campaign,
        "chain-of-thought",
        _prompt_set(world, 6000, 3),
        3,
        lambda prompts: _extract(prompts, {"max_tokens": 2048, "temperature": 0.6}, BUSINESS_HOURS, reasoning=True),
        agent=lambda: world.rng.choice(SDK_AGENTS),
        addresses=lambda: [address_in(world.rng, 47)],
    )


def pivot(world: World, campaign: str) -> list[Actor]:
    """Within hours of the new model's release, a topic sweep of it from a few accounts."""
    return _crew(
        world,
        campaign,
        "pivot",
        _prompt_set(world, 4000, 4),
        4,
        lambda prompts: _extract(prompts, {"max_tokens": 1024, "temperature": 0.7}, FLAT_HOURS, new_model=True),
        agent=lambda: world.rng.choice(SDK_AGENTS),
        addresses=lambda: [address_in(world.rng, 47)],
        days=max(1.0, world.days - world.release_at / DAY),
        first=int(world.release_at // DAY),
    )


def hydra(world: World, campaign: str) -> list[Actor]:
    """Hundreds of short-lived accounts of one orchestrator, each under the benign median volume, rotating
    through the shared egress pools, with benign clients' user agents and parameters, and cover traffic."""
    accounts = world.count(300)
    prompts = world.text.task_set(accounts * 20, seed=world.rng.getrandbits(32))
    pools = world.pools["vpn"] + world.pools["carrier-nat"] + world.pools["cloud-nat"]
    actors = []
    for i in range(accounts):
        first = world.rng.randrange(world.days)
        params = world.rng.choice(
            [{"temperature": 0.7, "stream": True}, {"max_tokens": 256, "temperature": 0.3}, {"temperature": 0.7}]
        )
        agent = world.rng.choice(BROWSER_AGENTS + SDK_AGENTS)
        behave = _extract(prompts[i::accounts], params, EVENING_HOURS, cover=0.3)
        actors.append(
            _campaign_actor(
                world,
                campaign,
                "hydra",
                agent,
                world.rng.sample(pools, 4),
                behave,
                first=first,
                last=first + world.rng.randint(1, 2),
                tz=world.rng.randint(-8, 9),
                volume=HYDRA_DAILY_VOLUME,
                budget=world.rng.randint(*HYDRA_REQUESTS),
            )
        )
    return actors


def low_and_slow(world: World, campaign: str) -> list[Actor]:
    """A few accounts that extract all week at a person's pace, in a person's hours, from a browser."""
    return _crew(
        world,
        campaign,
        "low-and-slow",
        _prompt_set(world, 2000, 5),
        5,
        lambda prompts: _extract(prompts, {"temperature": 0.7, "stream": True}, EVENING_HOURS),
        agent=lambda: world.rng.choice(BROWSER_AGENTS),
        addresses=lambda: world.rng.sample(world.pools["carrier-nat"], 2),
        tz=lambda: world.rng.randint(-8, 9),
        volume=5.0,
    )


def mimic(world: World, campaign: str) -> list[Actor]:
    """Extraction dressed as a support-bot integration: a company's long system prompt around each task."""
    prompts = _prompt_set(world, 5000, 10)
    system = world.text.support_system(world.rng.choice(["Contoso Bank", "Globex Telecom"]))
    return _crew(
        world,
        campaign,
        "mimic",
        prompts.map(lambda _, task: f"{system}\n\nCustomer question: {task}"),
        10,
        lambda prompts: _extract(prompts, {"max_tokens": 400, "temperature": 0.7}, BUSINESS_HOURS),
        agent=lambda: world.rng.choice(SDK_AGENTS),
        addresses=lambda: [address_in(world.rng, 52)],
    )


def paraphrase(world: World, campaign: str) -> list[Actor]:
    """Fifty unlinked-looking accounts, each prompt reworded, so that no two accounts share text."""
    prompts = _prompt_set(world, 5000, 50)
    openers = ["Quick question:", "Hi! I was wondering,", "For my class:", "Could you help?", "Please:"]
    rng = random.Random(world.seed + 7)
    opened = array("B", (rng.randrange(len(openers)) for _ in range(len(prompts))))
    return _crew(
        world,
        campaign,
        "paraphrase",
        prompts.map(lambda i, task: f"{openers[opened[i]]} {task[0].lower()}{task[1:]}"),
        50,
        lambda prompts: _extract(prompts, {"temperature": 0.7}, EVENING_HOURS),
        agent=lambda: world.rng.choice(BROWSER_AGENTS + SDK_AGENTS),
        addresses=lambda: world.rng.sample(world.pools["vpn"], 2),
        tz=lambda: world.rng.randint(-8, 9),
        volume=math.ceil(len(prompts) / 50 / world.days),
    )


def conversational(world: World, campaign: str) -> list[Actor]:
    """Extraction dressed as people chatting: each task opens a session of follow-ups at a person's pace, from a
    few accounts, each at its own home address, with a browser, in its own time zone, as a heavy chatter."""
    accounts = 10
    prompts = _prompt_set(world, 1500, accounts)
    actors = []
    for i in range(accounts):

        def turns(actor: Actor, _world: World, rng: random.Random, tasks: Prompts = prompts[i::accounts]) -> list[str]:
            position = actor.state["position"]
            actor.state["position"] = position + 1
            return [tasks[position % len(tasks)], *rng.sample(FOLLOW_UPS, rng.randint(0, 3))]

        actors.append(
            _campaign_actor(
                world,
                campaign,
                "conversational",
                world.rng.choice(BROWSER_AGENTS),
                [address_in(world.rng, 88)],
                chat_sessions(turns, {"temperature": 0.7, "stream": True}, EVENING_HOURS, (25, 180)),
                tz=world.rng.randint(-10, 10),
                active=0.95,
                sessions=8.0,
            )
        )
    return actors


CAMPAIGNS: dict[str, Callable[[World, str], list[Actor]]] = {
    "bulk": bulk,
    "sharded": sharded,
    "chain-of-thought": chain_of_thought,
    "pivot": pivot,
    "hydra": hydra,
    "low-and-slow": low_and_slow,
    "mimic": mimic,
    "paraphrase": paraphrase,
    "conversational": conversational,
}
