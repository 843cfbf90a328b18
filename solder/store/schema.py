"""The schema: every table, as SQLAlchemy Core.

Every table's primary key and the indexes API reads use lead with `tenant_id`, so that
every query is scoped by tenant, with one exception: `executions`, the one table that
grows without bound, is keyed by its random public id alone and indexed by integers
(the numbers of its workflow and user, each of which belongs to one tenant, and its
positions in their logs pages), so that its rows and index entries stay small
(docs/decisions.md, "Integer keys for executions", "Lean executions"). The few
cross-tenant indexes serve Solder's own sweeps: the dispatch queue and the forgetting of
idempotency keys.
Timestamps are integer milliseconds since the epoch (UTC).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(24), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    # How long the tenant's logs are kept; null: the server's SOLDER_LOG_RETENTION_DAYS.
    Column("retention_ms", BigInteger),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("tenant_id", String(24), nullable=False),
    Column("id", String(24), nullable=False),
    Column("prefix", String(16), nullable=False),
    # sha256 of the key: keys are 256-bit random, so a fast hash is enough.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
    PrimaryKeyConstraint("tenant_id", "id"),
    ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
)

users = Table(
    "users",
    metadata,
    Column("tenant_id", String(24), nullable=False),
    Column("id", String(24), nullable=False),
    Column("username", String(255), nullable=False),
    Column("full_name", String(255)),
    Column("created_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant_id", "id"),
    UniqueConstraint("tenant_id", "username"),
    ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
)

workflows = Table(
    "workflows",
    metadata,
    Column("tenant_id", String(24), nullable=False),
    Column("id", String(24), nullable=False),
    Column("name", String(255), nullable=False),
    Column("latest_version", Integer, nullable=False),
    Column("trigger_type", String(32), nullable=False),
    Column("trigger_event", String(255)),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    # How long this workflow's logs are kept; null: its tenant's retention.
    Column("retention_ms", BigInteger),
    PrimaryKeyConstraint("tenant_id", "id"),
    UniqueConstraint("tenant_id", "name"),
    ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
)

workflow_versions = Table(
    "workflow_versions",
    metadata,
    Column("tenant_id", String(24), nullable=False),
    Column("workflow_id", String(24), nullable=False),
    Column("version", Integer, nullable=False),
    Column("definition", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # The trigger of this version, for finding what an event or a schedule starts.
    Column("trigger_type", String(32), nullable=False, server_default=text("'webhook'")),
    Column("trigger_event", String(255)),
    Column("trigger_cron", String(255)),
    PrimaryKeyConstraint("tenant_id", "workflow_id", "version"),
    ForeignKeyConstraint(
        ["tenant_id", "workflow_id"], ["workflows.tenant_id", "workflows.id"], ondelete="CASCADE"
    ),
)

# A user's copy of a workflow: which version they run and whether it is active.
installations = Table(
    "installations",
    metadata,
    Column("tenant_id", String(24), nullable=False),
    Column("workflow_id", String(24), nullable=False),
    Column("user_id", String(24), nullable=False),
    Column("version", Integer, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("installed_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    # The latest schedule tick already run for this user (schedule triggers only).
    Column("last_tick_at", BigInteger),
    PrimaryKeyConstraint("tenant_id", "workflow_id", "user_id"),
    Index("ix_installations_user", "tenant_id", "user_id"),
    ForeignKeyConstraint(
        ["tenant_id", "workflow_id"], ["workflows.tenant_id", "workflows.id"], ondelete="CASCADE"
    ),
    ForeignKeyConstraint(
        ["tenant_id", "user_id"], ["users.tenant_id", "users.id"], ondelete="CASCADE"
    ),
)


# Small integers that stand for a tenant's workflow and user ids in `executions` and its
# indexes, where the 24-character ids would be repeated in every row and index entry
# (bench/RESULTS.md, scenario 4). A number is drawn when its workflow or user is created,
# and is neither deleted (but with its tenant) nor reused: a number always means the same
# workflow or user, even to an execution recorded while its user was being deleted.
def _numbers(name: str, id_column: str) -> Table:
    return Table(
        name,
        metadata,
        Column("number", Integer, Identity(), primary_key=True),
        Column("tenant_id", String(24), nullable=False),
        Column(id_column, String(24), nullable=False),
        UniqueConstraint("tenant_id", id_column),
        ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
    )


workflow_numbers = _numbers("workflow_numbers", "workflow_id")
user_numbers = _numbers("user_numbers", "user_id")

# Indexes that one dialect has and not the other, by name: its migrations make them on it
# alone (`declared_on`).
_ONLY_ON: dict[str, str] = {}


def _only_on(dialect: str, index: Index) -> Index:
    assert index.name is not None
    _ONLY_ON[str(index.name)] = dialect
    return index.ddl_if(dialect=dialect)


# The condition of the failed executions' indexes (a query names it as
# `executions.c.failed.is_not(None)`, and the planners match the two).
FAILED = text("failed IS NOT NULL")

# The statuses an execution ends in (store/queue.py has its life); nothing changes an
# ended execution's status, error or calls to other apps again.
ENDED = ("succeeded", "failed", "canceled")

# One row per execution. While it runs, its steps live in `steps`; when it ends, its
# whole log is written here once as a pre-serialized JSON document (`log`) and the
# steps are deleted, so reads of finished logs never rebuild JSON.
executions = Table(
    "executions",
    metadata,
    Column("tenant_id", String(24), nullable=False),
    # The public id: its time, then 72 random bits (solder/ids.py), unique across
    # tenants, so its index need not hold the tenant (every lookup still names it, and
    # reads the row's).
    Column("id", String(21), primary_key=True),
    Column("workflow_number", Integer, nullable=False),
    Column("user_number", Integer, nullable=False),
    Column("workflow_version", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("trigger_id", String(36), nullable=False),
    Column("trigger_data", Text, nullable=False),
    Column("started_at", BigInteger, nullable=False),
    Column("stopped_at", BigInteger),
    Column("rerun_of", String(21)),
    Column("error_block", String(255)),
    Column("error_message", Text),
    Column("app_actions", Integer, nullable=False, server_default=text("0")),
    Column("claimed_at", BigInteger),
    # Who runs it now: a token drawn at each claim. Every write of a run checks it, so a
    # worker presumed dead that is still running (a long pause) cannot write after its
    # execution was given to another.
    Column("lease", String(21)),
    # PostgreSQL: the procrastinate job that runs it next (see store/jobs.py).
    Column("job_id", BigInteger),
    # A delayed execution waits `queued` until `wake_at`, holding no worker meanwhile;
    # `wait_started_at` is when its delay block began.
    Column("wake_at", BigInteger),
    Column("wait_started_at", BigInteger),
    Column("log", LargeBinary),
    # The execution's place in its workflow's logs pages, of one user and of all its
    # users: 1, 2, 3... in the order executions were recorded (`log_listings`). A page
    # at any depth is one seek to a position, not a walk over the pages before it.
    Column("user_position", BigInteger().with_variant(Integer(), "sqlite"), nullable=False),
    Column("workflow_position", BigInteger().with_variant(Integer(), "sqlite"), nullable=False),
    # True once the execution ended failed, else null: what the failures' indexes below
    # hold. Not `status`, which a run's claim and end change: a column in an index's keys
    # or condition makes each update that changes it write an entry in every index of
    # the table on PostgreSQL (migration 0013), and this one changes only when a run fails.
    Column("failed", Boolean),
    # The logs pages: a workflow's executions of one user, and of all its users. A
    # workflow number belongs to one tenant, so the tenant need not lead. The workflow's
    # is also the order retention and compaction walk.
    Index(
        "ix_executions_user_logs", "workflow_number", "user_number", "user_position", unique=True
    ),
    Index("ix_executions_workflow_positions", "workflow_number", "workflow_position", unique=True),
    # The failed executions of a workflow, of one user and of all its users, in their logs
    # pages' order (`GET /workflows/{id}/errors`): a page of them is read from these, not
    # found by reading every execution of the workflow (migration 0016).
    Index(
        "ix_executions_failures_user",
        "workflow_number",
        "user_number",
        "user_position",
        unique=True,
        sqlite_where=FAILED,
        postgresql_where=FAILED,
    ),
    Index(
        "ix_executions_failures",
        "workflow_number",
        "workflow_position",
        unique=True,
        sqlite_where=FAILED,
        postgresql_where=FAILED,
    ),
    # SQLite's dispatch queue: only unfinished executions are in this index. PostgreSQL
    # has none: procrastinate's jobs are its queue, and an index on `status` would make
    # each of a run's updates of its row write an entry in every index of the table, where
    # without one most are HOT (heap-only: migration 0013).
    _only_on(
        "sqlite",
        Index(
            "ix_executions_pending",
            "status",
            "started_at",
            sqlite_where=text("status IN ('queued', 'running', 'crashed')"),
        ),
    ),
)

# The logs pages of each workflow, of one user (`user_number`) and of all its users
# (`user_number` 0), and where their positions stand (`executions.user_position`,
# `workflow_position`). Recording an execution takes the next position of both, in its
# transaction: positions are dense, in the order executions were recorded, and on
# PostgreSQL the row lock orders concurrent ones. Deleting executions leaves holes, and
# says where: `deleted` is how many positions were deleted, `deleted_top` the highest. The
# positions above `deleted_top` are all there, so the page at offset n, newest first, is
# the one at position `last_position - n`; below it, and oldest first once something
# was deleted above the oldest, the page is found by walking (queries.page_of_logs).
log_listings = Table(
    "log_listings",
    metadata,
    Column("workflow_number", Integer, nullable=False, autoincrement=False),
    Column("user_number", Integer, nullable=False, autoincrement=False),
    Column("last_position", BigInteger, nullable=False),
    Column("deleted", BigInteger, nullable=False),
    Column("deleted_top", BigInteger, nullable=False),
    PrimaryKeyConstraint("workflow_number", "user_number"),
)

# What `GET /workflows/{id}/analytics` counts in a logs listing (`log_listings`' key):
# the errors and the calls to other apps of its executions at positions up to
# `summed_to`, summed once (solder/store/totals.py), so that an answer reads only the
# executions recorded since, not the listing's whole history. Kept apart from
# `log_listings`, whose row every run request updates: summing never waits on them.
listing_totals = Table(
    "listing_totals",
    metadata,
    Column("workflow_number", Integer, nullable=False, autoincrement=False),
    Column("user_number", Integer, nullable=False, autoincrement=False),
    Column("summed_to", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("app_actions", BigInteger, nullable=False),
    PrimaryKeyConstraint("workflow_number", "user_number"),
)

# The executions of a listing at or below its `summed_to` that had not ended when they
# were summed (a delay may hold one for days): counted as they stand until a later sum
# finds them ended (or deleted) and folds them in.
listing_unsummed = Table(
    "listing_unsummed",
    metadata,
    Column("workflow_number", Integer, nullable=False, autoincrement=False),
    Column("user_number", Integer, nullable=False, autoincrement=False),
    Column("position", BigInteger().with_variant(Integer(), "sqlite"), nullable=False),
    PrimaryKeyConstraint("workflow_number", "user_number", "position"),
)

# A tenant's zstd dictionaries for its stored logs (solder/dictionaries.py). New logs are
# written with its newest; an older one stays while a stored log still needs it. Ids count
# from 1 within the tenant and are never reused: a log's first bytes name one
# (solder/store/codec.py).
log_dictionaries = Table(
    "log_dictionaries",
    metadata,
    Column("tenant_id", String(24), nullable=False),
    Column("id", Integer, nullable=False, autoincrement=False),
    Column("content", LargeBinary, nullable=False),
    # How many logs it was trained on.
    Column("samples", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # When every log of the tenant stored before it was recompressed with it; null until.
    Column("compacted_at", BigInteger),
    # When the sweep last decided to keep it: as the newest (no better one could be
    # trained), or as an older one a stored log still needed.
    Column("checked_at", BigInteger),
    PrimaryKeyConstraint("tenant_id", "id"),
    ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
)

# The finished blocks of executions still running (see `executions`).
steps = Table(
    "steps",
    metadata,
    Column("tenant_id", String(24), nullable=False),
    Column("execution_id", String(21), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("connector_id", String(36), nullable=False),
    Column("block_name", String(255), nullable=False),
    Column("started_at", BigInteger, nullable=False),
    Column("stopped_at", BigInteger, nullable=False),
    Column("data", Text, nullable=False),
    Column("inputs", Text, nullable=False),
    Column("error", Text),
    # Additive keys of the step's log entry: `iteration` inside a loop, `attempts`, ...
    Column("meta", Text),
    Column("app_actions", Integer, nullable=False, server_default=text("0")),
    # Led by the execution: the delete that follows an execution's (ON DELETE CASCADE)
    # finds its steps through it, where (tenant, execution, seq) made it scan the table.
    PrimaryKeyConstraint("execution_id", "seq"),
    ForeignKeyConstraint(["execution_id"], ["executions.id"], ondelete="CASCADE"),
)

# A user's secrets, encrypted at rest; blocks name them, the engine resolves them at run time.
credentials = Table(
    "credentials",
    metadata,
    Column("tenant_id", String(24), nullable=False),
    Column("id", String(24), nullable=False),
    Column("user_id", String(24), nullable=False),
    Column("type", String(64), nullable=False),
    Column("name", String(255), nullable=False),
    Column("secret", LargeBinary, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant_id", "id"),
    UniqueConstraint("tenant_id", "user_id", "name"),
    ForeignKeyConstraint(
        ["tenant_id", "user_id"], ["users.tenant_id", "users.id"], ondelete="CASCADE"
    ),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("tenant_id", String(24), nullable=False),
    Column("key", String(255), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("response", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant_id", "key"),
    Index("ix_idempotency_keys_created_at", "created_at"),
)


def declared_on(dialect: str) -> Callable[[object, str | None, str, bool, object], bool]:
    """What schema comparisons on `dialect` expect of the declared schema: not an index
    that only another dialect has."""

    def declared(
        _object: object, name: str | None, type_: str, reflected: bool, _to: object
    ) -> bool:
        return reflected or type_ != "index" or _ONLY_ON.get(str(name), dialect) == dialect

    return declared


def owned_by_solder(name: str | None, type_: str, _parents: object) -> bool:
    """What schema comparisons look at: everything but procrastinate's own tables."""
    return not (type_ == "table" and name is not None and name.startswith("procrastinate_"))
