-- Hub users and groups (JupyterHub's User and Group models).
-- Names use the "C" collation so that they sort and compare bytewise, as on SQLite.

CREATE TABLE users (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    -- ASCII-lowercased name: two names that differ only in case are refused.
    name_norm TEXT COLLATE "C" NOT NULL UNIQUE CHECK (name_norm = lower(name)),
    admin BOOLEAN NOT NULL DEFAULT FALSE,
    created TIMESTAMPTZ NOT NULL,
    last_activity TIMESTAMPTZ
);

CREATE INDEX users_last_activity ON users (last_activity);

CREATE TABLE groups (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    -- JSON object.
    properties TEXT NOT NULL DEFAULT '{}',
    created TIMESTAMPTZ NOT NULL
);

CREATE TABLE user_groups (
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    group_id BIGINT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, group_id)
);

CREATE INDEX user_groups_group ON user_groups (group_id, user_id);
