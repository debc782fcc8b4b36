"""Claims: how a row (an activity to run, a message to interpret) is taken by one worker.

A claimable row has a state, an attempt count and a lease. Claiming moves it from its free
state, or from its taken state once the lease ran out, to taken, counts one more attempt and
sets the lease, in one conditional statement: of any number of concurrent claimers exactly one
wins, and gets the attempt number. Every later write of that attempt is fenced by it
(:meth:`Claimable.held`), so a stale attempt can change nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, Update, and_, or_, update

from dispatch.record.models import Activity, ActivityStatus, Message, MessageState, utcnow

__all__ = ["ACTIVITIES", "MESSAGES", "Claimable"]


@dataclasses.dataclass(frozen=True)
class Claimable:
    model: Any
    state: Any
    attempts: Any
    lease_until: Any
    free: str
    taken: str

    def claim(self, row_id: int, *, lease_s: float, **values: Any) -> Update:
        """The statement that claims the row (``RETURNING`` the attempt number)."""
        now = utcnow()
        return (
            update(self.model)
            .where(
                self.model.id == row_id,
                or_(
                    self.state == self.free,
                    and_(self.state == self.taken, self.lease_until < now),
                ),
            )
            .values(
                {
                    self.state: self.taken,
                    self.attempts: self.attempts + 1,
                    self.lease_until: now + dt.timedelta(seconds=lease_s),
                    **values,
                }
            )
            .returning(self.attempts)
            .execution_options(synchronize_session=False)
        )

    def held(self, row_id: int, attempt: int) -> ColumnElement[bool]:
        """The row is still taken, by this attempt."""
        return and_(self.model.id == row_id, self.state == self.taken, self.attempts == attempt)

    def update_held(self, row_id: int, attempt: int, **values: Any) -> Update:
        """A write of this attempt: it changes nothing once the claim is someone else's."""
        return (
            update(self.model)
            .where(self.held(row_id, attempt))
            .values(**values)
            .execution_options(synchronize_session=False)
        )


ACTIVITIES = Claimable(
    model=Activity,
    state=Activity.status,
    attempts=Activity.attempts,
    lease_until=Activity.lease_expires_at,
    free=ActivityStatus.QUEUED.value,
    taken=ActivityStatus.IN_PROGRESS.value,
)
MESSAGES = Claimable(
    model=Message,
    state=Message.state,
    attempts=Message.dispatch_attempts,
    lease_until=Message.claimed_until,
    free=MessageState.RECEIVED.value,
    taken=MessageState.DISPATCHING.value,
)
