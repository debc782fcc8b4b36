"""The record: tables for users, conversations, messages, activities and their events.

The same models serve PostgreSQL (asyncpg) and SQLite (aiosqlite); Alembic migrations in
``migrations/`` create them on both.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AGENT_QUESTION",
    "STAFF",
    "UNDISPATCHED",
    "Activity",
    "ActivityEvent",
    "ActivityStatus",
    "ApiToken",
    "Approval",
    "Artifact",
    "Base",
    "Conversation",
    "ConversationRead",
    "ConversationState",
    "CouncilStep",
    "Delivery",
    "DeploymentSecret",
    "Direction",
    "LlmCall",
    "Message",
    "MessageState",
    "Priority",
    "ReviewVote",
    "Role",
    "User",
    "UserIdentity",
    "WorkflowRun",
    "WorkflowStatus",
    "utcnow",
]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC on both backends (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


Json = JSON().with_variant(JSONB(), "postgresql")
# SQLite autoincrements only a column typed exactly INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")


class ActivityStatus(enum.StrEnum):
    PENDING = "pending"  # approved, waiting for someone to run it ("RUN 17"; auto_run = false)
    AWAITING_APPROVAL = "awaiting_approval"
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"  # its approval was not given in time
    # Served by an external agent (an action with ``executor = "agent"``):
    WAITING_FOR_AGENT = "waiting_for_agent"  # in the queue agents claim from
    CLAIMED = "claimed"  # an agent holds it (until its lease lapses)
    IN_REVIEW = "in_review"  # the agent handed its work in; a person reviews it
    CHANGES_REQUESTED = "changes_requested"  # a reviewer sent it back to the agent

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        ActivityStatus.COMPLETED,
        ActivityStatus.FAILED,
        ActivityStatus.CANCELLED,
        ActivityStatus.REJECTED,
        ActivityStatus.EXPIRED,
    }
)
# Statuses that hold back later activities of the same conversation (ordering). A request
# waiting for a human (approval, or a RUN after it) does not hold the conversation up.
BLOCKING_STATUSES = (
    ActivityStatus.QUEUED,
    ActivityStatus.IN_PROGRESS,
)


class WorkflowStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class Role(enum.StrEnum):
    """A user's (or API token's) role, from most to least trusted."""

    ADMIN = "admin"
    SUPERVISOR = "supervisor"
    OPERATOR = "operator"
    AGENT = "agent"
    GUEST = "guest"


STAFF = frozenset({Role.ADMIN.value, Role.SUPERVISOR.value, Role.OPERATOR.value})
"""The people who work the portal: they are given conversations, their own conversations are
not taken over (they approve and decide through them) and are not listed with visitors'."""


