"""The Corral server: HTTP API, agent gateway and dispatcher."""

from corral.server.config import ServerConfig

__all__ = ["ServerConfig"]
