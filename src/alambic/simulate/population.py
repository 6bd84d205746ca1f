"""Who calls a simulated API: benign integrations, people and organisations, and extraction campaigns.

Each style is one function registered in `BENIGN` or `CAMPAIGNS`: it makes the style's actors, and each
actor's `days` yields its requests day by day, in time order, from its own random stream. A day's requests
are drawn in the stream's order (a list, or lazily), so the whole day is drawn before it is put in order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from alambic.simulate.text import COMPANIES, COMPLAINTS, TextBank

DAY = 86400.0
HOUR = 3600.0
MODEL, NEW_MODEL = "smollm2", "smollm3"
SDK_AGENTS = [
    "OpenAI/Python 2.3.0",
    "AsyncOpenAI/Python 2.3.0",
    "OpenAI/JS 5.1.0",
    "langchain-openai/0.3.2",
    "python-httpx/0.28.1",
    "LiteLLM/1.74.0",
    "curl/8.5.0",
    "python-requests/2.32.3",
]
IDE_AGENTS = ["vscode-continue/1.2.0", "JetBrains-AI/2025.3", "zed-assistant/0.190", "cursor-ext/0.48"]
BROWSER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
]
BUSINESS_HOURS = [0.2] * 7 + [0.6, 1, 1, 1, 1, 0.8, 1, 1, 1, 0.9, 0.6] + [0.3] * 6
EVENING_HOURS = [0.2] * 7 + [0.5, 0.6, 0.5, 0.5, 0.6, 0.8, 0.6, 0.5, 0.6, 0.8, 1, 1, 1, 1, 0.9, 0.6, 0.3]
FLAT_HOURS = [1.0] * 24


@dataclass
class Request:
    """One simulated request, before it gets its id and time stamp."""

    at: float  # seconds from the simulation's start
    messages: list[dict] | None = None
    prompt: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    model: str = MODEL
    answer_tokens: int = 100
    status: int = 200
    address: str | None = None  # None: one of the actor's addresses


@dataclass
class Actor:
    """One account: its label, where it calls from, and how it behaves."""

    account: str
    kind: str  # benign | campaign
    style: str
    campaign_id: str | None
    user_agent: str
    addresses: list[str]
    behave: Callable[[Actor, World, random.Random, int], Iterable[Request]]  # (actor, world, rng, day) -> requests
    seed: int = 0
    tz_hours: int = 0
    state: dict[str, Any] = field(default_factory=dict)

    def days(self, world: World, in_time_order: Callable[[Iterable[Request]], Iterable[Request]]) -> Iterator[Request]:
        """Each day's requests, drawn in turn and put in time order by `in_time_order` (stable on ties)."""
        rng = random.Random(self.seed)
        for day in range(world.days):
            yield from in_time_order(self.behave(self, world, rng, day))


@dataclass
class World:
    """The simulation's fixed facts: its length, the new model's release, shared egress pools, the text."""

    seed: int
    days: int
    scale: float
    text: TextBank
    release_at: float
    pools: dict[str, list[str]]
    rng: random.Random

    def count(self, base: int) -> int:
        return max(1, round(base * self.scale))

    def weekly(self, base: int) -> int:
        """`base` a week, scaled to the simulation's length and scale."""
        return self.count(base * self.days / 7)

    def account_name(self) -> str:
        return f"u-{self.rng.getrandbits(40):010x}"

    def times(self, rng: random.Random, day: int, per_day: float, hours: list[float], tz_hours: int) -> list[float]:
        """Poisson arrivals over one day, shaped by local hours of activity (weekends quieter)."""
        weekend = (day % 7) in (5, 6)
        n = _poisson(rng, per_day * (0.4 if weekend else 1.0))
        local = rng.choices(range(24), weights=hours, k=n)
        return [day * DAY + ((h - tz_hours) % 24) * HOUR + rng.random() * HOUR for h in local]

    def model_at(self, at: float, adopts_after: float | None) -> str:
        """The model an account asks for: the new one once it is out and the account has moved."""
        if adopts_after is not None and at >= self.release_at + adopts_after:
            return NEW_MODEL
        return MODEL


