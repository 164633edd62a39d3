-- API tokens of users and services, including the access tokens issued to OAuth clients.

CREATE TABLE api_tokens (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- SHA-256 (hex) of the token; the token itself is never stored.
    hash TEXT NOT NULL UNIQUE,
    -- The first characters of the token, for display.
    prefix TEXT NOT NULL,
    user_id BIGINT REFERENCES users (id) ON DELETE CASCADE,
    service TEXT,
    oauth_client_id TEXT COLLATE "C" REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
    session_id BIGINT REFERENCES sessions (id) ON DELETE CASCADE,
    -- JSON array.
    scopes TEXT NOT NULL DEFAULT '[]',
    note TEXT,
    created TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ,
    last_activity TIMESTAMPTZ,
    -- Owned by exactly one user or one service.
    CHECK ((user_id IS NULL) <> (service IS NULL))
);

CREATE INDEX api_tokens_user ON api_tokens (user_id);
CREATE INDEX api_tokens_service ON api_tokens (service);
CREATE INDEX api_tokens_oauth_client ON api_tokens (oauth_client_id);
CREATE INDEX api_tokens_session ON api_tokens (session_id);
CREATE INDEX api_tokens_expires_at ON api_tokens (expires_at);
