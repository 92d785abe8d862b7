"""The Corral agent: one outbound WebSocket per node, Run Command workers that outlive it.

Only the stdlib, `websockets`, `nacl` and `corral.protocol`/`corral.errors` may be
imported here, so the agent stays small on every node.
"""

from corral.agent.options import AgentOptions

__all__ = ["AgentOptions"]
