"""Agent tunables: every interval in seconds, settable by flag and by environment variable."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

# option name -> environment variable
ENV_VARS: dict[str, str] = {
    "backoff_base": "CORRAL_AGENT_BACKOFF_BASE",
    "backoff_cap": "CORRAL_AGENT_BACKOFF_CAP",
    "output_poll": "CORRAL_AGENT_OUTPUT_POLL",
    "kill_grace": "CORRAL_AGENT_KILL_GRACE",
    "connect_timeout": "CORRAL_AGENT_CONNECT_TIMEOUT",
    "journal_retention": "CORRAL_AGENT_JOURNAL_RETENTION",
    "cleanup_delay": "CORRAL_AGENT_CLEANUP_DELAY",
}


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """How an agent paces itself; all values are seconds."""

    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    output_poll: float = 0.2
    kill_grace: float = 5.0
    connect_timeout: float = 10.0
    journal_retention: float = 30 * 24 * 3600.0
    # Acknowledged invocations' files are removed once the agent has been idle this long.
    cleanup_delay: float = 5.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise ValueError(f"{f.name} must be a positive number of seconds, not {value!r}")
        if self.backoff_cap < self.backoff_base:
            raise ValueError("backoff_cap must not be smaller than backoff_base")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: float | None
    ) -> AgentOptions:
        """Defaults, overridden by CORRAL_AGENT_* variables, overridden by non-None `overrides`."""
        env = os.environ if environ is None else environ
        values: dict[str, float] = {}
        for name, var in ENV_VARS.items():
            raw = env.get(var)
            if raw:
                try:
                    values[name] = float(raw)
                except ValueError as exc:
                    raise ValueError(f"{var} must be a number of seconds, not {raw!r}") from exc
        for name, value in overrides.items():
            if name not in ENV_VARS:
                raise TypeError(f"unknown agent option {name!r}")
            if value is not None:
                values[name] = value
        return cls(**values)
