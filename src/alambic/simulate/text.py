"""The words of simulated traffic: prompts for each kind of caller, from small built-in banks or real data.

The built-in banks are original and small, so the product needs no data set; `TextBank.from_directory`
adds real prompts (ShareGPT conversations, GSM8K, the self-instruct seed tasks) where a user has them.
"""

from __future__ import annotations

import json
import random
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import overload

DOMAINS = {
    "physics": ["entropy", "momentum", "quantum tunnelling", "black-body radiation", "the Doppler effect", "torque"],
    "biology": ["photosynthesis", "mitosis", "the Krebs cycle", "CRISPR", "natural selection", "protein folding"],
    "chemistry": ["covalent bonds", "titration", "catalysis", "oxidation states", "Le Chatelier's principle"],
    "history": ["the fall of Rome", "the printing press", "the Meiji Restoration", "the Silk Road", "the Cold War"],
    "economics": ["inflation", "comparative advantage", "game theory", "monetary policy", "price elasticity"],
    "law": ["contract formation", "habeas corpus", "fair use", "tort liability", "due process"],
    "medicine": ["hypertension", "antibiotic resistance", "vaccination", "type 2 diabetes", "sepsis"],
    "mathematics": ["eigenvalues", "prime factorisation", "Bayes' theorem", "integration by parts", "group theory"],
    "computer science": ["hash tables", "dynamic programming", "garbage collection", "TCP congestion control"],
    "programming": ["Python decorators", "Rust lifetimes", "SQL window functions", "async/await", "regexes"],
    "finance": ["discounted cash flow", "bond duration", "options pricing", "index funds", "compound interest"],
    "philosophy": ["utilitarianism", "the trolley problem", "epistemology", "free will", "the social contract"],
    "psychology": ["cognitive dissonance", "operant conditioning", "the Dunning-Kruger effect", "attachment"],
    "geography": ["plate tectonics", "monsoons", "river deltas", "urbanisation", "desertification"],
    "literature": ["unreliable narrators", "the hero's journey", "magical realism", "iambic pentameter"],
    "astronomy": ["exoplanets", "neutron stars", "dark matter", "the cosmic microwave background"],
    "engineering": ["load-bearing beams", "PID controllers", "heat exchangers", "signal filtering"],
    "cooking": ["sourdough starters", "emulsions", "braising", "the Maillard reaction", "fermentation"],
    "music": ["counterpoint", "the circle of fifths", "syncopation", "equal temperament"],
    "linguistics": ["phonemes", "code-switching", "language families", "syntax trees"],
}
TASKS = [
    "Explain {concept} in {domain} to a university student.",
    "Write a detailed answer: what is {concept} and why does it matter in {domain}?",
    "Give three worked examples of {concept} ({domain}).",
    "Compare {concept} with a related idea in {domain}, with a table.",
    "What are common misconceptions about {concept}? Answer as a {domain} expert.",
    "Write an exam question about {concept} in {domain} and its model answer.",
    "Summarise the key facts about {concept} for a {domain} study guide.",
    "Describe the history and current research on {concept} in {domain}.",
]
REASONING = [
    "Think step by step and show all of your reasoning before the final answer.",
    "Explain your full chain of thought, every intermediate step, then give the answer.",
    "Reason carefully out loud; list each step of your thinking.",
]
PRODUCTS = [
    "wireless earbuds",
    "a standing desk",
    "trail running shoes",
    "a cast-iron pan",
    "a smart thermostat",
    "a backpack",
    "a mechanical keyboard",
    "an air purifier",
    "a yoga mat",
    "an e-reader",
    "a drone",
]
ADJECTIVES = ["lightweight", "durable", "affordable", "premium", "compact", "eco-friendly", "quiet", "fast"]
LANGUAGES = ["French", "German", "Spanish", "Japanese", "Portuguese", "Italian", "Korean", "Dutch", "Polish"]
SENTENCES = [
    "Your order has shipped and will arrive within three business days.",
    "Please reset your password using the link we sent to your email.",
    "The meeting has been moved to Thursday at 10 a.m.",
    "Thank you for your feedback; we are looking into the issue.",
    "This product is covered by a two-year limited warranty.",
    "Our office will be closed on public holidays.",
    "The invoice is attached; payment is due in thirty days.",
    "We could not process your payment. Please update your card details.",
]
REVIEWS = [
    "Arrived quickly and works exactly as described.",
    "Broke after two days, very disappointed.",
    "It's fine, nothing special.",
    "Best purchase I've made this year!",
    "Customer service never replied.",
    "Good value for the price but the battery is weak.",
    "Terrible smell out of the box.",
    "Does what it says. Would buy again.",
    "The size chart was wrong, had to return it.",
]
COMPANIES = [
    "Northwind",
    "Contoso Bank",
    "Globex Telecom",
    "Initech Cloud",
    "Umbrella Health",
    "Acme Travel",
    "Soylent Foods",
    "Vandelay Imports",
    "Hooli Mail",
    "Stark Energy",
    "Wayne Logistics",
    "Tyrell Insurance",
]
COMPLAINTS = [
    "I was charged twice for my subscription this month.",
    "My package says delivered but I never got it.",
    "How do I change the address on my account?",
    "The app keeps logging me out.",
    "Can I get a refund for a cancelled booking?",
    "My internet has been down since yesterday.",
    "I want to upgrade my plan, what are the options?",
    "Why was my claim rejected?",
    "The promo code does not work at checkout.",
    "How do I export my data?",
]
CODE_TOPICS = [
    ("python", "def parse(rows):\n    return [r.split(',') for r in rows]"),
    ("typescript", "export function debounce(fn: () => void, ms: number) {\n  let t: any;\n}"),
    ("sql", "SELECT user_id, COUNT(*) FROM orders GROUP BY 1 HAVING COUNT(*) > 5;"),
    ("rust", "fn longest<'a>(x: &'a str, y: &'a str) -> &'a str { if x.len() > y.len() { x } else { y } }"),
    ("go", "func worker(jobs <-chan int, results chan<- int) {\n  for j := range jobs { results <- j * 2 }\n}"),
    ("java", "public int fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }"),
]
CODE_ASKS = [
    "Why does this fail on empty input?",
    "Add type hints and tests.",
    "Make this faster.",
    "Explain what this does line by line.",
    "Refactor this to be more idiomatic.",
    "Find the bug.",
]
CHAT_OPENERS = [
    "Can you help me plan a 5-day trip to {place}?",
    "What's a good recipe for {food} without an oven?",
    "My cat keeps {habit}. Is that normal?",
    "Help me write a birthday message for my {relative}.",
    "I'm feeling stressed about {worry}. Any advice?",
    "Write a short poem about {thing}.",
    "What should I read if I liked {book}?",
    "How do I ask my manager for {request}?",
    "Explain {concept} like I'm five.",
    "Give me ideas for a {event} party.",
]
FILLS = {
    "place": ["Lisbon", "Kyoto", "Oaxaca", "Iceland", "Marrakesh", "the Scottish Highlands", "Hanoi"],
    "food": ["lentil curry", "pad thai", "shakshuka", "risotto", "dumplings", "banana bread"],
    "habit": ["knocking things off tables", "sleeping in the sink", "meowing at night", "chewing cables"],
    "relative": ["grandmother", "brother", "best friend", "colleague", "daughter"],
    "worry": ["my exams", "a job interview", "moving abroad", "money", "a presentation"],
    "thing": ["the sea", "autumn", "coffee", "a city at night", "old friends"],
    "book": ["Dune", "Pride and Prejudice", "The Hobbit", "Sapiens", "Norwegian Wood"],
    "request": ["a raise", "remote work", "time off", "a new project"],
    "concept": ["inflation", "black holes", "vaccines", "the internet", "taxes"],
    "event": ["retirement", "garden", "board game", "surprise", "graduation"],
}
FOLLOW_UPS = [
    "Can you make it shorter?",
    "Thanks! Can you give more detail on the second point?",
    "What about on a budget?",
    "Can you rewrite it in a friendlier tone?",
    "Why?",
    "Give an example.",
]
WORDS = [
    "the",
    "of",
    "system",
    "data",
    "model",
    "user",
    "value",
    "report",
    "result",
    "process",
    "market",
    "team",
    "product",
    "policy",
    "service",
    "customer",
    "time",
    "level",
    "order",
    "change",
    "plan",
    "account",
    "quality",
    "cost",
    "region",
    "growth",
    "risk",
    "revenue",
    "support",
    "network",
    "project",
    "record",
    "review",
    "method",
    "energy",
    "health",
    "rate",
    "source",
    "claim",
    "contract",
    "schedule",
]
VARIATIONS = ["Be thorough.", "Use examples.", "Be precise.", "Cite the key facts.", "Go into depth."]
HOMEWORK = [
    "A train travels {a} km in {b} hours. What is its average speed?",
    "Sara has {a} apples and gives away {b}. How many are left?",
    "A rectangle is {a} cm by {b} cm. What is its area?",
    "If {a} workers build a wall in {b} days, how long would twice as many take?",
    "Tom saves ${a} a week for {b} weeks. How much has he saved?",
]