class Priority(enum.StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class MessageState(enum.StrEnum):
    """Processing state of an inbound message."""

    RECEIVED = "received"  # stored and acknowledged; not yet dispatched
    DISPATCHING = "dispatching"  # claimed by one dispatch (until ``claimed_until``)
    DISPATCHED = "dispatched"  # its activity exists
    IGNORED = "ignored"  # nothing to do (e.g. an update kind we do not handle)
    HUMAN = "human"  # its conversation was taken over: a person reads and answers it
    AGENT = "agent"  # the answer to an external agent's question: attached to its task
    FAILED = "failed"  # its dispatch failed too often; the sender was told


# A message in one of these states holds back the later messages of its conversation.
UNDISPATCHED = (MessageState.RECEIVED, MessageState.DISPATCHING)


class Delivery(enum.StrEnum):
    """Delivery state of an outbound message."""

    PENDING = "pending"  # written with its activity's outcome; not yet handed to the channel
    SENDING = "sending"  # claimed by one sender; never handed over twice
    QUEUED = "queued"  # accepted by the provider
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    UNDELIVERED = "undelivered"
    FAILED = "failed"

    @property
    def rank(self) -> int:
        """Statuses only move forward: a late, older status report is ignored."""
        return _DELIVERY_RANK[self]


_DELIVERY_RANK = {
    Delivery.PENDING: 0,
    Delivery.SENDING: 1,
    Delivery.QUEUED: 2,
    Delivery.SENT: 3,
    Delivery.DELIVERED: 4,
    Delivery.READ: 5,
    Delivery.UNDELIVERED: 6,
    Delivery.FAILED: 6,
}


class Base(DeclarativeBase):
    # SQLAlchemy reads this class attribute; it is never mutated.
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: Json}  # noqa: RUF012


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    # Indexed: the staff among many people (the inbox tells their conversations apart).
    role: Mapped[str] = mapped_column(String(32), default=Role.GUEST.value, index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # For the supervisor portal (argon2id; None: no password, no portal).
    password_hash: Mapped[str | None] = mapped_column(String(200))
    # The language the gateway speaks to them in (None: from what they write).
    language: Mapped[str | None] = mapped_column(String(8))


class UserIdentity(Base):
    """A user's address on one channel (phone number, chat id, web session, ...)."""

    __tablename__ = "user_identities"
    __table_args__ = (UniqueConstraint("channel", "address", name="uq_identity_channel_address"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Conversation(Base):
    """Where replies go: one per (channel, key)."""

    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("channel", "key", name="uq_conversation_channel_key"),
        # The inbox: the conversations people wrote in last, first (read backwards).
        Index("ix_conversations_inbox", "last_inbound_at", "id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_inbound_at: Mapped[dt.datetime | None] = mapped_column()
    language: Mapped[str | None] = mapped_column(String(8))
    """The language its person writes in (the last one a message showed, or their choice):
    what the gateway's own notices in it are written in."""
    assignee_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    """The supervisor it is assigned to (who takes it over is, unless someone else was)."""


class ConversationRead(Base):
    """How far a staff member has read a conversation (the inbox counts what is unread after
    it, for each of them, wherever they log in)."""

    __tablename__ = "conversation_reads"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    last_read_message_id: Mapped[int] = mapped_column(Id)
    read_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


UNSENT_ONLY = "delivery IN ('pending', 'sending')"


class Message(Base):
    """An inbound or outbound message, with the raw provider payload kept for audit."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("channel", "external_id", name="uq_message_channel_external_id"),
        # At most one reply per (activity, part): the at-most-once guard for replies.
        UniqueConstraint("activity_id", "part", name="uq_message_activity_part"),
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
        Index("ix_messages_state_conversation", "state", "conversation_id", "id"),
        # Replies not yet handed over (recovery's look): only those, not every message sent.
        Index(
            "ix_messages_unsent",
            "delivery",
            "updated_at",
            postgresql_where=text(UNSENT_ONLY),
            sqlite_where=text(UNSENT_ONLY),
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    direction: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str | None] = mapped_column(String(255))
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    sender: Mapped[str] = mapped_column(String(255), default="")
    text: Mapped[str] = mapped_column(Text, default="")
    media: Mapped[list[dict[str, Any]]] = mapped_column(Json, default=list)
    raw: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str | None] = mapped_column(String(16))
    delivery: Mapped[str | None] = mapped_column(String(16))
    delivery_error: Mapped[str | None] = mapped_column(Text)
    activity_id: Mapped[int | None] = mapped_column(ForeignKey("agent_activities.id"), index=True)
    part: Mapped[int | None] = mapped_column(Integer)
    # Dispatch claims (inbound): how many were made, and until when the current one holds.
    dispatch_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    claimed_until: Mapped[dt.datetime | None] = mapped_column()
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Activity(Base):
    """One requested action of one agent: the auditable unit of work."""

    __tablename__ = "agent_activities"
    __table_args__ = (
        Index("ix_agent_activities_status_created", "status", "created_at"),
        Index("ix_agent_activities_created_at", "created_at"),
        # An action's activities, newest first (the tasks board; a list by agent and action).
        Index("ix_agent_activities_action", "agent_name", "action_type", "id"),
        Index("ix_agent_activities_conversation_order", "conversation_id", "order_key"),
        Index("uq_agent_activities_idempotency_key", "idempotency_key", unique=True),
        # One activity per step of a run: two workers advancing a run cannot both create it.
        Index("uq_agent_activities_workflow_step", "workflow_run_id", "workflow_step", unique=True),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    agent_name: Mapped[str] = mapped_column(String(100))
    action_type: Mapped[str] = mapped_column(String(100))
    action_description: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(32), default=ActivityStatus.PENDING)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    actor_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    # No foreign key: messages already reference activities (outbound replies) and a cycle
    # would need ALTER TABLE, which SQLite lacks. Unique: one activity per inbound message.
    source_message_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    source_channel: Mapped[str | None] = mapped_column(String(32))
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))
    # Position in the conversation: activities run in this order (the source message id).
    order_key: Mapped[int | None] = mapped_column(BigInteger)
    priority: Mapped[str] = mapped_column(String(16), default=Priority.NORMAL)
    visible_to_client: Mapped[bool] = mapped_column(Boolean, default=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column()
    # Until when an awaiting_approval activity may still be decided on.
    expires_at: Mapped[dt.datetime | None] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column()
    completed_at: Mapped[dt.datetime | None] = mapped_column()
    # An API caller's key for an execute (their actor first): the same key, the same activity.
    idempotency_key: Mapped[str | None] = mapped_column(String(300))
    # An operator asked to stop it while it ran: its worker stops it at its next lease renewal.
    cancel_requested_at: Mapped[dt.datetime | None] = mapped_column()
    # A workflow step's run and step id (no foreign key: runs reference their activity).
    workflow_run_id: Mapped[int | None] = mapped_column(BigInteger)
    workflow_step: Mapped[str | None] = mapped_column(String(64))
    # Served by an external agent: the token of the agent that holds its claim (its lease is
    # ``lease_expires_at``, its fence ``attempts``), and its review's round (one per hand-in).
    agent_token_id: Mapped[int | None] = mapped_column(BigInteger)
    review_round: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class WorkflowRun(Base):
    """A run of a catalog workflow, or of an approved plan. Its id is the id of the activity
    that started it (the request ``workflows.<name>``, or the one whose answer was the plan):
    one run per such request, however often its job runs."""

    __tablename__ = "workflow_runs"
    __table_args__ = (Index("ix_workflow_runs_status", "status"),)

    id: Mapped[int] = mapped_column(
        Id, ForeignKey("agent_activities.id", ondelete="CASCADE"), primary_key=True
    )
    workflow: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=WorkflowStatus.RUNNING)
    input: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column()
    plan: Mapped[dict[str, Any] | None] = mapped_column()
    """An approved plan (its tasks are the steps); None for a catalog workflow."""


class ActivityEvent(Base):
    """Append-only: every state change of an activity, with who, when and data."""

    __tablename__ = "activity_events"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    activity_id: Mapped[int] = mapped_column(
        ForeignKey("agent_activities.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(64))
    status: Mapped[str | None] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(255), default="system")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


TAKEOVER = "takeover"
"""The conversation state (and the system action) of a takeover: a person answers."""
AGENT_QUESTION = "agent_question"
"""The conversation state while an external agent's question waits for the requester's answer
(its ``question_activity_id``: the task the answer is attached to)."""


class ConversationState(Base):
    """What a conversation is in the middle of: a question the gateway asked, not yet answered.

    At most one per conversation; it expires, and is gone once answered or abandoned.
    """

    __tablename__ = "conversation_states"

    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The activity that asked (no foreign key, as for messages.activity_id's cycle).
    question_activity_id: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[dt.datetime] = mapped_column()
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Approval(Base):
    """One approver's decision on one activity: at most one per (activity, approver)."""

    __tablename__ = "approvals"
    __table_args__ = (
        UniqueConstraint("activity_id", "approver_user_id", name="uq_approval_activity_approver"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    activity_id: Mapped[int] = mapped_column(
        ForeignKey("agent_activities.id", ondelete="CASCADE"), index=True
    )
    approver_user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    decision: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(32))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A bearer token for the HTTP API, stored as its SHA-256 only, with a role."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column()
    serves: Mapped[list[str] | None] = mapped_column(Json)
    """An agent's token: the actions (``agent.action``) whose tasks it may see and claim."""


class Artifact(Base):
    """What an external agent handed in for a task: code, text, a diff or a screenshot."""

    __tablename__ = "artifacts"
    __table_args__ = (
        # A submit retried with its idempotency key stores one artifact.
        UniqueConstraint("activity_id", "idempotency_key", name="uq_artifact_idempotency"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    activity_id: Mapped[int] = mapped_column(
        ForeignKey("agent_activities.id", ondelete="CASCADE"), index=True
    )
    agent_token_id: Mapped[int | None] = mapped_column(BigInteger)
    """The agent that handed it in (None: a council's chosen proposal)."""
    type: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(200), default="")
    content: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """What it holds, as a reader wants it at a glance (a diff's files and lines)."""
    review_round: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ReviewVote(Base):
    """One reviewer's decision on one round of a task's review."""

    __tablename__ = "review_votes"
    __table_args__ = (
        UniqueConstraint("activity_id", "round", "user_id", name="uq_review_vote_round_user"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    activity_id: Mapped[int] = mapped_column(
        ForeignKey("agent_activities.id", ondelete="CASCADE"), index=True
    )
    round: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    decision: Mapped[str] = mapped_column(String(24))
    comment: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class CouncilStep(Base):
    """One answered step of a council run (a member's draft, critique or revision, a check,
    a judge's scores, the pick), stored as it completes: a resumed run asks no one again."""

    __tablename__ = "council_steps"
    __table_args__ = (
        UniqueConstraint(
            "activity_id", "round", "step", "member", "target", name="uq_council_step"
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    activity_id: Mapped[int] = mapped_column(
        ForeignKey("agent_activities.id", ondelete="CASCADE"), index=True
    )
    round: Mapped[int] = mapped_column(Integer)
    step: Mapped[str] = mapped_column(String(16))
    member: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(64), default="")
    """Whose draft a critique or a score is of; a check's index."""
    ok: Mapped[bool] = mapped_column(Boolean)
    text: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(String(500))
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class LlmCall(Base):
    """One call to a named LLM provider, with the tokens its answer's ``usage`` reported."""

    __tablename__ = "llm_calls"
    __table_args__ = (Index("ix_llm_calls_provider_at", "provider", "at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    purpose: Mapped[str] = mapped_column(String(64))
    """What it was for: ``intent`` (the parser's fallback), ``check``, a council's step..."""
    activity_id: Mapped[int | None] = mapped_column(BigInteger)
    ok: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(String(500))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DeploymentSecret(Base):
    """A key generated once for this deployment and shared by all its processes (it signs web
    chat sessions); kept here so no one has to configure it."""

    __tablename__ = "deployment_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Tally(Base):
    """A figure ``/metrics`` shows, kept up to date by the database itself: triggers on
    ``messages``, ``agent_activities`` and ``activity_events`` (migration 0010) count each
    change as it is written, so a scrape reads a few rows instead of the tables.

    ``family`` names the figure, ``a``, ``b``, ``c`` its labels ('' where unused); ``n`` the
    count (for ``duration_sum``, microseconds)."""

    __tablename__ = "tallies"

    family: Mapped[str] = mapped_column(String(32), primary_key=True)
    a: Mapped[str] = mapped_column(String(255), primary_key=True)
    b: Mapped[str] = mapped_column(String(255), primary_key=True)
    c: Mapped[str] = mapped_column(String(255), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


class TallyDelta(Base):
    """A change to a :class:`Tally` not folded in yet (PostgreSQL: each writing statement
    appends its changes here, so concurrent writers never wait on a shared counter row;
    :meth:`dispatch.record.stats.Stats.fold` moves them into ``tallies``)."""

    __tablename__ = "tally_deltas"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    family: Mapped[str] = mapped_column(String(32))
    a: Mapped[str] = mapped_column(String(255))
    b: Mapped[str] = mapped_column(String(255))
    c: Mapped[str] = mapped_column(String(255))
    n: Mapped[int] = mapped_column(BigInteger)
