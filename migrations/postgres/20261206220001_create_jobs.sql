-- Users' batch jobs (an Atelier extension of the JupyterHub API: /hub/api/users/{name}/jobs).

CREATE TABLE jobs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The BatchJob name: an RFC 1123 label made of the user's name and a random suffix.
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    profile TEXT NOT NULL,
    -- JSON list of strings: the program and its arguments.
    command TEXT NOT NULL,
    -- JSON object: the submitted spec (resources, node_pool, data_sources, env, working_dir,
    -- deadline_seconds).
    spec TEXT NOT NULL DEFAULT '{}',
    -- The pool the job was placed on.
    node_pool TEXT,
    phase TEXT NOT NULL DEFAULT 'Pending'
        CHECK (phase IN ('Pending', 'Queued', 'Running', 'Succeeded', 'Failed', 'Cancelled')),
    -- kubernetes, slurm or local; the system's id of the job.
    system TEXT NOT NULL,
    system_id TEXT,
    exit_code BIGINT,
    reason TEXT,
    message TEXT,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    -- The local backend's process (its group leader).
    pid BIGINT,
    created TIMESTAMPTZ NOT NULL,
    started TIMESTAMPTZ,
    finished TIMESTAMPTZ
);

CREATE INDEX jobs_user ON jobs (user_id, id);
CREATE INDEX jobs_phase ON jobs (phase, id);
