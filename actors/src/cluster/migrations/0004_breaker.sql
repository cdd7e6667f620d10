-- Warden's cluster store, version 4: a source's circuit breaker holds every node. A node whose
-- breaker opens records until when; every node's permit is refused until then (or until a
-- probe that succeeded closes it).

ALTER TABLE sources ADD COLUMN breaker_open_until timestamptz;
