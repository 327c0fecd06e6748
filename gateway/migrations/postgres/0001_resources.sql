-- Every resource (logical id) and every version of it. The current version of a resource is
-- found through `resource` (one row per logical id) without scanning `resource_version`.
CREATE TABLE resource (
    rkey          BIGSERIAL PRIMARY KEY,
    resource_type TEXT COLLATE "C" NOT NULL,
    id            TEXT COLLATE "C" NOT NULL,
    version_id    BIGINT NOT NULL,
    last_updated  BIGINT NOT NULL,      -- milliseconds since the Unix epoch
    deleted       SMALLINT NOT NULL,    -- 1 when the current version is a deletion tombstone
    UNIQUE (resource_type, id)
);
CREATE INDEX resource_type_updated ON resource (resource_type, last_updated);
CREATE INDEX resource_type_rkey ON resource (resource_type, rkey);

CREATE TABLE resource_version (
    vkey          BIGSERIAL PRIMARY KEY, -- the order in which versions were written
    rkey          BIGINT NOT NULL REFERENCES resource (rkey),
    resource_type TEXT COLLATE "C" NOT NULL,
    version_id    BIGINT NOT NULL,
    last_updated  BIGINT NOT NULL,
    method        TEXT NOT NULL,         -- POST, PUT, PATCH or DELETE: how this version was made
    body          TEXT,                  -- the version as served; NULL for a deletion
    UNIQUE (rkey, version_id)
);
CREATE INDEX resource_version_type ON resource_version (resource_type, vkey);
CREATE INDEX resource_version_updated ON resource_version (last_updated);
