-- An account is claimed by one identity at most: two logins racing to claim the same
-- pre-created account (each having seen it unlinked) cannot both link it; the loser's insert
-- fails as a conflict and its login is asked to start again (it then gets a name of its own).

DROP INDEX oidc_identities_user;
CREATE UNIQUE INDEX oidc_identities_one_per_user ON oidc_identities (user_id);
