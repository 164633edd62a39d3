-- Hub users and groups (JupyterHub's User and Group models).
-- Timestamps are RFC 3339 text written by the hub in UTC with at most microsecond precision,
-- so they order correctly as text.

CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    -- ASCII-lowercased name: two names that differ only in case are refused.
    name_norm TEXT NOT NULL UNIQUE CHECK (name_norm = lower(name)),
    admin BOOLEAN NOT NULL DEFAULT FALSE,
    created TEXT NOT NULL,
    last_activity TEXT
);

CREATE INDEX users_last_activity ON users (last_activity);

CREATE TABLE groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    -- JSON object.
    properties TEXT NOT NULL DEFAULT '{}',
    created TEXT NOT NULL
);

CREATE TABLE user_groups (
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    group_id INTEGER NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, group_id)
);

CREATE INDEX user_groups_group ON user_groups (group_id, user_id);
