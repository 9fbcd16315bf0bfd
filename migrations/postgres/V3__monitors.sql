-- Monitors, their ping history and timelines, and the alert outbox, written by the leader
-- alone (every write transaction checks hartslag_leader first) and read by every replica.
-- Records are the JSON the embedded backend stores (bytea, decoded by the binary); times
-- are microseconds since the Unix epoch (bigint); keys compare byte by byte (COLLATE "C").

-- One value per round of the monitor engine: every row a round writes carries it as its
-- version, so a replica that mirrors the monitors asks for what changed after the version
-- it has (rounds commit one after the other, so versions committed only grow).
CREATE SEQUENCE hartslag_round START 1;

-- Monitor numbers (ping history and timelines are stored by number): never 0, never
-- given twice, also across a monitor removed and defined again.
CREATE SEQUENCE hartslag_monitor_num START 1;

-- Monitors by key (namespace/name): the whole record (definition and state, JSON), and
-- the state alone (JSON, about 150 bytes) where the rounds since the whole record changed
-- nothing else: a ping writes the small column, not the kilobyte record. When `state` is
-- set it is newer than the state inside `record`. `version`: the round that wrote the row
-- last.
CREATE TABLE hartslag_monitors (
    key     text COLLATE "C" PRIMARY KEY,
    num     bigint NOT NULL UNIQUE,
    record  bytea  NOT NULL,
    state   bytea,
    version bigint NOT NULL
);
CREATE INDEX hartslag_monitors_version ON hartslag_monitors (version);

-- Monitors removed, by the round (version) that removed them, so a mirror removes them
-- too; `at` is when. Rows older than a few minutes are pruned by the leader, and
-- hartslag_monitor_pruned remembers the newest version pruned: a mirror further behind
-- than that reloads every monitor instead.
CREATE TABLE hartslag_monitor_removals (
    key     text COLLATE "C" NOT NULL,
    num     bigint NOT NULL,
    version bigint NOT NULL,
    at      bigint NOT NULL
);
CREATE INDEX hartslag_monitor_removals_version ON hartslag_monitor_removals (version);

-- The newest removal version pruned (one row): changes after an older version than this
-- can no longer be told apart from a full reload.
CREATE TABLE hartslag_monitor_pruned (
    id      smallint PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL
);
INSERT INTO hartslag_monitor_pruned (id, version) VALUES (1, 0);

-- The last record (JSON) of each monitor deleted with its data retained, by key, for a
-- monitor defined again under the same key; its history stays under `num`.
CREATE TABLE hartslag_monitor_retained (
    key    text COLLATE "C" PRIMARY KEY,
    num    bigint NOT NULL,
    record bytea  NOT NULL
);

-- Ping history: one row per ping (JSON), by monitor number and the ping's sequence number
-- within its monitor. A monitor keeps its newest pings (the configured history, plus at
-- most a few more between trims; reads never return more than the newest kept).
CREATE TABLE hartslag_pings (
    num    bigint NOT NULL,
    seq    bigint NOT NULL,
    record bytea  NOT NULL,
    PRIMARY KEY (num, seq)
);

-- Timelines: state transitions (JSON) by monitor number, instant (`at`) and position among
-- the transitions of one instant (`pos`).
CREATE TABLE hartslag_timeline (
    num    bigint   NOT NULL,
    at     bigint   NOT NULL,
    pos    smallint NOT NULL,
    record bytea    NOT NULL,
    PRIMARY KEY (num, at, pos)
);

-- Alert deliveries waiting for their target, by delivery key (alert id and target); the
-- delivery (JSON) holds its attempts and next attempt time. `notice`: not a scheduled
-- repetition (the pending-notices gauge counts these). `claimed_by`: the leader generation
-- whose attempt holds it; a claim by an older generation is void (its leader is gone).
CREATE TABLE hartslag_outbox (
    key        bytea   PRIMARY KEY,
    delivery   bytea   NOT NULL,
    notice     boolean NOT NULL,
    claimed_by bigint
);

-- Finished deliveries (JSON: key, outcome, detail, attempts, when), newest last; the
-- newest ten thousand are kept for inspection.
CREATE TABLE hartslag_outbox_done (
    seq    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record bytea NOT NULL
);

-- What each target (by identity) was sent lately (JSON), for its rate limits and digests.
CREATE TABLE hartslag_outbox_targets (
    identity text COLLATE "C" PRIMARY KEY,
    history  bytea NOT NULL
);
