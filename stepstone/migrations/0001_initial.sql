-- The seven entities (workflows, executions, states, steps, logs, metrics, checkpoints),
-- the executors' heartbeat table and the functions that make each hot-path write one
-- statement. {schema} is replaced by the configured schema, quoted as an identifier.

CREATE TABLE {schema}.workflows (
    name        text        NOT NULL,
    version     text        NOT NULL,
    fingerprint text        NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TABLE {schema}.executors (
    id           text        PRIMARY KEY,
    hostname     text        NOT NULL,
    pid          integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {schema}.executions (
    id               text        PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 255),
    workflow_name    text        NOT NULL,
    workflow_version text        NOT NULL,
    status           text        NOT NULL
        CHECK (status IN ('ENQUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
    inputs           text        NOT NULL,
    output           text,
    error            jsonb,
    owner            text,
    epoch            bigint      NOT NULL DEFAULT 0,
    parent_id        text,
    trace_context    jsonb,
    attributes       jsonb       NOT NULL DEFAULT '{{}}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);
-- Recovery looks up the running executions of one owner, or of expired owners.
CREATE INDEX executions_running_owner_idx ON {schema}.executions (owner) WHERE status = 'RUNNING';
-- Listing: newest first, overall and per workflow name; children of a parent.
CREATE INDEX executions_created_idx ON {schema}.executions (created_at, id);
CREATE INDEX executions_name_created_idx ON {schema}.executions (workflow_name, created_at, id);
CREATE INDEX executions_parent_idx ON {schema}.executions (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE {schema}.steps (
    execution_id text        NOT NULL REFERENCES {schema}.executions (id) ON DELETE CASCADE,
    seq          integer     NOT NULL CHECK (seq >= 0),
    name         text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('step', 'transaction', 'workflow')),
    output       text,
    error        jsonb,
    attempts     integer     NOT NULL CHECK (attempts >= 1),
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL,
    PRIMARY KEY (execution_id, seq)
);

CREATE TABLE {schema}.states (
    execution_id text        NOT NULL REFERENCES {schema}.executions (id) ON DELETE CASCADE,
    key          text        NOT NULL,
    value        text        NOT NULL,
    seq          integer     NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (execution_id, key)
);

-- A snapshot of the whole state at a step boundary: seq is the number of steps completed
-- when it was taken (the latest such snapshot: a completion that changes state after the
-- last step replaces it), so fork and recovery can start from position seq with this state.
CREATE TABLE {schema}.checkpoints (
    execution_id text        NOT NULL REFERENCES {schema}.executions (id) ON DELETE CASCADE,
    seq          integer     NOT NULL CHECK (seq >= 0),
    state        jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (execution_id, seq)
);

CREATE TABLE {schema}.logs (
    execution_id text        NOT NULL REFERENCES {schema}.executions (id) ON DELETE CASCADE,
    id           bigint      GENERATED ALWAYS AS IDENTITY,
    at           timestamptz NOT NULL DEFAULT now(),
    event        text        NOT NULL,
    actor        text,
    seq          integer,
    details      jsonb       NOT NULL DEFAULT '{{}}',
    PRIMARY KEY (execution_id, id)
);

-- Metrics are derived from the rows above: nothing extra is written on the hot path.
CREATE VIEW {schema}.step_metrics AS
SELECT s.execution_id,
       e.workflow_name,
       s.seq,
       s.name                    AS step_name,
       s.kind,
       s.attempts,
       s.attempts - 1            AS retries,
       s.error IS NOT NULL       AS failed,
       s.finished_at - s.started_at AS duration,
       s.finished_at
  FROM {schema}.steps s
  JOIN {schema}.executions e ON e.id = s.execution_id;

CREATE VIEW {schema}.execution_metrics AS
SELECT e.id                         AS execution_id,
       e.workflow_name,
       e.workflow_version,
       e.status,
       e.created_at,
       e.finished_at,
       e.finished_at - e.created_at AS duration,
       coalesce(s.steps, 0)         AS steps,
       coalesce(s.retries, 0)       AS retries,
       coalesce(l.recoveries, 0)    AS recoveries
  FROM {schema}.executions e
  LEFT JOIN LATERAL (
        SELECT count(*) AS steps, sum(st.attempts - 1) AS retries
          FROM {schema}.steps st WHERE st.execution_id = e.id) s ON true
  LEFT JOIN LATERAL (
        SELECT count(*) AS recoveries
          FROM {schema}.logs lg
         WHERE lg.execution_id = e.id AND lg.event = 'execution_resumed') l ON true;

-- The fence: raises (SQLSTATE SS001) unless p_owner still owns the running execution at
-- p_epoch. The row is locked (FOR SHARE, or FOR NO KEY UPDATE when the caller updates it
-- next), so a concurrent claim waits for this transaction, and a claim that committed first
-- is the version read here, so the check can never be overtaken. It raises instead of
-- matching nothing so that a COMMIT pipelined behind it cannot commit. The row is found by
-- its primary key alone (executions_pkey); the other columns are compared afterwards.
CREATE FUNCTION {schema}.fence(
    p_id text, p_owner text, p_epoch bigint, p_exclusive boolean DEFAULT false
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    found_owner  text;
    found_epoch  bigint;
    found_status text;
BEGIN
    IF p_exclusive THEN
        SELECT owner, epoch, status INTO found_owner, found_epoch, found_status
          FROM {schema}.executions WHERE id = p_id FOR NO KEY UPDATE;
    ELSE
        SELECT owner, epoch, status INTO found_owner, found_epoch, found_status
          FROM {schema}.executions WHERE id = p_id FOR SHARE;
    END IF;
    IF found_owner IS DISTINCT FROM p_owner OR found_epoch IS DISTINCT FROM p_epoch
       OR found_status IS DISTINCT FROM 'RUNNING' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'SS001',
            MESSAGE = format('executor %s no longer owns execution %s at epoch %s',
                             p_owner, p_id, p_epoch),
            DETAIL = format('the execution has owner %s, epoch %s, status %s',
                            coalesce(found_owner, '(none)'), coalesce(found_epoch::text, '(none)'),
                            coalesce(found_status, '(no such execution)'));
    END IF;
END $$;

-- Applies state changes and snapshots the resulting state as the checkpoint at p_seq.
CREATE FUNCTION {schema}.write_state(
    p_id text, p_seq integer, p_state jsonb, p_deleted text[]
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_deleted IS NOT NULL THEN
        DELETE FROM {schema}.states WHERE execution_id = p_id AND key = ANY (p_deleted);
    END IF;
    IF p_state IS NOT NULL THEN
        INSERT INTO {schema}.states AS s (execution_id, key, value, seq)
        SELECT p_id, kv.key, kv.value, p_seq FROM jsonb_each_text(p_state) kv
            ON CONFLICT (execution_id, key) DO UPDATE
           SET value = EXCLUDED.value, seq = EXCLUDED.seq, updated_at = now();
    END IF;
    INSERT INTO {schema}.checkpoints (execution_id, seq, state)
    SELECT p_id, p_seq, coalesce(jsonb_object_agg(st.key, st.value), '{{}}'::jsonb)
      FROM {schema}.states st WHERE st.execution_id = p_id
        ON CONFLICT (execution_id, seq) DO UPDATE SET state = EXCLUDED.state, created_at = now();
END $$;

-- Starts an execution, or returns the one that already has this id (created = false).
CREATE FUNCTION {schema}.start_execution(
    p_id text, p_name text, p_version text, p_inputs text, p_owner text,
    p_parent text, p_trace jsonb, p_attributes jsonb
) RETURNS TABLE (created boolean, workflow_name text, status text, owner text, epoch bigint,
                 output text, error jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO {schema}.executions AS e
           (id, workflow_name, workflow_version, status, inputs, owner, epoch, parent_id,
            trace_context, attributes, started_at)
    VALUES (p_id, p_name, p_version, 'RUNNING', p_inputs, p_owner, 1, p_parent,
            p_trace, coalesce(p_attributes, '{{}}'::jsonb), now())
        ON CONFLICT (id) DO NOTHING;
    IF FOUND THEN
        INSERT INTO {schema}.logs (execution_id, event, actor, details)
        VALUES (p_id, 'execution_started', p_owner, jsonb_build_object('epoch', 1));
        RETURN QUERY SELECT true, p_name, 'RUNNING'::text, p_owner, 1::bigint, NULL::text, NULL::jsonb;
    ELSE
        RETURN QUERY SELECT false, x.workflow_name, x.status, x.owner, x.epoch, x.output, x.error
                       FROM {schema}.executions x WHERE x.id = p_id;
    END IF;
END $$;

-- Records one completed step: the fence, the step row, state with its checkpoint and the
-- audit entries, in the caller's transaction (one statement for a plain step).
CREATE FUNCTION {schema}.commit_step(
    p_id text, p_owner text, p_epoch bigint, p_seq integer, p_name text, p_kind text,
    p_output text, p_error jsonb, p_attempts integer,
    p_started_at timestamptz, p_finished_at timestamptz,
    p_state jsonb, p_deleted text[], p_logs jsonb
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {schema}.fence(p_id, p_owner, p_epoch);
    INSERT INTO {schema}.steps
           (execution_id, seq, name, kind, output, error, attempts, started_at, finished_at)
    VALUES (p_id, p_seq, p_name, p_kind, p_output, p_error, p_attempts, p_started_at,
            p_finished_at);
    IF p_state IS NOT NULL OR p_deleted IS NOT NULL THEN
        PERFORM {schema}.write_state(p_id, p_seq + 1, p_state, p_deleted);
    END IF;
    IF p_logs IS NOT NULL THEN
        INSERT INTO {schema}.logs (execution_id, event, actor, seq, details)
        SELECT p_id, entry->>'event', p_owner, p_seq, coalesce(entry->'details', '{{}}'::jsonb)
          FROM jsonb_array_elements(p_logs) entry;
    END IF;
END $$;

-- Finishes an execution (fenced like a step) with its last state changes and audit entry.
CREATE FUNCTION {schema}.finish_execution(
    p_id text, p_owner text, p_epoch bigint, p_status text, p_output text, p_error jsonb,
    p_seq integer, p_state jsonb, p_deleted text[], p_details jsonb
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {schema}.fence(p_id, p_owner, p_epoch, true);
    UPDATE {schema}.executions
       SET status = p_status, output = p_output, error = p_error,
           finished_at = now(), updated_at = now()
     WHERE id = p_id;
    IF p_state IS NOT NULL OR p_deleted IS NOT NULL THEN
        PERFORM {schema}.write_state(p_id, p_seq, p_state, p_deleted);
    END IF;
    INSERT INTO {schema}.logs (execution_id, event, actor, seq, details)
    VALUES (p_id, 'execution_' || lower(p_status), p_owner, p_seq,
            coalesce(p_details, '{{}}'::jsonb));
END $$;
