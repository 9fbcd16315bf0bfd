-- Who leads the replicas sharing this database: one row.
--
-- `generation` changes with every change of leader and only grows: by one when a
-- standalone replica takes the advisory lock, or to the Lease's `leaseTransitions` in
-- operator mode. Every write only the leader may make (monitor rounds, alert claims and
-- finishes, status) reads the row in its own transaction under a share lock and is
-- refused unless the generation is its own. A take-over updates the row, so it waits for
-- the deposed leader's transactions in flight, and every one the deposed leader begins
-- after it fails: a deposed leader can never deliver an alert or write a state again.
CREATE TABLE hartslag_leader (
    id         smallint PRIMARY KEY CHECK (id = 1),
    generation bigint NOT NULL,
    -- The holder's identity, for people and logs.
    holder     text NOT NULL,
    -- When it took over, microseconds since the Unix epoch.
    since      bigint NOT NULL
);

INSERT INTO hartslag_leader (id, generation, holder, since) VALUES (1, 0, '', 0);

-- Pings taken by replicas that do not lead, waiting for the leader to apply them. A
-- replica answers a ping once its row is committed here (and notifies channel
-- `hartslag_relay`); the leader applies it with the time it was taken and deletes the
-- row in the transaction of the round that applied it.
CREATE TABLE hartslag_ping_relay (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The monitor's key, namespace/name.
    monitor text COLLATE "C" NOT NULL,
    -- When the replica took it, microseconds since the Unix epoch.
    at      bigint NOT NULL,
    -- What the ping said (kind, exit code, source, user agent, body, run id).
    ping    jsonb NOT NULL
);