def _poisson(rng: random.Random, mean: float) -> int:
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def chat(system: str | None, *turns: str) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    for i, turn in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": turn})
    return messages


def adoption(rng: random.Random, eager: float = 0.7) -> float | None:
    """Hours-to-days after the release that an account moves to the new model (None: it stays)."""
    return rng.expovariate(1 / (1.5 * DAY)) if rng.random() < eager else None


def address_in(rng: random.Random, block: int) -> str:
    return f"{block}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def make_pools(rng: random.Random, scale: float) -> dict[str, list[str]]:
    """Egress addresses that many unrelated callers share: VPN exits, cloud NAT, carrier-grade NAT."""
    size = max(8, round(40 * scale))
    return {
        "vpn": [address_in(rng, 185) for _ in range(size)],
        "cloud-nat": [address_in(rng, 34) for _ in range(size)],
        "carrier-nat": [f"100.{rng.randint(64, 127)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}" for _ in range(size)],
    }


# --- benign integrations ----------------------------------------------------------------------------------


def _integration(
    prompt: Callable[[Actor, World, random.Random], list[dict]],
    params: dict,
    answer: tuple[int, int],
    hours: list[float] | None = None,
):
    """A program calling at a steady daily volume: one prompt builder, fixed parameters."""

    def behave(actor: Actor, world: World, rng: random.Random, day: int) -> Iterator[Request]:
        volume, adopts = actor.state["volume"], actor.state["adopts"]
        return (  # drawn lazily: the heavy integration's day is the longest of all
            Request(
                t,
                messages=prompt(actor, world, rng),
                params=dict(params),
                model=world.model_at(t, adopts),
                answer_tokens=rng.randint(*answer),
                status=_status(rng),
            )
            for t in world.times(rng, day, volume, hours or actor.state["hours"], actor.tz_hours)
        )

    return behave


def _status(rng: random.Random) -> int:
    draw = rng.random()
    return 200 if draw > 0.012 else (429 if draw > 0.004 else 500)


INTEGRATIONS: dict[str, tuple[Callable, dict, tuple[int, int]]] = {
    "summarise": (lambda a, w, r: chat(None, w.text.summarise(r)), {"max_tokens": 256, "temperature": 0.3}, (60, 250)),
    "extract": (
        lambda a, w, r: chat(None, w.text.extract(r)),
        {"max_tokens": 200, "temperature": 0, "response_format": {"type": "json_object"}},
        (20, 120),
    ),
    "rag": (
        lambda a, w, r: chat(a.state["system"], w.text.rag(r, a.state["company"])),
        {"max_tokens": 300, "temperature": 0.2},
        (40, 300),
    ),
    "support": (
        lambda a, w, r: chat(a.state["system"], *_support_turns(w, r)),
        {"max_tokens": 400, "temperature": 0.7},
        (40, 250),
    ),
    "classify": (lambda a, w, r: chat(None, w.text.classify(r)), {"max_tokens": 2, "temperature": 0}, (1, 2)),
    "translate": (lambda a, w, r: chat(None, w.text.translate(r)), {"max_tokens": 120, "temperature": 0}, (10, 60)),
}


def _support_turns(world: World, rng: random.Random) -> list[str]:
    turns = [world.text.conversation(rng)[0] if rng.random() < 0.2 else rng.choice(COMPLAINTS)]
    if rng.random() < 0.4:
        turns += ["I'm sorry to hear that. Could you share your account number?", "Sure, it's 40032-1187."]
    return turns


