-- API tokens of users and services, including the access tokens issued to OAuth clients.

CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- SHA-256 (hex) of the token; the token itself is never stored.
    hash TEXT NOT NULL UNIQUE,
    -- The first characters of the token, for display.
    prefix TEXT NOT NULL,
    user_id INTEGER REFERENCES users (id) ON DELETE CASCADE,
    service TEXT,
    oauth_client_id TEXT REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
    session_id INTEGER REFERENCES sessions (id) ON DELETE CASCADE,
    -- JSON array.
    scopes TEXT NOT NULL DEFAULT '[]',
    note TEXT,
    created TEXT NOT NULL,
    expires_at TEXT,
    last_activity TEXT,
    -- Owned by exactly one user or one service.
    CHECK ((user_id IS NULL) <> (service IS NULL))
);

CREATE INDEX api_tokens_user ON api_tokens (user_id);
CREATE INDEX api_tokens_service ON api_tokens (service);
CREATE INDEX api_tokens_oauth_client ON api_tokens (oauth_client_id);
CREATE INDEX api_tokens_session ON api_tokens (session_id);
CREATE INDEX api_tokens_expires_at ON api_tokens (expires_at);
