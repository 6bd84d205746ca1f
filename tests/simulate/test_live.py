"""Simulated traffic sent to a live gateway: real accounts, the simulated order and user agents, all logged."""

from __future__ import annotations

import asyncio
from itertools import islice

from sqlalchemy import select

from alambic.simulate import Simulation, SimulationSettings
from alambic.simulate.live import LiveTraffic
from alambic.store.schema import Account, RequestLog
from conftest import ADMIN_KEY


def test_simulated_accounts_call_the_gateway_in_the_simulated_order(gateway):
    simulation = Simulation(SimulationSettings(seed=4, days=1, scale=0.02, campaigns=("bulk",)))
    rows = list(islice(simulation.rows(), 40))
    live = LiveTraffic(f"{gateway.url}/v1", ADMIN_KEY, speed=1e6, concurrency=8, max_tokens=4)
    report = asyncio.run(live.run(rows))
    assert report.sent == 40 and report.accounts == len({r["account"] for r in rows})
    assert sum(report.statuses.values()) == 40 and report.statuses[0] == 0
    with gateway.store.session() as session:
        logged = session.execute(
            select(Account.name, RequestLog.user_agent).join(Account, Account.id == RequestLog.account_id)
        ).all()
    assert len(logged) == 40
    assert {(r["account"], r["user_agent"]) for r in rows} == set(logged)
