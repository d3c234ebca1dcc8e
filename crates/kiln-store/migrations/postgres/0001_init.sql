-- Kiln store schema, PostgreSQL dialect. Modelled on Buildbot's (master/buildbot/db/model.py).
-- Times are epoch seconds; booleans are SMALLINT 0/1; properties are JSON text.
CREATE TABLE masters (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    active SMALLINT NOT NULL DEFAULT 1,
    last_active BIGINT NOT NULL
);
CREATE TABLE workers (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    info TEXT NOT NULL DEFAULT '{}',
    paused SMALLINT NOT NULL DEFAULT 0,
    graceful SMALLINT NOT NULL DEFAULT 0
);
CREATE TABLE builders (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT,
    tags TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE sourcestamps (
    id BIGSERIAL PRIMARY KEY,
    branch TEXT,
    revision TEXT,
    repository TEXT NOT NULL DEFAULT '',
    codebase TEXT NOT NULL DEFAULT '',
    project TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);
CREATE TABLE changes (
    changeid BIGSERIAL PRIMARY KEY,
    author TEXT NOT NULL,
    committer TEXT,
    comments TEXT NOT NULL,
    branch TEXT,
    revision TEXT,
    when_timestamp BIGINT NOT NULL,
    category TEXT,
    repository TEXT NOT NULL DEFAULT '',
    codebase TEXT NOT NULL DEFAULT '',
    project TEXT NOT NULL DEFAULT '',
    sourcestampid BIGINT NOT NULL REFERENCES sourcestamps(id)
);
CREATE INDEX changes_branch ON changes(branch, changeid);
CREATE INDEX changes_revision ON changes(revision);
CREATE TABLE change_files (
    changeid BIGINT NOT NULL REFERENCES changes(changeid),
    filename TEXT NOT NULL
);
CREATE INDEX change_files_changeid ON change_files(changeid);
CREATE TABLE change_properties (
    changeid BIGINT NOT NULL REFERENCES changes(changeid),
    property_name TEXT NOT NULL,
    property_value TEXT NOT NULL,
    PRIMARY KEY (changeid, property_name)
);
CREATE TABLE buildsets (
    id BIGSERIAL PRIMARY KEY,
    external_idstring TEXT,
    reason TEXT NOT NULL DEFAULT '',
    submitted_at BIGINT NOT NULL,
    complete SMALLINT NOT NULL DEFAULT 0,
    complete_at BIGINT,
    results BIGINT,
    parent_buildid BIGINT
);
CREATE INDEX buildsets_complete ON buildsets(complete, id);
CREATE TABLE buildset_sourcestamps (
    buildsetid BIGINT NOT NULL REFERENCES buildsets(id),
    sourcestampid BIGINT NOT NULL REFERENCES sourcestamps(id),
    PRIMARY KEY (buildsetid, sourcestampid)
);
CREATE TABLE buildset_properties (
    buildsetid BIGINT NOT NULL REFERENCES buildsets(id),
    property_name TEXT NOT NULL,
    property_value TEXT NOT NULL,
    PRIMARY KEY (buildsetid, property_name)
);
-- The queue. A claim is (claimed_by_masterid, claimed_at) on the request itself, so claiming is
-- one conditional UPDATE (SKIP LOCKED on PostgreSQL) instead of Buildbot's insert into
-- buildrequest_claims.
CREATE TABLE buildrequests (
    id BIGSERIAL PRIMARY KEY,
    buildsetid BIGINT NOT NULL REFERENCES buildsets(id),
    builderid BIGINT NOT NULL REFERENCES builders(id),
    priority BIGINT NOT NULL DEFAULT 0,
    submitted_at BIGINT NOT NULL,
    complete SMALLINT NOT NULL DEFAULT 0,
    complete_at BIGINT,
    results BIGINT,
    waited_for SMALLINT NOT NULL DEFAULT 0,
    claimed_by_masterid BIGINT REFERENCES masters(id),
    claimed_at BIGINT
);
CREATE INDEX buildrequests_queue ON buildrequests(builderid, priority DESC, submitted_at, id) WHERE complete = 0 AND claimed_by_masterid IS NULL;
CREATE INDEX buildrequests_builder ON buildrequests(builderid, id);
CREATE INDEX buildrequests_buildset ON buildrequests(buildsetid);
CREATE INDEX buildrequests_claimed ON buildrequests(claimed_by_masterid) WHERE complete = 0;
CREATE TABLE builds (
    id BIGSERIAL PRIMARY KEY,
    number BIGINT NOT NULL,
    builderid BIGINT NOT NULL REFERENCES builders(id),
    buildrequestid BIGINT NOT NULL REFERENCES buildrequests(id),
    workerid BIGINT NOT NULL REFERENCES workers(id),
    masterid BIGINT NOT NULL REFERENCES masters(id),
    started_at BIGINT NOT NULL,
    complete SMALLINT NOT NULL DEFAULT 0,
    complete_at BIGINT,
    state_string TEXT NOT NULL DEFAULT '',
    results BIGINT,
    locks_duration_s BIGINT NOT NULL DEFAULT 0,
    UNIQUE (builderid, number)
);
CREATE INDEX builds_builder ON builds(builderid, id);
CREATE INDEX builds_worker ON builds(workerid, id);
CREATE INDEX builds_request ON builds(buildrequestid);
CREATE INDEX builds_complete_at ON builds(complete_at);
CREATE INDEX builds_unfinished ON builds(masterid) WHERE complete = 0;
CREATE TABLE build_properties (
    buildid BIGINT NOT NULL REFERENCES builds(id),
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (buildid, name)
);
CREATE TABLE steps (
    id BIGSERIAL PRIMARY KEY,
    number BIGINT NOT NULL,
    name TEXT NOT NULL,
    buildid BIGINT NOT NULL REFERENCES builds(id),
    started_at BIGINT,
    complete SMALLINT NOT NULL DEFAULT 0,
    complete_at BIGINT,
    state_string TEXT NOT NULL DEFAULT '',
    results BIGINT,
    urls TEXT NOT NULL DEFAULT '[]',
    hidden SMALLINT NOT NULL DEFAULT 0,
    UNIQUE (buildid, number),
    UNIQUE (buildid, name)
);
CREATE TABLE logs (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    slug TEXT NOT NULL,
    stepid BIGINT NOT NULL REFERENCES steps(id),
    complete SMALLINT NOT NULL DEFAULT 0,
    num_lines BIGINT NOT NULL DEFAULT 0,
    type TEXT NOT NULL,
    -- bytes received, bytes stored (before compression), whether the cap was hit
    total_bytes BIGINT NOT NULL DEFAULT 0,
    stored_bytes BIGINT NOT NULL DEFAULT 0,
    truncated SMALLINT NOT NULL DEFAULT 0,
    UNIQUE (stepid, slug)
);
-- compressed: 0 raw, 4 zstd (Buildbot's ids). raw_len bounds decompression.
CREATE TABLE logchunks (
    logid BIGINT NOT NULL REFERENCES logs(id),
    first_line BIGINT NOT NULL,
    last_line BIGINT NOT NULL,
    content BYTEA NOT NULL,
    compressed SMALLINT NOT NULL,
    raw_len BIGINT NOT NULL,
    PRIMARY KEY (logid, first_line)
);
