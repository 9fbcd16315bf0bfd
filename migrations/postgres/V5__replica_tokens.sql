-- Tokens every replica must know alike.

-- The ping tokens of monitors created through the management API, in plain text, by
-- monitor key: the API shows a monitor's token (the Tickstem SDKs read it from a list or
-- get), and every replica must answer alike, also one that did not create the monitor or
-- leads after a failover. With one process, the data directory's token files hold them;
-- here the database does, at the same trust level: whoever can read this table can ping
-- these monitors, as whoever can read the data directory could. Written and deleted with
-- the monitor by the leader's management API.
CREATE TABLE hartslag_ping_tokens (
    key   text COLLATE "C" PRIMARY KEY,
    token text NOT NULL
);

-- The admin token (its hash) each running replica holds, by replica: every replica
-- accepts each one held, so replicas given different admin tokens (a rolling rotation of
-- the admin Secret) all work for clients of either. A replica renews its row every few
-- seconds; a row past `expires` (microseconds since the Unix epoch, the database's clock)
-- belongs to a replica that is gone, and its token stops working once no live row holds it.
CREATE TABLE hartslag_admin_tokens (
    holder  text COLLATE "C" PRIMARY KEY,
    hash    bytea  NOT NULL,
    expires bigint NOT NULL
);
