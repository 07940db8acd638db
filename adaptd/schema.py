"""The SQL schema: tables, the Grafana view and the migrations between schema versions.

The schema is versioned in `schema_version`: a newer adaptd migrates an older database (one
function per version in MIGRATIONS), an older adaptd refuses a newer one (`Store.migrate`).
"""

from __future__ import annotations

from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

SCHEMA_VERSION = 3

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version", metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.Double, nullable=False),
)

series_table = sa.Table(
    "series", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("created_at", sa.Double, nullable=False),
)

observations = sa.Table(
    "observations", metadata,
    sa.Column("series_id", sa.Integer, sa.ForeignKey("series.id"), primary_key=True),
    sa.Column("ts", sa.Double, primary_key=True),
    sa.Column("value", sa.Double, nullable=False),
    sqlite_with_rowid=False,
)

forecasts_table = sa.Table(
    "forecasts", metadata,
    sa.Column("series_id", sa.Integer, sa.ForeignKey("series.id"), primary_key=True),
    sa.Column("origin", sa.Double, primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True),
    sa.Column("target", sa.Double, nullable=False),
    sa.Column("value", sa.Double, nullable=False),
    sa.Column("lo", sa.Double, nullable=False),
    sa.Column("hi", sa.Double, nullable=False),
    sa.Column("model_kind", sa.String(32), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
)

drift_events = sa.Table(
    "drift_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("series_id", sa.Integer, sa.ForeignKey("series.id"), nullable=False, index=True),
    sa.Column("ts", sa.Double, nullable=False),
    sa.Column("detector", sa.String(32), nullable=False),
    sa.Column("statistic", sa.Double),
    sa.Column("created_at", sa.Double, nullable=False),
)

model_checkpoints = sa.Table(
    "model_checkpoints", metadata,
    sa.Column("series_id", sa.Integer, sa.ForeignKey("series.id"), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("format_version", sa.Integer, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

initializers = sa.Table(
    "initializers", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("algorithm", sa.String(32), nullable=False),
    sa.Column("format_version", sa.Integer, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("training", sa.JSON, nullable=False),
    sa.Column("val_score", sa.Double),
    sa.Column("promoted", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Double, nullable=False),
)

# The daemon's scheduled meta-training runs, so that its schedule and `adaptd status` outlive
# restarts. `outcome` is NULL while a run is going (or after the daemon died during it).
meta_training_runs = sa.Table(
    "meta_training_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("started_at", sa.Double, nullable=False, index=True),
    sa.Column("finished_at", sa.Double),
    sa.Column("outcome", sa.String(32)),
    sa.Column("version", sa.Integer),       # the initializer it stored
    sa.Column("detail", sa.Text),           # why it stored nothing, in the trainer's words
)


def create_forecast_view(conn: Connection) -> None:
    """`forecast_latest`: the newest forecast of each exported series with readable times, for
    Grafana's SQL datasources (Prometheus cannot hold future-dated samples)."""
    postgresql = conn.dialect.name == "postgresql"
    to_time = "to_timestamp({})" if postgresql else "datetime({}, 'unixepoch')"
    # Idempotent, like every migration: SQLite commits DDL at once, so a crash before the new
    # schema_version row leaves the view made and the version old; the next start redoes it.
    conn.exec_driver_sql(
        ("CREATE OR REPLACE VIEW" if postgresql else "CREATE VIEW IF NOT EXISTS") +
        " forecast_latest AS SELECT s.name AS series, "
        f"{to_time.format('f.target')} AS target_time, f.value, f.lo, f.hi, "
        f"{to_time.format('f.origin')} AS origin_time, f.step, f.model_kind "
        "FROM forecasts f JOIN series s ON s.id = f.series_id")


def create_meta_training_runs(conn: Connection) -> None:
    meta_training_runs.create(conn, checkfirst=True)
    for index in meta_training_runs.indexes:   # (a crash may have come between the two)
        index.create(conn, checkfirst=True)


# version N -> function migrating a database at version N-1 to N.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {2: create_forecast_view, 3: create_meta_training_runs}
