-- City platform feed (issue 8): the outbox. Every batch is stored here, body and all,
-- before any attempt to send it; a row leaves the pending set only when the platform
-- answered 2xx (or 409, "already have it"). Instants are UTC Unix seconds.
-- (PostgreSQL: `id BIGSERIAL PRIMARY KEY` in place of `INTEGER PRIMARY KEY`.)

CREATE TABLE feed_outbox (
    id INTEGER PRIMARY KEY,
    idem_key TEXT NOT NULL,         -- `{subject}:{night}:r{revision}`, sent as Idempotency-Key
    subject TEXT NOT NULL,          -- `village:<district>/<town>/<village>` or `district:<district>`, percent-encoded
    night TEXT NOT NULL,            -- '2025-11-01'
    revision BIGINT NOT NULL,       -- 0 first, +1 per correction
    digest TEXT NOT NULL,           -- SHA-256 (hex) of the night's figures in the body
    body TEXT NOT NULL,             -- the exact JSON bytes sent (and signed) on every attempt
    created BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt BIGINT NOT NULL,
    last_error TEXT,
    delivered BIGINT,               -- NULL while pending
    UNIQUE (idem_key),
    UNIQUE (subject, night, revision)
);
CREATE INDEX feed_outbox_pending ON feed_outbox (delivered, next_attempt);
CREATE INDEX feed_outbox_night ON feed_outbox (night);
