"""Assembling the gateway: the engine, the store, the log middleware, policies, metrics and the routes."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response

from alambic import __version__
from alambic.generation import GenerationEngine
from alambic.serve import admin, openai_api
from alambic.serve.errors import install_error_handlers
from alambic.serve.metrics import GatewayMetrics
from alambic.serve.openai_api import Gateway
from alambic.serve.policy import Gatekeeper
from alambic.serve.requestlog import RequestJournal, RequestLogMiddleware
from alambic.store import Store
from alambic.watermark.schemes import KeyedScheme


@dataclass(frozen=True)
class GatewaySettings:
    admin_key: str | None = None
    default_max_tokens: int = 256
    max_tokens_limit: int = 4096
    max_body_bytes: int = 1 << 20
    watermark: KeyedScheme | None = None  # applied to every account whose own setting is not off
    instance: str | None = None  # this gateway's name in the request log [default: host:pid]


def create_app(engine: GenerationEngine, store: Store, settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    # Clients that omit Content-Type still send JSON; parse it rather than refuse it.
    app = FastAPI(title="alambic gateway", version=__version__, strict_content_type=False)
    journal = RequestJournal(store, settings.instance or f"{socket.gethostname()}:{os.getpid()}")
    gatekeeper = Gatekeeper(store)
    metrics = GatewayMetrics(engine)
    journal.listeners += [gatekeeper.release, metrics.observe]
    app.state.settings = settings
    app.state.store = store
    app.state.engine = engine
    app.state.gatekeeper = gatekeeper
    app.state.journal = journal
    app.state.gateway = Gateway(
        engine,
        journal,
        default_max_tokens=settings.default_max_tokens,
        max_tokens_limit=settings.max_tokens_limit,
        watermark=settings.watermark,
    )
    app.add_middleware(RequestLogMiddleware, journal=journal, max_body_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    app.include_router(openai_api.router)
    app.include_router(admin.router)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {
            "status": "ok",
            "model": engine.backend.name,
            "gguf_type": getattr(engine.backend, "encoding", None),  # llama.cpp: the weights' encoding
            "active_sequences": engine.active_sequences,
            "queued_requests": engine.queued_requests,
        }

    @app.get("/metrics")
    async def prometheus_metrics(_request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return app
