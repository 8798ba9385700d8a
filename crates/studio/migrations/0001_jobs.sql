-- Jobs, the nodes of each attempt, and what happened to them. Portable SQL: it runs on
-- SQLite and on PostgreSQL (ids are assigned by the store, times are Unix milliseconds,
-- JSON is text).
CREATE TABLE jobs (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    backend TEXT NOT NULL,
    num_nodes BIGINT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    reason TEXT,
    cancel_requested BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE nodes (
    job_id BIGINT NOT NULL REFERENCES jobs (id),
    attempt BIGINT NOT NULL,
    node_rank BIGINT NOT NULL,
    host TEXT NOT NULL,
    handle TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code BIGINT,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    PRIMARY KEY (job_id, attempt, node_rank)
);

CREATE TABLE events (
    job_id BIGINT NOT NULL REFERENCES jobs (id),
    seq BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    at BIGINT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE INDEX jobs_by_status ON jobs (status);