class Prompts(Sequence[str]):
    """A sequence of prompts made when each is asked for: a campaign's set costs a few bytes a prompt, however
    many days it runs. Slicing and `map` give views, not copies."""

    def __init__(self, size: int, make: Callable[[int], str]) -> None:
        self._size, self._make = size, make

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Prompts: ...
    def __getitem__(self, index: int | slice) -> str | Prompts:
        if isinstance(index, slice):
            picked = range(self._size)[index]
            return Prompts(len(picked), lambda i: self._make(picked[i]))
        if not -self._size <= index < self._size:
            raise IndexError(index)
        return self._make(index % self._size)

    def map(self, wrap: Callable[[int, str], str]) -> Prompts:
        """Each prompt rewritten by `wrap(index, prompt)`."""
        return Prompts(self._size, lambda i: wrap(i, self._make(i)))


@dataclass
class TextBank:
    """Prompt material; every method takes the caller's own `random.Random` so output is deterministic."""

    conversations: list[list[str]] = field(default_factory=list)  # real multi-turn chats (user turns)
    questions: list[str] = field(default_factory=list)  # real task prompts (GSM8K, seed tasks)

    @classmethod
    def from_directory(cls, data: Path | None) -> TextBank:
        """Real prompts from a directory laid out as `../shared/data` (sharegpt/, gsm8k/, alpaca-seed-tasks/)."""
        bank = cls()
        if data is None:
            return bank
        for line in _lines(data / "sharegpt" / "conversations.jsonl"):
            turns = [t[:1500] for t in json.loads(line)["turns"] if t.strip()]
            if turns:
                bank.conversations.append(turns)
        bank.questions += [json.loads(line)["question"] for line in _lines(data / "gsm8k" / "train.jsonl")]
        for line in _lines(data / "alpaca-seed-tasks" / "seed_tasks.jsonl"):
            task = json.loads(line)
            for instance in task["instances"]:
                bank.questions.append(f"{task['instruction']}\n{instance['input']}".strip())
        return bank

    # --- benign integrations -------------------------------------------------------------------------
    def document(self, rng: random.Random, sentences: int) -> str:
        return " ".join(rng.choices(self._sentences, k=sentences))

    def summarise(self, rng: random.Random) -> str:
        return f"Summarize the following article in 3 bullet points:\n\n{self.document(rng, rng.randint(6, 20))}"

    def extract(self, rng: random.Random) -> str:
        fields = ", ".join(rng.sample(["name", "date", "amount", "vendor", "address", "invoice number"], 3))
        return f"Extract {fields} as JSON from this document:\n{self.document(rng, rng.randint(3, 8))}"

    def rag(self, rng: random.Random, company: str) -> str:
        snippets = "\n".join(f"[{i}] {self.document(rng, 2)}" for i in range(1, rng.randint(3, 6)))
        return f"Context:\n{snippets}\n\nQuestion: {rng.choice(COMPLAINTS)} (customer of {company})"

    def support_system(self, company: str) -> str:
        rules = " ".join(f"Rule {i}: {s}" for i, s in enumerate(SENTENCES, start=1))
        return (
            f"You are the virtual assistant of {company}. Be polite, concise and accurate. Never reveal "
            f"internal policies. Escalate billing disputes to a human. {rules} Always end by asking whether "
            "the customer needs anything else."
        )

    def classify(self, rng: random.Random) -> str:
        return (
            "Classify the sentiment of this review as positive, negative or neutral. Answer with one word."
            f"\n\nReview: {rng.choice(REVIEWS)} {rng.choice(REVIEWS)}"
        )

    def translate(self, rng: random.Random) -> str:
        return f"Translate into {rng.choice(LANGUAGES)}: {rng.choice(SENTENCES)}"

    def product(self, rng: random.Random) -> str:
        return f"Write a {rng.choice(ADJECTIVES)} product description for {rng.choice(PRODUCTS)}, 80 words."

    def code_question(self, rng: random.Random) -> str:
        language, snippet = rng.choice(CODE_TOPICS)
        return f"```{language}\n{snippet}\n```\n{rng.choice(CODE_ASKS)}"

    def agent_task(self, rng: random.Random) -> str:
        return f"Find the cheapest flight to {rng.choice(FILLS['place'])} next week and book a hotel nearby."

    def homework(self, rng: random.Random) -> str:
        if self.questions and rng.random() < 0.5:
            return rng.choice(self.questions[:2000])  # the GSM8K part
        return rng.choice(HOMEWORK).format(a=rng.randint(2, 90), b=rng.randint(2, 12))

    def benchmark(self, size: int, seed: int) -> list[str]:
        """A fixed benchmark: the same questions every run."""
        rng = random.Random(seed)
        if self.questions:
            return rng.sample(self.questions, min(size, len(self.questions)))
        return [rng.choice(HOMEWORK).format(a=rng.randint(2, 99), b=rng.randint(2, 30)) for _ in range(size)]

    # --- people ------------------------------------------------------------------------------------------
    def conversation(self, rng: random.Random) -> list[str]:
        """A person's user turns, one session."""
        if self.conversations:
            return rng.choice(self.conversations)
        opener = rng.choice(CHAT_OPENERS)
        opener = opener.format(**{k: rng.choice(v) for k, v in FILLS.items() if "{" + k + "}" in opener})
        return [opener, *rng.sample(FOLLOW_UPS, rng.randint(0, 3))]

    # --- extraction --------------------------------------------------------------------------------------
    def task_set(self, size: int, seed: int) -> Prompts:
        """A campaign's prompt set: distinct tasks covering every domain systematically, the banks' tasks in a
        shuffled order, then reworded ones past them (made as they are asked for)."""
        rng = random.Random(seed)
        bank = self._tasks
        order = array("I", range(len(bank)))
        rng.shuffle(order)  # the order alone, drawn as the tasks themselves would be
        originals = len(bank)
        reworded = array("B", (rng.randrange(len(VARIATIONS)) for _ in range(originals, size)))

        def task(index: int) -> str:
            base = bank[order[index % originals]]
            if index < originals:
                return base
            return f"{base} {VARIATIONS[reworded[index - originals]]} (part {index // originals + 1})"

        return Prompts(size, task)

    def reasoning(self, rng: random.Random) -> str:
        return rng.choice(REASONING)

    @cached_property
    def _tasks(self) -> list[str]:
        """Every built-in task in every domain, then the real task prompts."""
        built = [
            template.format(concept=concept, domain=domain)
            for domain, concepts in DOMAINS.items()
            for concept in concepts
            for template in TASKS
        ]
        return built + self.questions

    @cached_property
    def _sentences(self) -> list[str]:
        """A fixed pool that documents draw from: fast, and varied enough that no two documents match."""
        rng = random.Random(0)
        return [" ".join(rng.choices(WORDS, k=rng.randint(8, 16))).capitalize() + "." for _ in range(4000)]


def _lines(path: Path) -> list[str]:
    # Not str.splitlines: it also splits at the Unicode line separators that JSON strings may hold.
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()] if path.is_file() else []
