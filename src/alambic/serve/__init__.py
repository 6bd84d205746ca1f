"""The gateway: an OpenAI-compatible API in front of a generation engine, with accounts, policies and a log."""

from alambic.serve.app import GatewaySettings, create_app

__all__ = ["GatewaySettings", "create_app"]