def integrations(world: World) -> list[Actor]:
    """Programs of many sizes, some as organisations with several keys sharing a template and egress."""
    actors: list[Actor] = []
    styles = list(INTEGRATIONS)
    for index in range(world.count(160)):
        style = styles[index % len(styles)]
        keys = world.rng.choice([1, 1, 1, 2, 3]) if index % 4 == 0 else 1  # an organisation: prod, staging, eu
        company = world.rng.choice(COMPANIES)
        shared = {
            "company": company,
            "system": world.text.support_system(company)
            if style == "support"
            else f"You answer questions for {company} customers from the given context only.",
            "hours": world.rng.choice([BUSINESS_HOURS, FLAT_HOURS]),
        }
        agent = world.rng.choice(SDK_AGENTS)
        egress = [address_in(world.rng, 52) for _ in range(world.rng.randint(1, 3))]
        tz = world.rng.choice([-8, -5, 0, 1, 2, 5, 8, 9])
        for key in range(keys):
            volume = math.exp(world.rng.uniform(math.log(10), math.log(1000))) * (0.1 if key else 1.0)
            actors.append(
                Actor(
                    world.account_name(),
                    "benign",
                    f"integration-{style}",
                    None,
                    agent,
                    egress,
                    _integration(*INTEGRATIONS[style]),
                    world.rng.getrandbits(64),
                    tz,
                    {**shared, "volume": volume, "adopts": adoption(world.rng, 0.5)},
                )
            )
    heavy = actors[0]
    heavy.state["volume"], heavy.style = 10000.0 * world.scale, "integration-heavy"
    return actors


def platforms(world: World) -> list[Actor]:
    """Platforms holding one key per customer: one template, one user agent, one set of egress addresses."""
    actors = []
    for _ in range(world.count(3)):
        agent, egress = f"Platform-{world.rng.getrandbits(16):04x}/2.1", [address_in(world.rng, 35) for _ in range(2)]
        style = world.rng.choice(["summarise", "rag", "translate"])
        company = world.rng.choice(COMPANIES)
        for _ in range(15):
            state = {
                "company": company,
                "system": f"You are {company}'s writing helper.",
                "hours": BUSINESS_HOURS,
                "volume": math.exp(world.rng.uniform(math.log(5), math.log(120))),
                "adopts": None,
            }
            actors.append(
                Actor(
                    world.account_name(),
                    "benign",
                    "platform-customer",
                    None,
                    agent,
                    egress,
                    _integration(*INTEGRATIONS[style]),
                    world.rng.getrandbits(64),
                    0,
                    state,
                )
            )
    return actors


def _nightly(actor: Actor, world: World, rng: random.Random, day: int) -> list[Request]:
    start = day * DAY + ((actor.state["hour"] - actor.tz_hours) % 24) * HOUR
    return [
        Request(
            start + rng.random() * 1800,
            messages=chat(None, world.text.product(rng)),
            params={"max_tokens": 200, "temperature": 0.8},
            answer_tokens=rng.randint(90, 200),
        )
        for _ in range(actor.state["batch"])
    ]


def _evaluation(actor: Actor, world: World, rng: random.Random, day: int) -> list[Request]:
    start = day * DAY + ((actor.state["hour"] - actor.tz_hours) % 24) * HOUR
    params = dict(actor.state["params"])
    model = world.model_at(start, actor.state["adopts"])
    return [
        Request(
            start + i * rng.uniform(0.5, 3),
            messages=chat(None, q),
            params=params,
            model=model,
            answer_tokens=rng.randint(50, 250),
        )
        for i, q in enumerate(actor.state["benchmark"])
    ]


def _agent(actor: Actor, world: World, rng: random.Random, day: int) -> list[Request]:
    requests = []
    tools = [{"type": "function", "function": {"name": n}} for n in ("search_flights", "book_hotel", "get_weather")]
    for t in world.times(rng, day, actor.state["volume"] / 5, BUSINESS_HOURS, actor.tz_hours):
        messages = chat("You are a travel agent with tools.", world.text.agent_task(rng))
        for step in range(rng.randint(2, 7)):
            requests.append(
                Request(
                    t,
                    messages=list(messages),
                    params={"tools": tools, "temperature": 0},
                    answer_tokens=rng.randint(15, 80),
                )
            )
            call = f'{{"tool": "{rng.choice(tools)["function"]["name"]}", "arguments": {{"step": {step}}}}}'
            messages += [{"role": "assistant", "content": call}, {"role": "tool", "content": '{"ok": true}'}]
            t += rng.uniform(0.8, 4)
    return requests


