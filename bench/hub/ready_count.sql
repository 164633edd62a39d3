-- The culler's page total on PostgreSQL (see ready_page.sql).
SELECT COUNT(DISTINCT user_id) FROM servers WHERE state IN ('running');
