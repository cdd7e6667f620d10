-- Warden's cluster store, version 7: the PostgreSQL sink's outbox, for every node. With
-- `[sinks.postgres]` configured (every node must agree: the `sinks.postgres` setting), each
-- record a completion changes gets a row here in the same statement as the record itself, so a
-- record is either shipped eventually or was never written. The value is not copied: the
-- shipper reads the record's current value when it ships.

CREATE TABLE sink_outbox (
    seq bigserial PRIMARY KEY,
    key text COLLATE "C" NOT NULL
);

-- Records the sink's database refused one by one, parked so they cannot block the others
-- (`warden sinks backfill --prefix <key>` ships them again).
CREATE TABLE sink_rejected (
    key       text COLLATE "C" PRIMARY KEY,
    error     text        NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now()
);
