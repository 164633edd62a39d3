-- Browser sessions, OAuth clients of the workspace servers and their authorization codes.

CREATE TABLE sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- SHA-256 (hex) of the cookie value; the value itself is never stored.
    id_hash TEXT NOT NULL UNIQUE,
    -- NULL while the browser has not logged in yet.
    user_id INTEGER REFERENCES users (id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    next_url TEXT,
    -- JSON object: login flow state (OIDC state, nonce, PKCE verifier) and the like.
    data TEXT NOT NULL DEFAULT '{}',
    created TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    last_activity TEXT
);

CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

CREATE TABLE oauth_clients (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- jupyterhub-user-<name>[-<server>] for a workspace server.
    client_id TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    -- SHA-256 (hex) of the client secret (a server's API token).
    secret_hash TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    server_id INTEGER REFERENCES servers (id) ON DELETE CASCADE,
    -- JSON array of scopes the client may request.
    allowed_scopes TEXT NOT NULL DEFAULT '[]',
    created TEXT NOT NULL
);

CREATE INDEX oauth_clients_server ON oauth_clients (server_id);

CREATE TABLE oauth_codes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- SHA-256 (hex) of the code; the code itself is never stored.
    code_hash TEXT NOT NULL UNIQUE,
    client_id TEXT NOT NULL REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id INTEGER REFERENCES sessions (id) ON DELETE CASCADE,
    redirect_uri TEXT NOT NULL,
    code_challenge TEXT,
    code_challenge_method TEXT CHECK (code_challenge_method IN ('S256', 'plain')),
    -- JSON array.
    scopes TEXT NOT NULL DEFAULT '[]',
    created TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    CHECK ((code_challenge IS NULL) = (code_challenge_method IS NULL))
);

CREATE INDEX oauth_codes_client ON oauth_codes (client_id);
CREATE INDEX oauth_codes_user ON oauth_codes (user_id);
CREATE INDEX oauth_codes_session ON oauth_codes (session_id);
CREATE INDEX oauth_codes_expires_at ON oauth_codes (expires_at);
