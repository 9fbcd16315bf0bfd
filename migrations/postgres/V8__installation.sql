-- Which installation this database belongs to: one row, written by the first replica that
-- opens the database (a database migrated from an earlier release has none until then).
--
-- Every replica of one installation declares the same Applications and Heartbeats (one
-- manifests directory, or one cluster's resources), and its leader removes what it does
-- not declare. A replica of another installation pointed at the same database would remove
-- the first one's Applications, Heartbeats and tokens, and the first would remove its in
-- turn. So a replica whose installation is not the one recorded here refuses to start,
-- before it writes anything.
CREATE TABLE hartslag_installation (
    id         smallint PRIMARY KEY CHECK (id = 1),
    -- The installation's name (`--installation`): the chart's `<namespace>/<fullname>`,
    -- the operator's Lease `<namespace>/<name>`, or `standalone`.
    name       text NOT NULL,
    -- The replica that claimed the database, and when (microseconds since the Unix
    -- epoch), for people.
    claimed_by text NOT NULL,
    claimed_at bigint NOT NULL
);
