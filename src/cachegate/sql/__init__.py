"""SQL shared by the control store and the cache index: the dialect table (SQLite, PostgreSQL),
the one migration mechanism, and the SQLite worker thread."""
