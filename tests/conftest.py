"""Shared fixtures: one tiny model and engine per session, a fresh store and live gateway per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI
from sqlalchemy import create_engine, make_url, text

from alambic.generation import GenerationEngine
from alambic.generation.backends import TransformersBackend
from alambic.models import LoadedModel, tiny_model
from alambic.serve import GatewaySettings, create_app
from alambic.serve.server import serve_in_thread
from alambic.store import Policy, Store, create_account

ADMIN_KEY = "test-admin-key"
POSTGRES_URL = os.environ.get("ALAMBIC_TEST_POSTGRES_URL")
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # read in place, never copied here


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    return tiny_model()


@pytest.fixture(scope="session")
def engine(tiny: LoadedModel) -> Iterator[GenerationEngine]:
    engine = GenerationEngine(TransformersBackend(tiny), max_batch_size=32)
    yield engine
    engine.close()


@contextmanager
def fresh_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: a SQLite file, or a new database on the CI's PostgreSQL server."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'alambic.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("no PostgreSQL: set ALAMBIC_TEST_POSTGRES_URL (.ci/run starts a server)")
    name = f"alambic_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Every test that uses the store runs on SQLite and on PostgreSQL."""
    with fresh_database(request.param, tmp_path) as url:
        store = Store(url)
        yield store
        store.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'alambic.db'}")
    yield store
    store.close()


@dataclass
class LiveGateway:
    url: str
    store: Store
    model: str
    app: FastAPI

    def key(self, name: str, policy: Policy = Policy.ALLOW, **limits: int) -> str:
        return create_account(self.store, name, policy=policy, **limits)

    def client(self, key: str, **options) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, **options)

    def async_client(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)

    def post(self, path: str, key: str | None = None, **kwargs) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.post(f"{self.url}{path}", headers=headers, timeout=60, **kwargs)


def start_gateway(engine: GenerationEngine, store: Store, **settings) -> Iterator[LiveGateway]:
    app = create_app(engine, store, GatewaySettings(admin_key=ADMIN_KEY, **settings))
    with serve_in_thread(app) as url:
        yield LiveGateway(url, store, engine.backend.name, app)


@pytest.fixture
def gateway(engine: GenerationEngine, store: Store) -> Iterator[LiveGateway]:
    yield from start_gateway(engine, store, max_tokens_limit=512)


@pytest.fixture(scope="session")
def sharp_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny teacher whose answers depend on the prompt, saved as a model directory."""
    directory = tmp_path_factory.mktemp("sharp-teacher")
    teacher = tiny_model(seed=1, initializer_range=0.3, tie_embeddings=False)
    teacher.model.save_pretrained(directory)
    teacher.tokenizer.save_pretrained(directory)
    return directory


def harvest_tiny_teacher(teacher: Path, directory: Path, **settings) -> Path:
    """160 greedy answers of up to 24 tokens with top-5 logprobs from the teacher's gateway (`settings` are
    the gateway's, e.g. a watermark), through the harvester."""
    from alambic.harvest import HarvestJob, Prompt, Sampling, harvest
    from alambic.models import load_model

    store = Store(f"sqlite:///{directory / 'gateway.db'}")
    engine = GenerationEngine(TransformersBackend(load_model(str(teacher))), max_batch_size=32)
    try:
        for gateway in start_gateway(engine, store, **settings):
            items = tuple(Prompt.of(f"Tell me fact number {i} about topic {i % 7}.") for i in range(160))
            job = HarvestJob(
                endpoint=f"{gateway.url}/v1",
                model=gateway.model,
                api_keys=(create_account(store, "distiller"),),
                prompts=items,
                out=directory / "harvest",
                concurrency=16,
                sampling=Sampling(max_tokens=24, temperature=0.0, top_logprobs=5),
            )
            assert harvest(job).status == "complete"
    finally:
        engine.close()
    return directory / "harvest"


@pytest.fixture(scope="session")
def answers(sharp_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sharp tiny teacher's answers, for distillation."""
    return harvest_tiny_teacher(sharp_teacher, tmp_path_factory.mktemp("answers"))
