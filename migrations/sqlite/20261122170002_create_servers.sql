-- Users' servers: the default server has the name '', named servers have their own.

CREATE TABLE servers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    -- ASCII-lowercased name: two servers of a user whose names differ only in case are refused
    -- (the names of the Kubernetes objects derived from them would collide).
    name_norm TEXT NOT NULL CHECK (name_norm = lower(name)),
    display_name TEXT,
    profile TEXT,
    -- JSON object: the options of the last start.
    user_options TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL DEFAULT 'stopped'
        CHECK (state IN ('stopped', 'starting', 'running', 'stopping', 'failed')),
    -- JSON object: the backend's handle (local pid and port, Workspace name, ...).
    spawner_state TEXT NOT NULL DEFAULT '{}',
    url TEXT,
    started TEXT,
    last_activity TEXT,
    created TEXT NOT NULL,
    UNIQUE (user_id, name_norm),
    CHECK (state <> 'running' OR url IS NOT NULL)
);

CREATE INDEX servers_state ON servers (state, user_id);