def chat_sessions(
    turns: Callable[[Actor, World, random.Random], list[str]],
    params: dict,
    hours: list[float],
    think: tuple[float, float],
):
    """People (or an IDE on their behalf): sessions of turns, each reply read before the next question."""

    def behave(actor: Actor, world: World, rng: random.Random, day: int) -> list[Request]:
        if rng.random() > actor.state["active"]:
            return []
        requests = []
        for t in world.times(rng, day, actor.state["sessions"], hours, actor.tz_hours):
            asked = turns(actor, world, rng)
            messages: list[dict] = []
            address = rng.choice(actor.addresses)
            for turn in asked:
                messages.append({"role": "user", "content": turn})
                answer = rng.randint(80, 500)
                requests.append(
                    Request(
                        t,
                        messages=list(messages),
                        params=dict(params),
                        answer_tokens=answer,
                        model=world.model_at(t, actor.state.get("adopts")),
                        address=address,
                    )
                )
                messages.append({"role": "assistant", "content": f"(answer of {answer} tokens)"})
                t += rng.uniform(*think)
        return requests

    return behave


def programs(world: World) -> list[Actor]:
    """Nightly batches, evaluation harnesses, agent loops and coding assistants."""
    actors = []
    for _ in range(world.count(12)):
        actors.append(
            Actor(
                world.account_name(),
                "benign",
                "nightly-batch",
                None,
                world.rng.choice(SDK_AGENTS),
                [address_in(world.rng, 52)],
                _nightly,
                world.rng.getrandbits(64),
                world.rng.choice([0, -5, 1]),
                {"hour": world.rng.randint(0, 4), "batch": world.rng.randint(50, 900)},
            )
        )
    for i in range(world.count(8)):
        params = world.rng.choice(
            [
                {"temperature": 0, "max_tokens": 512},
                {"n": 5, "temperature": 0.8},
                {"logprobs": True, "top_logprobs": 5, "temperature": 0},
            ]
        )
        actors.append(
            Actor(
                world.account_name(),
                "benign",
                "eval-harness",
                None,
                "lm-eval-harness/0.4.8",
                [address_in(world.rng, 34)],
                _evaluation,
                world.rng.getrandbits(64),
                0,
                {
                    "hour": world.rng.randint(0, 23),
                    "params": params,
                    "adopts": adoption(world.rng, 0.9),
                    "benchmark": world.text.benchmark(world.rng.randint(100, 400), seed=world.seed * 31 + i),
                },
            )
        )
    for _ in range(world.count(12)):
        actors.append(
            Actor(
                world.account_name(),
                "benign",
                "agent-loop",
                None,
                world.rng.choice(SDK_AGENTS),
                [address_in(world.rng, 52)],
                _agent,
                world.rng.getrandbits(64),
                world.rng.choice([-8, 1, 8]),
                {"volume": math.exp(world.rng.uniform(math.log(20), math.log(600)))},
            )
        )
    coding = chat_sessions(
        lambda a, w, r: [w.text.code_question(r) for _ in range(r.randint(1, 5))],
        {"temperature": 0.2, "max_tokens": 1024, "stream": True},
        BUSINESS_HOURS,
        (20, 240),
    )
    for _ in range(world.count(20)):
        actors.append(
            Actor(
                world.account_name(),
                "benign",
                "coding-assistant",
                None,
                world.rng.choice(IDE_AGENTS),
                [address_in(world.rng, world.rng.choice([81, 92]))],
                coding,
                world.rng.getrandbits(64),
                world.rng.choice([-8, -5, 0, 1, 5, 9]),
                {"active": 0.8, "sessions": world.rng.uniform(2, 8), "adopts": adoption(world.rng)},
            )
        )
    return actors


# --- people -----------------------------------------------------------------------------------------------


