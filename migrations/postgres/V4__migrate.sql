-- What `hartslag migrate --from-sled` copied: one row per part (applications, events,
-- rollups, ...) it finished from one sled directory, written in the transaction that
-- copied the part's rows. A part with a row here is never copied again; a part without
-- one has nothing of its rows in the database (its transaction never committed).
CREATE TABLE hartslag_migrations_from_sled (
    -- The sled directory's identity, kept in the directory itself.
    source      text COLLATE "C" NOT NULL,
    part        text COLLATE "C" NOT NULL,
    -- Rows the part copied.
    copied      bigint NOT NULL,
    -- Microseconds since the Unix epoch.
    finished_at bigint NOT NULL,
    PRIMARY KEY (source, part)
);
