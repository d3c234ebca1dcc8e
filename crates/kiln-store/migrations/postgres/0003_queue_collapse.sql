-- The engine's collapse key per build request (Buildbot compares source stamps and
-- properties when it collapses; the key is computed once, when the buildset is stored),
-- and the scheduler that made each buildset (for `dependent` schedulers).
ALTER TABLE buildrequests ADD COLUMN collapse_key TEXT;
ALTER TABLE buildsets ADD COLUMN scheduler TEXT NOT NULL DEFAULT '';
