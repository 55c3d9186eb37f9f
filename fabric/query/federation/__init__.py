"""Federation: one query over entities of several connections (`connection.entity`),
each source running what it can (`planner`), DuckDB the rest (`runner`); `front` is the
engine's door, `explain` what EXPLAIN shows."""
