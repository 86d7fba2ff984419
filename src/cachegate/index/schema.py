"""The SQL cache indexes' schema (SQLite and PostgreSQL): the steps in ``cachegate/index/migrations``,
applied by the one migration mechanism the control store uses too (``cachegate.sql.migrations``)."""

from __future__ import annotations

from cachegate.sql.migrations import Track

SCHEMA = Track(
    package="cachegate.index",
    table="cache_index_migrations",
    refuse_newer=True,  # a newer schema may hold entries this release would misread
    legacy_user_version=True,  # SQLite files from before kept their schema version in user_version
    legacy_tables=("cache_index_entries", "cache_index_trails"),  # PostgreSQL: step N's table
)
