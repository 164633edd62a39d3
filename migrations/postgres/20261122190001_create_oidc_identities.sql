-- Which hub user an OpenID Connect subject logs in as: (provider, sub) is the identity, the
-- user name is derived from a claim once, at the first login, and never merges two subjects.

CREATE TABLE oidc_identities (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The provider's name in the hub's OIDC configuration.
    provider TEXT NOT NULL,
    -- The ID token's `sub`.
    subject TEXT NOT NULL,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created TIMESTAMPTZ NOT NULL,
    UNIQUE (provider, subject)
);

CREATE INDEX oidc_identities_user ON oidc_identities (user_id);
