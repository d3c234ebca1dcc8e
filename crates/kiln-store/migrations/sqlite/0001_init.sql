-- Kiln store schema, SQLite dialect. Modelled on Buildbot's (master/buildbot/db/model.py).
-- Times are epoch seconds; booleans are INTEGER 0/1; properties are JSON text.
CREATE TABLE masters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    active INTEGER NOT NULL DEFAULT 1,
    last_active INTEGER NOT NULL
);
CREATE TABLE workers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    info TEXT NOT NULL DEFAULT '{}',
    paused INTEGER NOT NULL DEFAULT 0,
    graceful INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE builders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT,
    tags TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE sourcestamps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    branch TEXT,
    revision TEXT,
    repository TEXT NOT NULL DEFAULT '',
    codebase TEXT NOT NULL DEFAULT '',
    project TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
);
CREATE TABLE changes (
    changeid INTEGER PRIMARY KEY AUTOINCREMENT,
    author TEXT NOT NULL,
    committer TEXT,
    comments TEXT NOT NULL,
    branch TEXT,
    revision TEXT,
    when_timestamp INTEGER NOT NULL,
    category TEXT,
    repository TEXT NOT NULL DEFAULT '',
    codebase TEXT NOT NULL DEFAULT '',
    project TEXT NOT NULL DEFAULT '',
    sourcestampid INTEGER NOT NULL REFERENCES sourcestamps(id)
);
CREATE INDEX changes_branch ON changes(branch, changeid);
CREATE INDEX changes_revision ON changes(revision);
CREATE TABLE change_files (
    changeid INTEGER NOT NULL REFERENCES changes(changeid),
    filename TEXT NOT NULL
);
CREATE INDEX change_files_changeid ON change_files(changeid);
CREATE TABLE change_properties (
    changeid INTEGER NOT NULL REFERENCES changes(changeid),
    property_name TEXT NOT NULL,
    property_value TEXT NOT NULL,
    PRIMARY KEY (changeid, property_name)
);
CREATE TABLE buildsets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    external_idstring TEXT,
    reason TEXT NOT NULL DEFAULT '',
    submitted_at INTEGER NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    complete_at INTEGER,
    results INTEGER,
    parent_buildid INTEGER
);
CREATE INDEX buildsets_complete ON buildsets(complete, id);
CREATE TABLE buildset_sourcestamps (
    buildsetid INTEGER NOT NULL REFERENCES buildsets(id),
    sourcestampid INTEGER NOT NULL REFERENCES sourcestamps(id),
    PRIMARY KEY (buildsetid, sourcestampid)
);
CREATE TABLE buildset_properties (
    buildsetid INTEGER NOT NULL REFERENCES buildsets(id),
    property_name TEXT NOT NULL,
    property_value TEXT NOT NULL,
    PRIMARY KEY (buildsetid, property_name)
);
-- The queue. A claim is (claimed_by_masterid, claimed_at) on the request itself, so claiming is
-- one conditional UPDATE (SKIP LOCKED on PostgreSQL) instead of Buildbot's insert into
-- buildrequest_claims.
CREATE TABLE buildrequests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    buildsetid INTEGER NOT NULL REFERENCES buildsets(id),
    builderid INTEGER NOT NULL REFERENCES builders(id),
    priority INTEGER NOT NULL DEFAULT 0,
    submitted_at INTEGER NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    complete_at INTEGER,
    results INTEGER,
    waited_for INTEGER NOT NULL DEFAULT 0,
    claimed_by_masterid INTEGER REFERENCES masters(id),
    claimed_at INTEGER
);
CREATE INDEX buildrequests_queue ON buildrequests(builderid, priority DESC, submitted_at, id) WHERE complete = 0 AND claimed_by_masterid IS NULL;
CREATE INDEX buildrequests_builder ON buildrequests(builderid, id);
CREATE INDEX buildrequests_buildset ON buildrequests(buildsetid);
CREATE INDEX buildrequests_claimed ON buildrequests(claimed_by_masterid) WHERE complete = 0;
CREATE TABLE builds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    number INTEGER NOT NULL,
    builderid INTEGER NOT NULL REFERENCES builders(id),
    buildrequestid INTEGER NOT NULL REFERENCES buildrequests(id),
    workerid INTEGER NOT NULL REFERENCES workers(id),
    masterid INTEGER NOT NULL REFERENCES masters(id),
    started_at INTEGER NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    complete_at INTEGER,
    state_string TEXT NOT NULL DEFAULT '',
    results INTEGER,
    locks_duration_s INTEGER NOT NULL DEFAULT 0,
    UNIQUE (builderid, number)
);
CREATE INDEX builds_builder ON builds(builderid, id);
CREATE INDEX builds_worker ON builds(workerid, id);
CREATE INDEX builds_request ON builds(buildrequestid);
CREATE INDEX builds_complete_at ON builds(complete_at);
CREATE INDEX builds_unfinished ON builds(masterid) WHERE complete = 0;
CREATE TABLE build_properties (
    buildid INTEGER NOT NULL REFERENCES builds(id),
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (buildid, name)
);
CREATE TABLE steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    number INTEGER NOT NULL,
    name TEXT NOT NULL,
    buildid INTEGER NOT NULL REFERENCES builds(id),
    started_at INTEGER,
    complete INTEGER NOT NULL DEFAULT 0,
    complete_at INTEGER,
    state_string TEXT NOT NULL DEFAULT '',
    results INTEGER,
    urls TEXT NOT NULL DEFAULT '[]',
    hidden INTEGER NOT NULL DEFAULT 0,
    UNIQUE (buildid, number),
    UNIQUE (buildid, name)
);
CREATE TABLE logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    slug TEXT NOT NULL,
    stepid INTEGER NOT NULL REFERENCES steps(id),
    complete INTEGER NOT NULL DEFAULT 0,
    num_lines INTEGER NOT NULL DEFAULT 0,
    type TEXT NOT NULL,
    -- bytes received, bytes stored (before compression), whether the cap was hit
    total_bytes INTEGER NOT NULL DEFAULT 0,
    stored_bytes INTEGER NOT NULL DEFAULT 0,
    truncated INTEGER NOT NULL DEFAULT 0,
    UNIQUE (stepid, slug)
);
-- compressed: 0 raw, 4 zstd (Buildbot's ids). raw_len bounds decompression.
CREATE TABLE logchunks (
    logid INTEGER NOT NULL REFERENCES logs(id),
    first_line INTEGER NOT NULL,
    last_line INTEGER NOT NULL,
    content BLOB NOT NULL,
    compressed INTEGER NOT NULL,
    raw_len INTEGER NOT NULL,
    PRIMARY KEY (logid, first_line)
);
