-- Plain PostgreSQL's rollup log becomes append-only in its 0019 (no unique key, so
-- a write's mark never waits for a refresh). TimescaleDB keeps its rollups as
-- continuous aggregates and has no such log; the version keeps both dialects'
-- migrations numbered alike.
SELECT 1;
