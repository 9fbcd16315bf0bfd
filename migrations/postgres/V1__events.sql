-- Events, their rollups, idempotency keys, applications and the token index.
-- Times are microseconds since the Unix epoch (bigint), local dates YYYYMMDD keys (integer),
-- hours hours since the epoch (bigint). Names compare byte by byte (COLLATE "C"), as
-- the embedded backend orders them, whatever the database's locale. Weight sums are numeric: a sum of 64-bit weights
-- outgrows bigint long before it outgrows a 128-bit integer.

-- Raw events, in time order per application; seq orders events of the same instant in the
-- order they were stored, and is the keyset export and retention page by.
CREATE TABLE hartslag_events (
    app     bigint NOT NULL,
    at      bigint NOT NULL,
    seq     bigint GENERATED ALWAYS AS IDENTITY,
    event   text COLLATE "C" NOT NULL,
    weight  bigint NOT NULL,
    user_id bigint,
    PRIMARY KEY (app, at, seq)
);

-- Count and weight sum per application, local date and event name.
CREATE TABLE hartslag_daily (
    app    bigint  NOT NULL,
    day    integer NOT NULL,
    event  text COLLATE "C" NOT NULL,
    count  bigint  NOT NULL,
    weight numeric NOT NULL,
    PRIMARY KEY (app, day, event)
);

-- The same per user.
CREATE TABLE hartslag_user_daily (
    app     bigint  NOT NULL,
    user_id bigint  NOT NULL,
    day     integer NOT NULL,
    event   text COLLATE "C" NOT NULL,
    count   bigint  NOT NULL,
    weight  numeric NOT NULL,
    PRIMARY KEY (app, user_id, day, event)
);

-- All-time totals per event name: they outlive retention, and their rows are the
-- application's distinct event names.
CREATE TABLE hartslag_totals (
    app    bigint  NOT NULL,
    event  text COLLATE "C" NOT NULL,
    count  bigint  NOT NULL,
    weight numeric NOT NULL,
    PRIMARY KEY (app, event)
);

-- All-time totals per user and event name (top users).
CREATE TABLE hartslag_user_totals (
    app     bigint  NOT NULL,
    user_id bigint  NOT NULL,
    event   text COLLATE "C" NOT NULL,
    count   bigint  NOT NULL,
    weight  numeric NOT NULL,
    PRIMARY KEY (app, user_id, event)
);

-- Per UTC hour and event name (charts); retention deletes them with the raw events.
CREATE TABLE hartslag_hourly (
    app    bigint  NOT NULL,
    hour   bigint  NOT NULL,
    event  text COLLATE "C" NOT NULL,
    count  bigint  NOT NULL,
    weight numeric NOT NULL,
    PRIMARY KEY (app, hour, event)
);

-- The newest event time per application, kept after retention deleted the event.
CREATE TABLE hartslag_latest (
    app bigint PRIMARY KEY,
    at  bigint NOT NULL
);

-- Idempotency-Key hashes per application: the unique key makes a key hold across
-- replicas (a second insert waits for the first transaction, then sees its row).
CREATE TABLE hartslag_idempotency (
    app         bigint NOT NULL,
    key         bytea  NOT NULL,
    at          bigint NOT NULL,
    fingerprint bytea  NOT NULL,
    PRIMARY KEY (app, key)
);
CREATE INDEX hartslag_idempotency_at ON hartslag_idempotency (app, at);

-- Application records (JSON of the record; num is the column's) and the numbers given.
CREATE TABLE hartslag_apps (
    key    text COLLATE "C" PRIMARY KEY,
    num    bigint NOT NULL UNIQUE,
    record text   NOT NULL
);
CREATE SEQUENCE hartslag_app_num START 1;

-- Token hashes (never tokens) and their owners (JSON).
CREATE TABLE hartslag_tokens (
    hash  bytea PRIMARY KEY,
    owner text  NOT NULL
);
