-- Indexes for the REST API's most common filters (`complete=`), so a page of builds or build
-- requests filtered on completion is an index range, not a table scan.
CREATE INDEX api_builds_complete ON builds(complete, id);
CREATE INDEX api_buildrequests_complete ON buildrequests(complete, id);