def people(world: World) -> list[Actor]:
    """People chatting at human pace in many time zones, many behind shared VPN or carrier NAT exits."""
    talk = chat_sessions(
        lambda a, w, r: w.text.conversation(r), {"temperature": 0.7, "stream": True}, EVENING_HOURS, (25, 180)
    )
    actors = []
    for _ in range(world.count(200)):
        pool = world.rng.choice(["home", "home", "vpn", "carrier-nat"])
        addresses = [address_in(world.rng, 88)] if pool == "home" else world.rng.sample(world.pools[pool], 3)
        actors.append(
            Actor(
                world.account_name(),
                "benign",
                "person",
                None,
                world.rng.choice(BROWSER_AGENTS + SDK_AGENTS[:1]),
                addresses,
                talk,
                world.rng.getrandbits(64),
                world.rng.randint(-10, 10),
                {
                    "active": world.rng.uniform(0.2, 0.9),
                    "sessions": world.rng.uniform(0.5, 3),
                    "adopts": adoption(world.rng, 0.5),
                },
            )
        )
    return actors


def _sandbox(actor: Actor, world: World, rng: random.Random, day: int) -> list[Request]:
    if day not in actor.state["days"]:
        return []
    prompts = [world.text.conversation(rng)[0], world.text.code_question(rng), "Say hello", "test"]
    return [
        Request(
            t,
            messages=chat(None, rng.choice(prompts)),
            params=rng.choice([{}, {"max_tokens": 50}]),
            answer_tokens=rng.randint(5, 200),
            status=rng.choice([200] * 9 + [400]),
        )
        for t in world.times(rng, day, rng.randint(3, 30), BUSINESS_HOURS, actor.tz_hours)
    ]


def _classroom(actor: Actor, world: World, rng: random.Random, day: int) -> list[Request]:
    if day not in actor.state["days"]:
        return []
    start = day * DAY + ((actor.state["hour"] - actor.tz_hours) % 24) * HOUR
    return [
        Request(
            start + rng.random() * 3000,
            messages=chat(None, world.text.homework(rng)),
            params={},
            answer_tokens=rng.randint(60, 300),
        )
        for _ in range(rng.randint(5, 15))
    ]


def small_users(world: World) -> list[Actor]:
    """Developers' sandboxes, classrooms behind one address, and one-off benchmark runs."""
    actors = []
    for _ in range(world.count(150)):
        days = set(world.rng.sample(range(world.days), world.rng.randint(1, min(3, world.days))))
        actors.append(
            Actor(
                world.account_name(),
                "benign",
                "sandbox",
                None,
                world.rng.choice(SDK_AGENTS),
                world.rng.sample(world.pools["cloud-nat"] + world.pools["vpn"], 1),
                _sandbox,
                world.rng.getrandbits(64),
                world.rng.randint(-8, 9),
                {"days": days},
            )
        )
    for _ in range(world.count(2)):
        school, days = [address_in(world.rng, 145)], set(world.rng.sample(range(world.days), min(2, world.days)))
        hour, tz = world.rng.randint(9, 14), world.rng.choice([-5, 1])
        for _ in range(30):
            actors.append(
                Actor(
                    world.account_name(),
                    "benign",
                    "classroom",
                    None,
                    world.rng.choice(BROWSER_AGENTS),
                    school,
                    _classroom,
                    world.rng.getrandbits(64),
                    tz,
                    {"days": days, "hour": hour},
                )
            )
    for i in range(world.count(4)):
        run = {
            "hour": world.rng.randint(8, 20),
            "params": {"temperature": 0, "max_tokens": 512},
            "adopts": None,
            "benchmark": world.text.benchmark(world.rng.randint(300, 1000), seed=world.seed * 17 + i),
        }
        day = world.rng.randrange(world.days)
        once = _once(_evaluation, day)
        actors.append(
            Actor(
                world.account_name(),
                "benign",
                "benchmark-run",
                None,
                "lm-eval-harness/0.4.8",
                [address_in(world.rng, 34)],
                once,
                world.rng.getrandbits(64),
                0,
                run,
            )
        )
    return actors


def _once(behave: Callable, on_day: int) -> Callable:
    return lambda actor, world, rng, day: behave(actor, world, rng, day) if day == on_day else []


BENIGN: dict[str, Callable[[World], list[Actor]]] = {
    "integrations": integrations,
    "platforms": platforms,
    "programs": programs,
    "people": people,
    "small-users": small_users,
}
