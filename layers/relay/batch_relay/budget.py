"""The daily spend cap: what the relay commits to spend per UTC day, batch and realtime together.

Work is committed before it is sent, at its upper bound (`pricing.bound`): a batch when it is
created, a realtime request before its call. Once the real cost is known (a batch collected, a
realtime answer) the difference is given back to the day it was committed on, once: the give-back
and the record or item saying so are one conditional transaction, so neither a retry of ours nor
the SDK's resend after a lost answer frees the room twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import clock
from .observability import MetricUnit, metrics
from .records import BatchRecord, RequestItem
from .settings import Settings
from .store import Store


def today(now: float | None = None) -> str:
    return clock.iso(now)[:10]


@dataclass
class Budget:
    settings: Settings
    store: Store

    @property
    def capped(self) -> bool:
        return self.settings.daily_budget_usd > 0

    def left(self, day: str | None = None) -> float:
        if not self.capped:
            return float("inf")
        return self.settings.daily_budget_usd - self.store.committed(day or today())

    def commit(self, usd: float, day: str, mark: str) -> bool:
        """Commit `usd` to day <day>'s spend, named on item <mark> (`budget_usd`, `budget_day`);
        False (nothing committed) when it would pass the cap."""
        if not self.capped:
            return True
        done = self.store.commit(day, usd, self.settings.daily_budget_usd, mark)
        if done:
            metrics.add_metric(name="BudgetCommittedUSD", unit=MetricUnit.NoUnit, value=usd)
        return done

    def settle(self, key: str, committed: float, day: str | None, spent: float) -> None:
        """Give back what a commitment on item <key> did not spend, once. The item says it is
        settled even when nothing is given back (all of it spent, or perhaps spent): a later try
        of the request then commits afresh instead of reading this commitment as its own."""
        if not self.capped or not day or committed <= 0:
            return
        self.store.give_back(day, max(0.0, committed - spent), mark=key)

    @staticmethod
    def terms(record: BatchRecord | RequestItem) -> tuple[float, str | None]:
        """What a record or item committed, and on which day."""
        return float(record.budget_usd or 0), record.budget_day
