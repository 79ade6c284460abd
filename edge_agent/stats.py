"""What the edge agent counts: per device, the outbox, the publisher, HJ 212.

Plain data, snapshots handed out by :meth:`edge_agent.agent.EdgeAgent.stats` and
rendered by :mod:`edge_agent.status` and the ``edge run`` stats line.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.hj212.listener import ListenerStats
from edge_agent.outbox import OutboxStats
from edge_agent.publisher import PublisherStats


@dataclass(slots=True)
class DeviceStats:
    polls_ok: int = 0
    errors: int = 0
    consecutive_failures: int = 0
    last_error: str = ""
    last_seq: int = 0
    backoff_s: float = 0.0  # extra wait before the next attempt, 0 when healthy
    invalid_values: int = 0  # registers left out because they decoded to NaN/inf
    last_reading_ms: int | None = None  # event time of the last stored reading
    samples: int = 0  # readings stored in the outbox
    rollovers: int = 0  # counter readings that wrapped past the register's range
    replacements: int = 0  # counter readings that went backwards otherwise
    clock_refused: int = 0  # polls read but refused: the agent's clock was wrong


@dataclass(frozen=True, slots=True)
class AgentStats:
    devices: dict[str, DeviceStats]
    outbox: OutboxStats
    publisher: PublisherStats
    hj212: ListenerStats | None = None  # None when no HJ 212 listener is configured
    clock_problem: str = ""  # why the agent's clock may not stamp readings; "" if ok

    @property
    def broker_connected(self) -> bool:
        return self.publisher.connected
