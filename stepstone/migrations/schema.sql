-- The reference schema: everything the migration chain (0001, 0002, 0003, ...) creates, in its
-- final form, in one file to read. It is not a numbered file, so the migration runner never
-- applies it; a test (tests/migration/test_reference_schema.py) applies it to one database
-- and the chain to another and compares the two from the catalogs. A new migration changes
-- this file in the same commit, so that the test keeps passing. {schema} is replaced by the
-- configured schema, quoted as an identifier.
--
-- The lock order and the naming of functions are explained in 0002_versioned_functions.sql:
-- an execution's advisory lock first, then its row lock; a changed function gets the next
-- _vN name and the old one is kept until a later migration drops it.

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
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    -- An executor is presumed dead when heartbeat_at is older than its own lease.
    lease_seconds double precision NOT NULL DEFAULT 30 CHECK (lease_seconds > 0),
    -- The [name, version] pairs of the workflows it runs.
    workflows     jsonb            NOT NULL DEFAULT '[]',
    -- The key of the session-level advisory lock it holds on its id while it lives (see
    -- 0011_executor_locks.sql): free, the executor is dead.
    lock_key      bigint
);

CREATE TABLE {schema}.executions (
    id               text        PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 255),
    workflow_name    text        NOT NULL,
    workflow_version text        NOT NULL,
    status           text        NOT NULL
        CHECK (status IN ('ENQUEUED', 'RUNNING', 'WAITING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
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
    finished_at      timestamptz,
    -- How often it was interrupted (taken over from an owner that stopped running it, or
    -- handed back): past the runtime's max_recoveries it ends FAILED. An operator's resume
    -- sets it back to 0.
    recoveries       integer     NOT NULL DEFAULT 0,
    -- When a WAITING execution is due, and what it waits for (see 0003_durable_waits.sql).
    wake_at          timestamptz,
    waiting          jsonb,
    -- When it must have ended (with_options(timeout=...)); see 0003_durable_waits.sql.
    deadline_at      timestamptz,
    -- The execution a WAITING execution waits for; see 0004_durable_awaits.sql.
    waits_for        text,
    -- Which run of the execution this is: 1, then one more at each continue-as-new (see
    -- 0007_continue_as_new.sql).
    run              integer     NOT NULL DEFAULT 1 CHECK (run >= 1),
    -- Its queue, and what orders and limits its start (see 0009_queues.sql): priority
    -- (lower first), enqueue order (FIFO within a priority), the dedup and partition keys,
    -- no start before not_before, the deadline's length (set when it starts), and when a
    -- dispatcher first started it (the rate limit counts these).
    queue_name       text,
    priority         integer     NOT NULL DEFAULT 0,
    queue_seq        bigint,
    dedup_key        text,
    partition_key    text,
    not_before       timestamptz,
    timeout_seconds  double precision,
    dispatched_at    timestamptz,
    -- The executors that could not run it and handed it back (see
    -- 0013_refused_executions.sql): their sweeps pass it over.
    refused_by       text[],
    -- The fingerprint of its workflow version's registered code when it was created, or
    -- when it last continued as new (see 0014_execution_fingerprints.sql); NULL: unknown.
    fingerprint      text
);
-- Recovery looks up the running executions of one owner, or of expired owners.
CREATE INDEX executions_running_owner_idx ON {schema}.executions (owner) WHERE status = 'RUNNING';
-- Listing: by creation time overall, per workflow name and per status (also the health
-- counts), by update time, by duration, by user attributes; children of a parent.
-- Purging: by finish time.
CREATE INDEX executions_created_idx ON {schema}.executions (created_at, id);
CREATE INDEX executions_name_created_idx ON {schema}.executions (workflow_name, created_at, id);
CREATE INDEX executions_status_created_idx ON {schema}.executions (status, created_at, id);
CREATE INDEX executions_updated_idx ON {schema}.executions (updated_at, id);
CREATE INDEX executions_duration_idx ON {schema}.executions ((finished_at - created_at), id)
    WHERE finished_at IS NOT NULL;
CREATE INDEX executions_finished_idx ON {schema}.executions (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE INDEX executions_attributes_idx ON {schema}.executions USING gin (attributes jsonb_path_ops);
CREATE INDEX executions_parent_idx ON {schema}.executions (parent_id) WHERE parent_id IS NOT NULL;
-- The sweep's due executions, earliest first; also the next due time.
-- The waits of one workflow version by due time: the sweep looks up, per workflow it
-- runs, the due ones and the next due time, one probe each however many executions wait
-- (of its workflows or of others). Not a plain (wake_at) index: with one, the planner
-- walks it past every wait of other workflows to find the first of its own.
CREATE INDEX executions_waiting_idx ON {schema}.executions
    (workflow_name, workflow_version, wake_at) WHERE status = 'WAITING';
CREATE INDEX executions_deadline_idx ON {schema}.executions (deadline_at)
    WHERE deadline_at IS NOT NULL AND status IN ('ENQUEUED', 'RUNNING', 'WAITING');
CREATE INDEX executions_waits_for_idx ON {schema}.executions (waits_for)
    WHERE status = 'WAITING' AND waits_for IS NOT NULL;
-- Queues: the startable executions of a queue in dispatch order, its earliest delayed
-- start, what runs in it (and per partition), its starts within the rate period, and
-- the dedup keys of its unfinished executions.
CREATE INDEX executions_enqueued_idx ON {schema}.executions (queue_name, priority, queue_seq)
    WHERE status = 'ENQUEUED';
CREATE INDEX executions_delayed_idx ON {schema}.executions (queue_name, not_before)
    WHERE status = 'ENQUEUED' AND not_before IS NOT NULL;
CREATE INDEX executions_queue_running_idx ON {schema}.executions (queue_name, partition_key)
    WHERE status = 'RUNNING' AND queue_name IS NOT NULL;
CREATE INDEX executions_dispatched_idx ON {schema}.executions (queue_name, dispatched_at)
    WHERE dispatched_at IS NOT NULL;
-- An executor's refusals, looked up when it starts.
CREATE INDEX executions_refused_idx ON {schema}.executions (id) WHERE refused_by IS NOT NULL;
CREATE UNIQUE INDEX executions_dedup_idx ON {schema}.executions (queue_name, dedup_key)
    WHERE dedup_key IS NOT NULL AND status IN ('ENQUEUED', 'RUNNING', 'WAITING');
CREATE SEQUENCE {schema}.queue_seq;

-- The tables below are keyed by execution id and have no foreign keys: the fence proves
-- the execution exists before anything is written for it, and the purge deletes children
-- explicitly (a foreign key check would lock the execution row in every step commit).

CREATE TABLE {schema}.steps (
    execution_id text        NOT NULL,
    seq          integer     NOT NULL CHECK (seq >= 0),
    name         text        NOT NULL,
    kind         text        NOT NULL
        CHECK (kind IN ('step', 'transaction', 'workflow', 'sleep', 'recv', 'send',
                        'wait_state')),
    output       text,
    error        jsonb,
    attempts     integer     NOT NULL CHECK (attempts >= 1),
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL,
    PRIMARY KEY (execution_id, seq)
);

CREATE TABLE {schema}.states (
    execution_id text        NOT NULL,
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
    execution_id text        NOT NULL,
    seq          integer     NOT NULL CHECK (seq >= 0),
    state        jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (execution_id, seq)
);

CREATE TABLE {schema}.logs (
    execution_id text        NOT NULL,
    id           bigint      GENERATED ALWAYS AS IDENTITY,
    at           timestamptz NOT NULL DEFAULT now(),
    event        text        NOT NULL,
    actor        text,
    seq          integer,
    details      jsonb       NOT NULL DEFAULT '{{}}',
    PRIMARY KEY (execution_id, id)
);

-- Mailboxes: messages to an execution, by topic, in send order (id). A message is unread
-- until a receive consumes it (received_seq: the position of that receive in the
-- execution); consumed messages stay, so that an idempotency key keeps deduplicating after
-- the message was read, and as an audit trail. Purged with their execution.
CREATE TABLE {schema}.messages (
    execution_id    text        NOT NULL,
    topic           text        NOT NULL,
    id              bigint      GENERATED ALWAYS AS IDENTITY,
    payload         text        NOT NULL,
    idempotency_key text,
    sender          text,
    sent_at         timestamptz NOT NULL DEFAULT now(),
    received_seq    integer,
    -- For a message received by an earlier run of its execution: that run's number (its
    -- received_seq is a position in that run). NULL for the messages of the current run.
    received_run    integer,
    PRIMARY KEY (execution_id, topic, id)
);
CREATE UNIQUE INDEX messages_idempotency_idx ON {schema}.messages (execution_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX messages_unread_idx ON {schema}.messages (execution_id, topic, id)
    WHERE received_seq IS NULL;

-- Queues and their limits (see 0009_queues.sql).
CREATE TABLE {schema}.queues (
    name                  text        PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 255),
    -- At most this many RUNNING executions of the queue, across all processes (NULL: no
    -- limit).
    concurrency           integer     CHECK (concurrency > 0),
    -- At most rate_limit starts per rate_period seconds (NULL: no limit).
    rate_limit            integer     CHECK (rate_limit > 0),
    rate_period           double precision CHECK (rate_period > 0),
    -- At most this many RUNNING executions per partition key (NULL: no limit).
    partition_concurrency integer     CHECK (partition_concurrency > 0),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK ((rate_limit IS NULL) = (rate_period IS NULL))
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
       e.recoveries
  FROM {schema}.executions e
  LEFT JOIN LATERAL (
        SELECT count(*) AS steps, sum(st.attempts - 1) AS retries
          FROM {schema}.steps st WHERE st.execution_id = e.id) s ON true;

-- Functions.

-- The exclusive advisory locks of the executions p_ids, one key at a time in ascending key
-- order, so that two transactions locking overlapping sets cannot deadlock. Waits for the
-- step commits of these executions in flight (they hold the shared side).
CREATE FUNCTION {schema}.lock_executions_v1(p_ids text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_key integer;
BEGIN
    FOR v_key IN SELECT DISTINCT hashtext(x) FROM unnest(p_ids) AS x ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(1937010533, v_key);
    END LOOP;
END $$;

-- The fence, run by every commit of an execution's progress: raises SQLSTATE SS001 unless
-- p_owner still owns the running execution at p_epoch (SS002 if it was cancelled). It
-- raises instead of matching nothing, so that a COMMIT pipelined behind it cannot commit.
-- A step commit (READ COMMITTED) takes the execution's advisory lock shared, whose
-- exclusive side every claim, release, cancel and resume takes first, and then reads the
-- row: a claim waits for step commits in flight, and a later step commit reads the claim's
-- new owner and epoch, with no row lock (a row lock is a heap and WAL write). Above READ
-- COMMITTED the snapshot may predate a claim, so the row is locked instead (a claim
-- committed since fails it with 40001). The completion (p_exclusive) locks only the row it
-- then updates. The row is found by its primary key alone.
CREATE FUNCTION {schema}.fence_v1(
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
    ELSIF current_setting('transaction_isolation') = 'read committed' THEN
        PERFORM pg_advisory_xact_lock_shared(1937010533, hashtext(p_id));
        -- A new statement, so a new snapshot: it sees any claim committed before the lock.
        SELECT owner, epoch, status INTO found_owner, found_epoch, found_status
          FROM {schema}.executions WHERE id = p_id;
    ELSE
        SELECT owner, epoch, status INTO found_owner, found_epoch, found_status
          FROM {schema}.executions WHERE id = p_id FOR SHARE;
    END IF;
    IF found_status = 'CANCELLED' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'SS002',
            MESSAGE = format('execution %s was cancelled', p_id);
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

-- Applies state changes and snapshots the resulting state as the checkpoint at p_seq;
-- executions WAITING for one of the keys written are made due ('due:' || id).
-- executions_waits_for_idx.
CREATE FUNCTION {schema}.write_state_v1(
    p_id text, p_seq integer, p_state jsonb, p_deleted text[]
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_waiter text;
BEGIN
    IF p_deleted IS NOT NULL THEN
        DELETE FROM {schema}.states WHERE execution_id = p_id AND key = ANY (p_deleted);
    END IF;
    IF p_state IS NOT NULL THEN
        INSERT INTO {schema}.states AS s (execution_id, key, value, seq)
        SELECT p_id, kv.key, kv.value, p_seq FROM jsonb_each_text(p_state) kv
            ON CONFLICT (execution_id, key) DO UPDATE
           SET value = EXCLUDED.value, seq = EXCLUDED.seq, updated_at = now();
        FOR v_waiter IN
            UPDATE {schema}.executions e SET wake_at = now(), updated_at = now()
             WHERE e.status = 'WAITING' AND e.waits_for = p_id
               AND e.waiting->>'kind' = 'wait_state' AND p_state ? (e.waiting->>'key')
         RETURNING e.id
        LOOP
            PERFORM pg_notify('stepstone', 'due:' || v_waiter);
        END LOOP;
    END IF;
    INSERT INTO {schema}.checkpoints (execution_id, seq, state)
    SELECT p_id, p_seq, coalesce(jsonb_object_agg(st.key, st.value), '{{}}'::jsonb)
      FROM {schema}.states st WHERE st.execution_id = p_id
        ON CONFLICT (execution_id, seq) DO UPDATE SET state = EXCLUDED.state, created_at = now();
END $$;

-- Starts an execution, or returns the one that already has this id (created = false).
CREATE FUNCTION {schema}.start_execution_v1(
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
CREATE FUNCTION {schema}.commit_step_v1(
    p_id text, p_owner text, p_epoch bigint, p_seq integer, p_name text, p_kind text,
    p_output text, p_error jsonb, p_attempts integer,
    p_started_at timestamptz, p_finished_at timestamptz,
    p_state jsonb, p_deleted text[], p_logs jsonb
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {schema}.fence_v1(p_id, p_owner, p_epoch);
    INSERT INTO {schema}.steps
           (execution_id, seq, name, kind, output, error, attempts, started_at, finished_at)
    VALUES (p_id, p_seq, p_name, p_kind, p_output, p_error, p_attempts, p_started_at,
            p_finished_at);
    IF p_state IS NOT NULL OR p_deleted IS NOT NULL THEN
        PERFORM {schema}.write_state_v1(p_id, p_seq + 1, p_state, p_deleted);
    END IF;
    IF p_logs IS NOT NULL THEN
        INSERT INTO {schema}.logs (execution_id, event, actor, seq, details)
        SELECT p_id, entry->>'event', p_owner, p_seq, coalesce(entry->'details', '{{}}'::jsonb)
          FROM jsonb_array_elements(p_logs) entry;
    END IF;
END $$;

-- Records a transaction step (commit_step_v1) and, in the same statement, resets what the
-- step's SQL may have changed in the pooled connection's session, so that the next user of
-- the connection starts clean: run-time settings (SET, set_config(..., false)) go back to
-- the connection's defaults, session advisory locks are released, LISTENs end. It runs
-- after the fence, inside the step's transaction, just before its COMMIT.
CREATE FUNCTION {schema}.commit_transaction_step_v1(
    p_id text, p_owner text, p_epoch bigint, p_seq integer, p_name text, p_kind text,
    p_output text, p_error jsonb, p_attempts integer,
    p_started_at timestamptz, p_finished_at timestamptz,
    p_state jsonb, p_deleted text[], p_logs jsonb
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {schema}.commit_step_v1(p_id, p_owner, p_epoch, p_seq, p_name, p_kind, p_output,
                                    p_error, p_attempts, p_started_at, p_finished_at,
                                    p_state, p_deleted, p_logs);
    RESET ALL;
    PERFORM pg_advisory_unlock_all();
    UNLISTEN *;
END $$;

-- Finishes an execution (fenced like a step) with its last state changes and audit entry.
-- It locks only its own row (the exclusive fence), never the advisory lock.
CREATE FUNCTION {schema}.finish_execution_v1(
    p_id text, p_owner text, p_epoch bigint, p_status text, p_output text, p_error jsonb,
    p_seq integer, p_state jsonb, p_deleted text[], p_details jsonb
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {schema}.fence_v1(p_id, p_owner, p_epoch, true);
    UPDATE {schema}.executions
       SET status = p_status, output = p_output, error = p_error,
           finished_at = now(), updated_at = now()
     WHERE id = p_id;
    IF p_state IS NOT NULL OR p_deleted IS NOT NULL THEN
        PERFORM {schema}.write_state_v1(p_id, p_seq, p_state, p_deleted);
    END IF;
    INSERT INTO {schema}.logs (execution_id, event, actor, seq, details)
    VALUES (p_id, 'execution_' || lower(p_status), p_owner, p_seq,
            coalesce(p_details, '{{}}'::jsonb));
END $$;

-- Takes over the RUNNING executions among p_ids (only those p_owner already owns if
-- p_only_owned): new owner, next epoch, an audit entry, and everything needed to replay
-- them, trace context included. Locks: the advisory locks of p_ids (exclusive, in key
-- order), then the rows; status and owner are checked under both.
-- The recovery counter counts interruptions only: it goes up when the claim takes over an
-- execution that had an owner and the reason says that owner stopped running it (restart,
-- expired_lease, retry, called_again). An operator's resume or fork, waking a suspended
-- execution, or claiming a released execution (no owner: its hand-back was counted by
-- release_v1) is not a recovery.
-- executions_pkey, steps_pkey, states_pkey.
CREATE FUNCTION {schema}.claim_v1(
    p_owner text, p_ids text[], p_reason text, p_only_owned boolean DEFAULT false
)
RETURNS TABLE (id text, workflow_name text, workflow_version text, inputs text, epoch bigint,
               recoveries integer, steps json, state json, trace_context jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    IF cardinality(p_ids) IS NULL OR cardinality(p_ids) = 0 THEN
        RETURN;
    END IF;
    -- The exclusive side of the fence: wait for step commits of these executions in
    -- flight, and make later ones see the new owner and epoch.
    PERFORM {schema}.lock_executions_v1(p_ids);
    RETURN QUERY
    WITH previous AS (
        -- A new statement, so a new snapshot; the row lock returns the latest version.
        SELECT x.id, x.owner, x.epoch FROM {schema}.executions x
         WHERE x.id = ANY (p_ids) AND x.status = 'RUNNING'
           AND (NOT p_only_owned OR x.owner = p_owner)
         ORDER BY x.id
           FOR NO KEY UPDATE
    ), claimed AS (
        UPDATE {schema}.executions e
           SET owner = p_owner, epoch = e.epoch + 1,
               recoveries = e.recoveries
                   + CASE WHEN p.owner IS NOT NULL
                           AND p_reason IN ('restart', 'expired_lease', 'retry', 'called_again')
                          THEN 1 ELSE 0 END,
               updated_at = now()
          FROM previous p
         WHERE e.id = p.id AND e.status = 'RUNNING'
     RETURNING e.id, e.workflow_name, e.workflow_version, e.inputs, e.epoch, e.recoveries,
               e.trace_context, p.owner AS previous_owner, p.epoch AS previous_epoch
    ), logged AS (
        INSERT INTO {schema}.logs (execution_id, event, actor, details)
        SELECT c.id, 'execution_resumed', p_owner,
               jsonb_build_object(
                   'reason', CASE WHEN c.previous_owner IS NULL THEN 'released' ELSE p_reason END,
                   'epoch', c.epoch, 'previous_owner', c.previous_owner,
                   'previous_epoch', c.previous_epoch)
          FROM claimed c
    )
    SELECT c.id, c.workflow_name, c.workflow_version, c.inputs, c.epoch, c.recoveries,
           (SELECT coalesce(json_agg(json_build_array(s.seq, s.name, s.kind, s.output, s.error)
                                     ORDER BY s.seq), '[]')
              FROM {schema}.steps s WHERE s.execution_id = c.id),
           (SELECT coalesce(json_object_agg(st.key, st.value), '{{}}')
              FROM {schema}.states st WHERE st.execution_id = c.id),
           c.trace_context
      FROM claimed c;
END $$;

-- Hands an interrupted execution back at once, fenced: if p_owner still owns the RUNNING
-- execution at p_epoch, it loses its owner and moves to the next epoch, and true is
-- returned; otherwise nothing changes and false is returned. An execution of a queue is
-- ENQUEUED again (a dispatcher starts it); any other stays RUNNING for any executor that
-- runs its workflow to claim with its next sweep. A hand-back after an interruption
-- (p_interrupted) counts as a recovery here (the claim or dispatch that follows does not),
-- so a hand-back loop ends at max_recoveries; handing back at a graceful shutdown does not
-- count. Locks: the advisory lock (exclusive), then the row. executions_pkey.
CREATE FUNCTION {schema}.release_v1(
    p_id text, p_owner text, p_epoch bigint, p_reason text, p_interrupted boolean
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_epoch bigint;
    v_queue text;
BEGIN
    PERFORM {schema}.lock_executions_v1(ARRAY[p_id]);
    UPDATE {schema}.executions
       SET owner = NULL, epoch = epoch + 1,
           status = CASE WHEN queue_name IS NULL THEN 'RUNNING' ELSE 'ENQUEUED' END,
           recoveries = recoveries + CASE WHEN p_interrupted THEN 1 ELSE 0 END,
           updated_at = now()
     WHERE id = p_id AND status = 'RUNNING' AND owner = p_owner AND epoch = p_epoch
    RETURNING epoch, queue_name INTO v_epoch, v_queue;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO {schema}.logs (execution_id, event, actor, details)
    VALUES (p_id, 'execution_released', p_owner,
            jsonb_build_object('reason', p_reason, 'epoch', v_epoch, 'previous_epoch', p_epoch,
                               'interrupted', p_interrupted)
            || CASE WHEN v_queue IS NULL THEN '{{}}'::jsonb
                    ELSE jsonb_build_object('requeued', v_queue) END);
    IF v_queue IS NOT NULL THEN
        PERFORM pg_notify('stepstone', 'enqueued:' || v_queue);
    END IF;
    RETURN true;
END $$;

-- Releases p_owner's RUNNING executions whose (workflow, version) is not among the pairs it
-- runs (p_names, p_versions), so that an executor that has the definition claims them:
-- no owner, the next epoch, an audit entry each. Not an interruption: no recovery is
-- counted. Locks: the advisory locks of the executions found (exclusive, in key order),
-- then their rows; status and owner are checked under both. executions_running_owner_idx.
CREATE FUNCTION {schema}.release_unregistered_v1(p_owner text, p_names text[], p_versions text[])
RETURNS TABLE (id text, workflow_name text, workflow_version text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_ids text[];
BEGIN
    v_ids := ARRAY(
        SELECT e.id FROM {schema}.executions e
         WHERE e.status = 'RUNNING' AND e.owner = p_owner
           AND (e.workflow_name, e.workflow_version) NOT IN
               (SELECT n, v FROM unnest(p_names, p_versions) AS r (n, v)));
    IF cardinality(v_ids) = 0 THEN
        RETURN;
    END IF;
    PERFORM {schema}.lock_executions_v1(v_ids);
    RETURN QUERY
    WITH released AS (
        UPDATE {schema}.executions e
           SET owner = NULL, epoch = e.epoch + 1, updated_at = now()
         WHERE e.id = ANY (v_ids) AND e.status = 'RUNNING' AND e.owner = p_owner
     RETURNING e.id, e.workflow_name, e.workflow_version, e.epoch
    ), logged AS (
        INSERT INTO {schema}.logs (execution_id, event, actor, details)
        SELECT r.id, 'execution_released', p_owner,
               jsonb_build_object('reason', 'definition not registered by this executor',
                                  'workflow', r.workflow_name, 'version', r.workflow_version,
                                  'epoch', r.epoch)
          FROM released r
    )
    SELECT r.id, r.workflow_name, r.workflow_version FROM released r;
END $$;

-- One sweep, one statement: claim up to p_limit running executions whose owner's lease
-- expired (then, if there is room, ones that have no owner) and whose definition the
-- caller runs and has not refused (see 0013_refused_executions.sql); once out of those,
-- also list (up to 100) expired ones the caller cannot run.
-- The sweep never waits for a lock: per candidate, in a loop that stops at the limit, it
-- tries the advisory lock (a candidate whose lock is taken, by a step commit in flight or
-- a cancel, is left for a later sweep), then locks the row with SKIP LOCKED and checks
-- under both locks that the candidate is still RUNNING with the owner it was found with;
-- concurrent sweepers split the work. Trying the advisory lock only inside the loop keeps
-- the sweep from taking locks on candidates it does not claim. executors_pkey,
-- executions_running_owner_idx.
CREATE FUNCTION {schema}.sweep_v1(p_owner text, p_names text[], p_versions text[], p_limit integer)
RETURNS TABLE (kind text, id text, workflow_name text, workflow_version text, inputs text,
               epoch bigint, recoveries integer, steps json, state json, trace_context jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_expired   text[];
    v_gone      text[];
    v_ids       text[] := '{{}}';
    v_candidate record;
BEGIN
    SELECT coalesce(array_agg(x.id), '{{}}') INTO v_expired
      FROM {schema}.executors x
     WHERE x.id <> p_owner AND x.heartbeat_at < now() - make_interval(secs => x.lease_seconds);
    -- Only executors that own running executions are tested: few, and each test is one
    -- lock attempt.
    SELECT coalesce(array_agg(x.id), '{{}}') INTO v_gone
      FROM {schema}.executors x
     WHERE x.id <> p_owner AND x.id <> ALL (v_expired) AND x.lock_key IS NOT NULL
       AND EXISTS (SELECT 1 FROM {schema}.executions e
                    WHERE e.status = 'RUNNING' AND e.owner = x.id)
       AND pg_try_advisory_xact_lock(x.lock_key);
    v_expired := v_expired || v_gone;
    IF p_limit > 0 THEN
        -- Executions of dead owners first, then released ones (no owner).
        FOR v_candidate IN
            SELECT e.id, e.owner FROM {schema}.executions e
             WHERE e.status = 'RUNNING' AND e.owner = ANY (v_expired)
               AND (e.workflow_name, e.workflow_version) IN
                   (SELECT n, v FROM unnest(p_names, p_versions) AS r (n, v))
               AND (e.refused_by IS NULL OR p_owner <> ALL (e.refused_by))
            UNION ALL
            SELECT e.id, e.owner FROM {schema}.executions e
             WHERE e.status = 'RUNNING' AND e.owner IS NULL
               AND (e.workflow_name, e.workflow_version) IN
                   (SELECT n, v FROM unnest(p_names, p_versions) AS r (n, v))
               AND (e.refused_by IS NULL OR p_owner <> ALL (e.refused_by))
        LOOP
            CONTINUE WHEN NOT pg_try_advisory_xact_lock(1937010533, hashtext(v_candidate.id));
            PERFORM 1 FROM {schema}.executions e
              WHERE e.id = v_candidate.id AND e.status = 'RUNNING'
                AND e.owner IS NOT DISTINCT FROM v_candidate.owner
                FOR NO KEY UPDATE SKIP LOCKED;
            CONTINUE WHEN NOT FOUND;
            v_ids := v_ids || v_candidate.id;
            EXIT WHEN cardinality(v_ids) >= p_limit;
        END LOOP;
        IF cardinality(v_ids) > 0 THEN
            -- claim_v1 takes the same locks again: this transaction holds them already.
            RETURN QUERY SELECT 'claimed'::text, c.*
                           FROM {schema}.claim_v1(p_owner, v_ids, 'expired_lease') c;
        END IF;
    END IF;
    IF cardinality(v_ids) < p_limit OR p_limit = 0 THEN
        RETURN QUERY
        SELECT 'unclaimable'::text, e.id, e.workflow_name, e.workflow_version, NULL::text,
               NULL::bigint, NULL::integer, NULL::json, NULL::json, NULL::jsonb
          FROM {schema}.executions e
         WHERE e.status = 'RUNNING' AND (e.owner = ANY (v_expired) OR e.owner IS NULL)
           AND (e.workflow_name, e.workflow_version) NOT IN
               (SELECT n, v FROM unnest(p_names, p_versions) AS r (n, v))
         LIMIT 100;
    END IF;
END $$;

-- Cancel a RUNNING or ENQUEUED execution and every RUNNING or ENQUEUED descendant (its
-- children, their children, and so on, by parent_id): each ends CANCELLED now, with an
-- audit entry of its own (a descendant's says parent_cancelled and names the ancestor that
-- was cancelled and its own parent), and its executor stops at its next step boundary
-- (that commit fails with SS002). For each one cancelled, a notification on the channel
-- 'stepstone' ('cancelled:' || id, delivered at commit) tells executors at once; it is a
-- hint, the status is the truth. Returns the status the named execution had (NULL: no such
-- execution); if that is not RUNNING or ENQUEUED, nothing changes.
-- Locks: the advisory locks of the execution and its descendants found (exclusive, in key
-- order), then their rows; statuses are checked under both. A child started after the
-- descendants were found is not cancelled here; its parent stops at its next step boundary.
-- executions_pkey, executions_parent_idx.
CREATE FUNCTION {schema}.cancel_execution_v1(p_id text, p_actor text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_ids    text[];
    v_status text;
    v_row    record;
BEGIN
    -- UNION (not UNION ALL) ends the recursion even if parent_id values formed a cycle.
    WITH RECURSIVE tree (id, status) AS (
        SELECT e.id, e.status FROM {schema}.executions e WHERE e.id = p_id
        UNION
        SELECT c.id, c.status FROM {schema}.executions c JOIN tree t ON c.parent_id = t.id
    )
    SELECT array_agg(t.id) INTO v_ids
      FROM tree t WHERE t.id = p_id OR t.status IN ('RUNNING', 'ENQUEUED');
    IF v_ids IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM {schema}.lock_executions_v1(v_ids);
    SELECT status INTO v_status FROM {schema}.executions WHERE id = p_id FOR NO KEY UPDATE;
    IF v_status IS NULL OR v_status NOT IN ('RUNNING', 'ENQUEUED') THEN
        RETURN v_status;
    END IF;
    FOR v_row IN
        SELECT e.id, e.status, e.parent_id FROM {schema}.executions e
         WHERE e.id = ANY (v_ids) AND e.status IN ('RUNNING', 'ENQUEUED')
         ORDER BY e.id
           FOR NO KEY UPDATE
    LOOP
        UPDATE {schema}.executions
           SET status = 'CANCELLED', finished_at = now(), updated_at = now()
         WHERE id = v_row.id;
        INSERT INTO {schema}.logs (execution_id, event, actor, details)
        VALUES (v_row.id, 'execution_cancelled', p_actor,
                CASE WHEN v_row.id = p_id
                     THEN jsonb_build_object('previous_status', v_row.status)
                     ELSE jsonb_build_object('previous_status', v_row.status,
                                             'reason', 'parent_cancelled',
                                             'ancestor', p_id, 'parent', v_row.parent_id)
                END);
        PERFORM pg_notify('stepstone', 'cancelled:' || v_row.id);
    END LOOP;
    RETURN v_status;
END $$;

-- Resume a FAILED or CANCELLED execution: the step records at its end that hold an error
-- are removed (those steps run again), and it is RUNNING again with a new epoch, owned by
-- p_owner (NULL: the next sweep of an executor that runs its workflow claims it), with a
-- fresh recovery budget (recoveries = 0: an operator resume is not a crash loop). Returns
-- the status found (NULL: no such execution); anything but FAILED or CANCELLED is left
-- alone. Locks: the advisory lock (exclusive), then the row.
CREATE FUNCTION {schema}.resume_execution_v1(p_id text, p_actor text, p_owner text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_status  text;
    v_removed integer := 0;
    v_last    integer;
BEGIN
    PERFORM {schema}.lock_executions_v1(ARRAY[p_id]);
    SELECT status INTO v_status FROM {schema}.executions WHERE id = p_id FOR NO KEY UPDATE;
    IF v_status IS NULL OR v_status NOT IN ('FAILED', 'CANCELLED') THEN
        RETURN v_status;
    END IF;
    LOOP
        SELECT seq INTO v_last FROM {schema}.steps
         WHERE execution_id = p_id ORDER BY seq DESC LIMIT 1;
        EXIT WHEN v_last IS NULL OR NOT EXISTS (
            SELECT 1 FROM {schema}.steps
             WHERE execution_id = p_id AND seq = v_last AND error IS NOT NULL);
        DELETE FROM {schema}.steps WHERE execution_id = p_id AND seq = v_last;
        v_removed := v_removed + 1;
    END LOOP;
    UPDATE {schema}.executions
       SET status = 'RUNNING', owner = p_owner, epoch = epoch + 1, output = NULL, error = NULL,
           finished_at = NULL, recoveries = 0, updated_at = now()
     WHERE id = p_id;
    INSERT INTO {schema}.logs (execution_id, event, actor, details)
    VALUES (p_id, 'execution_resumed', p_actor,
            jsonb_build_object('reason', 'operator', 'previous_status', v_status,
                               'failed_steps_removed', v_removed));
    RETURN v_status;
END $$;

-- Fork: a new RUNNING execution of the same workflow and inputs that keeps the source's
-- step records before position p_step and the state of its latest checkpoint at or before
-- p_step, then runs from p_step. The caller checks that the source exists and that p_step
-- is within its recorded steps. It locks nothing of the source.
CREATE FUNCTION {schema}.fork_execution_v1(
    p_id text, p_step integer, p_new_id text, p_actor text, p_owner text
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_state jsonb;
    v_seq   integer;
BEGIN
    INSERT INTO {schema}.executions
           (id, workflow_name, workflow_version, status, inputs, owner, epoch, attributes,
            started_at)
    SELECT p_new_id, e.workflow_name, e.workflow_version, 'RUNNING', e.inputs, p_owner, 1,
           e.attributes || jsonb_build_object('stepstone.forked_from', p_id,
                                              'stepstone.fork_step', p_step),
           now()
      FROM {schema}.executions e WHERE e.id = p_id;
    INSERT INTO {schema}.steps
           (execution_id, seq, name, kind, output, error, attempts, started_at, finished_at)
    SELECT p_new_id, s.seq, s.name, s.kind, s.output, s.error, s.attempts, s.started_at,
           s.finished_at
      FROM {schema}.steps s WHERE s.execution_id = p_id AND s.seq < p_step;
    SELECT c.seq, c.state INTO v_seq, v_state FROM {schema}.checkpoints c
     WHERE c.execution_id = p_id AND c.seq <= p_step ORDER BY c.seq DESC LIMIT 1;
    IF v_state IS NOT NULL THEN
        INSERT INTO {schema}.states (execution_id, key, value, seq)
        SELECT p_new_id, kv.key, kv.value, v_seq FROM jsonb_each_text(v_state) kv;
        INSERT INTO {schema}.checkpoints (execution_id, seq, state) VALUES (p_new_id, v_seq, v_state);
    END IF;
    INSERT INTO {schema}.logs (execution_id, event, actor, details)
    VALUES (p_new_id, 'execution_forked', p_actor,
            jsonb_build_object('from', p_id, 'step', p_step)),
           (p_id, 'execution_forked_to', p_actor,
            jsonb_build_object('to', p_new_id, 'step', p_step));
END $$;

-- Purge one batch: delete up to p_batch executions that ended before p_cutoff, with their
-- steps, state, checkpoints and log. Returns how many executions were deleted. It takes
-- only row locks of ended executions, with SKIP LOCKED: it never waits.
-- executions_finished_idx. (The purge itself is logged under the execution id '', which no
-- execution can have.)
CREATE FUNCTION {schema}.purge_executions_v1(p_cutoff timestamptz, p_batch integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_ids text[];
BEGIN
    v_ids := ARRAY(
        SELECT id FROM {schema}.executions
         WHERE finished_at < p_cutoff AND status IN ('SUCCEEDED', 'FAILED', 'CANCELLED')
         ORDER BY finished_at
         LIMIT p_batch
           FOR UPDATE SKIP LOCKED);
    IF cardinality(v_ids) = 0 THEN
        RETURN 0;
    END IF;
    DELETE FROM {schema}.steps WHERE execution_id = ANY (v_ids);
    DELETE FROM {schema}.states WHERE execution_id = ANY (v_ids);
    DELETE FROM {schema}.checkpoints WHERE execution_id = ANY (v_ids);
    DELETE FROM {schema}.logs WHERE execution_id = ANY (v_ids);
    DELETE FROM {schema}.executions WHERE id = ANY (v_ids);
    RETURN cardinality(v_ids);
END $$;

-- The outcome of a pending wait of execution p_id, if it has one now: a wait for another
-- execution's state key as resolve_state_wait_v1 says; a wait for another execution is
-- over once that one has ended; a sleep once its time has come; a receive
-- takes the first unread message of its topic (marking it received by the receive at
-- p_waiting->>'seq', in the caller's transaction), or, past its timeout, ends with a
-- RecvTimeout error record. Not resolved: (false, NULL, NULL).
-- The caller holds the execution's locks. messages_unread_idx.
CREATE FUNCTION {schema}.resolve_wait_v1(p_id text, p_waiting jsonb, p_timer timestamptz)
RETURNS TABLE (resolved boolean, output text, error jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_message record;
    v_timeout timestamptz := (p_waiting->>'timeout_at')::timestamptz;
BEGIN
    IF p_waiting->>'kind' = 'wait_state' THEN
        RETURN QUERY SELECT * FROM {schema}.resolve_state_wait_v1(p_waiting);
        RETURN;
    END IF;
    IF p_waiting->>'kind' = 'execution' THEN
        -- Done once the target has ended; the replay reads its outcome (no step row here).
        RETURN QUERY SELECT coalesce(
            (SELECT x.status IN ('SUCCEEDED', 'FAILED', 'CANCELLED')
               FROM {schema}.executions x WHERE x.id = p_waiting->>'target'), true),
            NULL::text, NULL::jsonb;
        RETURN;
    END IF;
    IF p_waiting->>'kind' = 'sleep' THEN
        IF p_timer <= now() THEN
            RETURN QUERY SELECT true, 'null'::text, NULL::jsonb;
        ELSE
            RETURN QUERY SELECT false, NULL::text, NULL::jsonb;
        END IF;
        RETURN;
    END IF;
    SELECT m.id, m.payload INTO v_message FROM {schema}.messages m
     WHERE m.execution_id = p_id AND m.topic = p_waiting->>'topic' AND m.received_seq IS NULL
     ORDER BY m.id
     LIMIT 1
       FOR UPDATE;
    IF FOUND THEN
        UPDATE {schema}.messages SET received_seq = (p_waiting->>'seq')::integer
         WHERE execution_id = p_id AND topic = p_waiting->>'topic' AND id = v_message.id;
        RETURN QUERY SELECT true, v_message.payload, NULL::jsonb;
    ELSIF v_timeout IS NOT NULL AND v_timeout <= now() THEN
        RETURN QUERY SELECT true, NULL::text,
            jsonb_build_object(
                'type', 'stepstone.errors:RecvTimeout',
                'message', format('no message on topic %s arrived within %s s',
                                  to_json(p_waiting->>'topic'), p_waiting->>'timeout'),
                'args', NULL, 'attrs', NULL, 'traceback', '');
    ELSE
        RETURN QUERY SELECT false, NULL::text, NULL::jsonb;
    END IF;
END $$;

-- A wait reached by execution p_id (owned by p_owner at p_epoch) at position p_seq: a
-- sleep of p_seconds (or until p_until), or a receive on p_waiting->>'topic' (timing out
-- after p_seconds; NULL: never). One statement, fenced: if the wait is satisfied now, its
-- step row is written with the outcome (and the state changes p_state/p_deleted with their
-- checkpoint), and (true, output, error, NULL) is returned: the workflow goes on. Otherwise
-- the execution becomes WAITING: no owner, the next epoch (the old run is fenced out), due
-- at the timer or timeout, with the same state changes, an audit entry, and
-- (false, NULL, NULL, wake_at, seconds until then by the database's clock) is returned:
-- the workflow unwinds.
-- Locks: the advisory lock (exclusive), then the row (the exclusive fence).
CREATE FUNCTION {schema}.wait_v1(
    p_id text, p_owner text, p_epoch bigint, p_seq integer, p_name text, p_kind text,
    p_waiting jsonb, p_seconds double precision, p_until timestamptz,
    p_started_at timestamptz, p_state jsonb, p_deleted text[]
) RETURNS TABLE (resolved boolean, output text, error jsonb, wake_at timestamptz,
                 wake_in double precision)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_timer   timestamptz;
    v_waiting jsonb;
    v_outcome record;
BEGIN
    PERFORM {schema}.lock_executions_v1(ARRAY[p_id]);
    PERFORM {schema}.fence_v1(p_id, p_owner, p_epoch, true);
    v_timer := coalesce(p_until, now() + make_interval(secs => p_seconds));
    v_waiting := p_waiting || jsonb_build_object(
        'kind', p_kind, 'seq', p_seq, 'name', p_name, 'started_at', p_started_at,
        'timeout', p_seconds,
        'timeout_at', CASE WHEN p_kind = 'recv' THEN v_timer END);
    SELECT * INTO v_outcome FROM {schema}.resolve_wait_v1(p_id, v_waiting, v_timer);
    IF p_state IS NOT NULL OR p_deleted IS NOT NULL THEN
        -- The checkpoint is taken at the wait's position: after it if it is done now.
        PERFORM {schema}.write_state_v1(
            p_id, p_seq + CASE WHEN v_outcome.resolved THEN 1 ELSE 0 END, p_state, p_deleted);
    END IF;
    IF v_outcome.resolved THEN
        INSERT INTO {schema}.steps
               (execution_id, seq, name, kind, output, error, attempts, started_at, finished_at)
        VALUES (p_id, p_seq, p_name, p_kind, v_outcome.output, v_outcome.error, 1,
                p_started_at, now());
        RETURN QUERY SELECT true, v_outcome.output, v_outcome.error, NULL::timestamptz,
                            NULL::double precision;
        RETURN;
    END IF;
    UPDATE {schema}.executions e
       SET status = 'WAITING', owner = NULL, epoch = e.epoch + 1, wake_at = v_timer,
           waiting = v_waiting, updated_at = now()
     WHERE e.id = p_id;
    INSERT INTO {schema}.logs (execution_id, event, actor, seq, details)
    VALUES (p_id, 'execution_waiting', p_owner, p_seq,
            jsonb_build_object('kind', p_kind, 'topic', p_waiting->>'topic',
                               'wake_at', v_timer, 'epoch', p_epoch + 1));
    RETURN QUERY SELECT false, NULL::text, NULL::jsonb, v_timer,
                        extract(epoch FROM v_timer - now())::double precision;
END $$;

-- Puts message p_payload (serialized) into the mailbox (p_id, p_topic). Returns the status
-- of the execution (NULL: none has that id) and whether a message was stored: nothing is
-- stored for an ended execution, nor a second time for the same p_key. A WAITING execution
-- that receives on this topic is made due, and executors are told ('due:' || id).
-- Locks: the advisory lock (exclusive), then the row, as a suspend takes them.
-- executions_pkey, messages_idempotency_idx.
CREATE FUNCTION {schema}.send_v1(
    p_id text, p_topic text, p_payload text, p_key text, p_sender text
) RETURNS TABLE (status text, stored boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_status  text;
    v_waiting jsonb;
    v_stored  boolean := false;
BEGIN
    PERFORM {schema}.lock_executions_v1(ARRAY[p_id]);
    SELECT e.status, e.waiting INTO v_status, v_waiting
      FROM {schema}.executions e WHERE e.id = p_id FOR NO KEY UPDATE;
    IF v_status IS NULL OR v_status IN ('SUCCEEDED', 'FAILED', 'CANCELLED') THEN
        RETURN QUERY SELECT v_status, false;
        RETURN;
    END IF;
    INSERT INTO {schema}.messages (execution_id, topic, payload, idempotency_key, sender)
    VALUES (p_id, p_topic, p_payload, p_key, p_sender)
        ON CONFLICT (execution_id, idempotency_key) WHERE idempotency_key IS NOT NULL
        DO NOTHING;
    v_stored := FOUND;
    IF v_stored AND v_status = 'WAITING' AND v_waiting->>'kind' = 'recv'
       AND v_waiting->>'topic' = p_topic THEN
        UPDATE {schema}.executions SET wake_at = now(), updated_at = now() WHERE id = p_id;
        PERFORM pg_notify('stepstone', 'due:' || p_id);
    END IF;
    RETURN QUERY SELECT v_status, v_stored;
END $$;

-- Wakes the due executions p_ids, which the caller has locked (advisory, then row): each
-- wait is resolved (a sleep's or a receive's step row written with the outcome: a receive
-- consumes its message here; a wait for another execution writes nothing, its replay reads
-- the outcome), and the execution is RUNNING again, owned by p_owner at the next epoch, with
-- everything needed to replay it. A wait that cannot be resolved after all (its message
-- went to another receive) goes back to waiting for its timeout. Not a recovery. A queued
-- execution goes back to ENQUEUED instead, with no owner, and is not returned: a
-- dispatcher starts it again within its queue's limits.
CREATE FUNCTION {schema}.wake_v1(p_owner text, p_ids text[])
RETURNS TABLE (id text, workflow_name text, workflow_version text, inputs text, epoch bigint,
               recoveries integer, steps json, state json, trace_context jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_row     record;
    v_outcome record;
    v_woken   text[] := '{{}}';
BEGIN
    FOR v_row IN
        SELECT e.id, e.epoch, e.wake_at, e.waiting, e.queue_name FROM {schema}.executions e
         WHERE e.id = ANY (p_ids) AND e.status = 'WAITING' AND e.wake_at <= now()
         ORDER BY e.id
    LOOP
        SELECT * INTO v_outcome FROM {schema}.resolve_wait_v1(v_row.id, v_row.waiting, v_row.wake_at);
        IF NOT v_outcome.resolved THEN
            UPDATE {schema}.executions
               SET wake_at = (v_row.waiting->>'timeout_at')::timestamptz
             WHERE id = v_row.id;
            CONTINUE;
        END IF;
        IF v_row.waiting->>'kind' <> 'execution' THEN
            INSERT INTO {schema}.steps
                   (execution_id, seq, name, kind, output, error, attempts, started_at,
                    finished_at)
            VALUES (v_row.id, (v_row.waiting->>'seq')::integer, v_row.waiting->>'name',
                    v_row.waiting->>'kind', v_outcome.output, v_outcome.error, 1,
                    coalesce((v_row.waiting->>'started_at')::timestamptz, now()), now());
        END IF;
        -- A queued execution goes back to its queue to take a slot (it held none while it
        -- waited); any other runs at once, here.
        UPDATE {schema}.executions
           SET status = CASE WHEN v_row.queue_name IS NULL THEN 'RUNNING' ELSE 'ENQUEUED' END,
               owner = CASE WHEN v_row.queue_name IS NULL THEN p_owner END,
               epoch = v_row.epoch + 1, wake_at = NULL, waiting = NULL, waits_for = NULL,
               updated_at = now()
         WHERE id = v_row.id;
        INSERT INTO {schema}.logs (execution_id, event, actor, seq, details)
        VALUES (v_row.id, 'execution_woken', p_owner, (v_row.waiting->>'seq')::integer,
                jsonb_build_object('kind', v_row.waiting->>'kind', 'epoch', v_row.epoch + 1,
                                   'due_at', v_row.wake_at,
                                   'timed_out', v_outcome.error IS NOT NULL)
                || CASE WHEN v_row.queue_name IS NULL THEN '{{}}'::jsonb
                        ELSE jsonb_build_object('requeued', v_row.queue_name) END);
        IF v_row.queue_name IS NULL THEN
            v_woken := v_woken || v_row.id;
        ELSE
            PERFORM pg_notify('stepstone', 'enqueued:' || v_row.queue_name);
        END IF;
    END LOOP;
    RETURN QUERY
    SELECT e.id, e.workflow_name, e.workflow_version, e.inputs, e.epoch, e.recoveries,
           (SELECT coalesce(json_agg(json_build_array(s.seq, s.name, s.kind, s.output, s.error)
                                     ORDER BY s.seq), '[]')
              FROM {schema}.steps s WHERE s.execution_id = e.id),
           (SELECT coalesce(json_object_agg(st.key, st.value), '{{}}')
              FROM {schema}.states st WHERE st.execution_id = e.id),
           e.trace_context
      FROM {schema}.executions e WHERE e.id = ANY (v_woken);
END $$;

-- One sweep, one statement: ends executions past their deadline (expire_deadlines_v1, up
-- to 100), wakes up to p_limit due WAITING executions whose definition the caller runs
-- (kind 'woken'), then claims running executions whose owner's lease expired
-- or that have no owner, as sweep_v1 (kind 'claimed'), lists expired ones the caller
-- cannot run (kind 'unclaimable'), and ends with one row of kind 'next' whose next_wake_in
-- is the number of seconds (by the database's clock) until the earliest WAITING execution
-- the caller runs is due or the earliest deadline passes (NULL: none), so that the caller
-- sleeps until then. Never waits for a lock: pg_try_advisory_xact_lock, then the
-- row with SKIP LOCKED. executions_waiting_idx (due waits and the next due time, one
-- probe per workflow version), executions_deadline_idx, executors_pkey,
-- executions_running_owner_idx.
CREATE FUNCTION {schema}.sweep_v2(p_owner text, p_names text[], p_versions text[], p_limit integer)
RETURNS TABLE (kind text, id text, workflow_name text, workflow_version text, inputs text,
               epoch bigint, recoveries integer, steps json, state json, trace_context jsonb,
               next_wake_in double precision)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_due       text[] := '{{}}';
    v_candidate record;
    v_left      integer := p_limit;
BEGIN
    PERFORM {schema}.expire_deadlines_v1(p_owner, 100);
    IF p_limit > 0 THEN
        FOR v_candidate IN
            SELECT due.id
              FROM unnest(p_names, p_versions) AS r (n, v),
                   LATERAL (SELECT e.id, e.wake_at FROM {schema}.executions e
                             WHERE e.status = 'WAITING' AND e.workflow_name = r.n
                               AND e.workflow_version = r.v AND e.wake_at <= now()
                             ORDER BY e.wake_at
                             LIMIT p_limit) due
             ORDER BY due.wake_at
        LOOP
            CONTINUE WHEN NOT pg_try_advisory_xact_lock(1937010533, hashtext(v_candidate.id));
            PERFORM 1 FROM {schema}.executions e
              WHERE e.id = v_candidate.id AND e.status = 'WAITING' AND e.wake_at <= now()
                FOR NO KEY UPDATE SKIP LOCKED;
            CONTINUE WHEN NOT FOUND;
            v_due := v_due || v_candidate.id;
            EXIT WHEN cardinality(v_due) >= p_limit;
        END LOOP;
        IF cardinality(v_due) > 0 THEN
            RETURN QUERY SELECT 'woken'::text, w.*, NULL::double precision
                           FROM {schema}.wake_v1(p_owner, v_due) w;
            v_left := p_limit - cardinality(v_due);
        END IF;
    END IF;
    RETURN QUERY SELECT s.*, NULL::double precision
                   FROM {schema}.sweep_v1(p_owner, p_names, p_versions, v_left) s;
    RETURN QUERY
    SELECT 'next'::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::bigint,
           NULL::integer, NULL::json, NULL::json, NULL::jsonb,
           extract(epoch FROM least(
               (SELECT min(first.wake_at)
                  FROM unnest(p_names, p_versions) AS r (n, v),
                       LATERAL (SELECT e.wake_at FROM {schema}.executions e
                                 WHERE e.status = 'WAITING' AND e.workflow_name = r.n
                                   AND e.workflow_version = r.v AND e.wake_at IS NOT NULL
                                 ORDER BY e.wake_at
                                 LIMIT 1) first),
               (SELECT min(e.deadline_at) FROM {schema}.executions e
                 WHERE e.deadline_at IS NOT NULL
                   AND e.status IN ('ENQUEUED', 'RUNNING', 'WAITING'))) - now())::double precision;
END $$;

-- sweep_v2, with how overdue each woken execution was and what it waited for.
-- executions_waiting_idx, executions_deadline_idx, executors_pkey,
-- executions_running_owner_idx (as sweep_v2).
CREATE FUNCTION {schema}.sweep_v3(p_owner text, p_names text[], p_versions text[], p_limit integer)
RETURNS TABLE (kind text, id text, workflow_name text, workflow_version text, inputs text,
               epoch bigint, recoveries integer, steps json, state json, trace_context jsonb,
               next_wake_in double precision, overdue double precision, waited jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_due       text[] := '{{}}';
    v_overdue   double precision[] := '{{}}';
    v_waited    jsonb[] := '{{}}';
    v_candidate record;
    v_locked    record;
    v_left      integer := p_limit;
BEGIN
    PERFORM {schema}.expire_deadlines_v1(p_owner, 100);
    IF p_limit > 0 THEN
        FOR v_candidate IN
            SELECT due.id
              FROM unnest(p_names, p_versions) AS r (n, v),
                   LATERAL (SELECT e.id, e.wake_at FROM {schema}.executions e
                             WHERE e.status = 'WAITING' AND e.workflow_name = r.n
                               AND e.workflow_version = r.v AND e.wake_at <= now()
                             ORDER BY e.wake_at
                             LIMIT p_limit) due
             ORDER BY due.wake_at
        LOOP
            CONTINUE WHEN NOT pg_try_advisory_xact_lock(1937010533, hashtext(v_candidate.id));
            SELECT e.wake_at, e.waiting INTO v_locked FROM {schema}.executions e
             WHERE e.id = v_candidate.id AND e.status = 'WAITING' AND e.wake_at <= now()
               FOR NO KEY UPDATE SKIP LOCKED;
            CONTINUE WHEN NOT FOUND;
            v_due := v_due || v_candidate.id;
            v_overdue := v_overdue || extract(epoch FROM now() - v_locked.wake_at)::double precision;
            v_waited := v_waited || v_locked.waiting;
            EXIT WHEN cardinality(v_due) >= p_limit;
        END LOOP;
        IF cardinality(v_due) > 0 THEN
            RETURN QUERY SELECT 'woken'::text, w.*, NULL::double precision, d.late, d.what
                           FROM {schema}.wake_v1(p_owner, v_due) w
                           JOIN unnest(v_due, v_overdue, v_waited) AS d (due_id, late, what)
                             ON d.due_id = w.id;
            v_left := p_limit - cardinality(v_due);
        END IF;
    END IF;
    RETURN QUERY SELECT s.*, NULL::double precision, NULL::double precision, NULL::jsonb
                   FROM {schema}.sweep_v1(p_owner, p_names, p_versions, v_left) s;
    RETURN QUERY
    SELECT 'next'::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::bigint,
           NULL::integer, NULL::json, NULL::json, NULL::jsonb,
           extract(epoch FROM least(
               (SELECT min(first.wake_at)
                  FROM unnest(p_names, p_versions) AS r (n, v),
                       LATERAL (SELECT e.wake_at FROM {schema}.executions e
                                 WHERE e.status = 'WAITING' AND e.workflow_name = r.n
                                   AND e.workflow_version = r.v AND e.wake_at IS NOT NULL
                                 ORDER BY e.wake_at
                                 LIMIT 1) first),
               (SELECT min(e.deadline_at) FROM {schema}.executions e
                 WHERE e.deadline_at IS NOT NULL
                   AND e.status IN ('ENQUEUED', 'RUNNING', 'WAITING'))) - now())::double precision,
           NULL::double precision, NULL::jsonb;
END $$;

-- purge_executions_v1, and the messages of the purged executions go with them.
CREATE FUNCTION {schema}.purge_executions_v2(p_cutoff timestamptz, p_batch integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_ids text[];
BEGIN
    v_ids := ARRAY(
        SELECT id FROM {schema}.executions
         WHERE finished_at < p_cutoff AND status IN ('SUCCEEDED', 'FAILED', 'CANCELLED')
         ORDER BY finished_at
         LIMIT p_batch
           FOR UPDATE SKIP LOCKED);
    IF cardinality(v_ids) = 0 THEN
        RETURN 0;
    END IF;
    DELETE FROM {schema}.steps WHERE execution_id = ANY (v_ids);
    DELETE FROM {schema}.states WHERE execution_id = ANY (v_ids);
    DELETE FROM {schema}.checkpoints WHERE execution_id = ANY (v_ids);
    DELETE FROM {schema}.logs WHERE execution_id = ANY (v_ids);
    DELETE FROM {schema}.messages WHERE execution_id = ANY (v_ids);
    DELETE FROM {schema}.executions WHERE id = ANY (v_ids);
    RETURN cardinality(v_ids);
END $$;

-- start_execution_v1, with a deadline: p_timeout seconds from now (NULL: none), by the
-- database's clock.
CREATE FUNCTION {schema}.start_execution_v2(
    p_id text, p_name text, p_version text, p_inputs text, p_owner text,
    p_parent text, p_trace jsonb, p_attributes jsonb, p_timeout double precision
) RETURNS TABLE (created boolean, workflow_name text, status text, owner text, epoch bigint,
                 output text, error jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO {schema}.executions AS e
           (id, workflow_name, workflow_version, status, inputs, owner, epoch, parent_id,
            trace_context, attributes, started_at, deadline_at)
    VALUES (p_id, p_name, p_version, 'RUNNING', p_inputs, p_owner, 1, p_parent,
            p_trace, coalesce(p_attributes, '{{}}'::jsonb), now(),
            now() + make_interval(secs => p_timeout))
        ON CONFLICT (id) DO NOTHING;
    IF FOUND THEN
        INSERT INTO {schema}.logs (execution_id, event, actor, details)
        VALUES (p_id, 'execution_started', p_owner,
                CASE WHEN p_timeout IS NULL THEN jsonb_build_object('epoch', 1)
                     ELSE jsonb_build_object('epoch', 1, 'timeout', p_timeout) END);
        RETURN QUERY SELECT true, p_name, 'RUNNING'::text, p_owner, 1::bigint, NULL::text, NULL::jsonb;
    ELSE
        RETURN QUERY SELECT false, x.workflow_name, x.status, x.owner, x.epoch, x.output, x.error
                       FROM {schema}.executions x WHERE x.id = p_id;
    END IF;
END $$;

-- Cancels execution p_id, if it is RUNNING, ENQUEUED or WAITING, and every unfinished
-- descendant (by parent_id): each ends CANCELLED now, with an audit entry (a descendant's
-- says parent_cancelled and names the ancestor and its parent), and executors are told
-- ('cancelled:' || id, a hint delivered at commit; an executor running one stops before
-- its next step body, and its next commit fails with SS002); executions waiting for one
-- of them are made due. p_error, if given, is stored as the named execution's error
-- record (why it was cancelled: a timeout), and p_reason goes into its audit entry.
-- Returns the status the named execution had (NULL: none); anything but RUNNING, ENQUEUED
-- or WAITING is left as it was.
-- Locks: the advisory locks of the execution and of its descendants found (exclusive, in
-- key order), then their rows. executions_pkey, executions_parent_idx.
CREATE FUNCTION {schema}.cancel_tree_v1(p_id text, p_actor text, p_reason text, p_error jsonb)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_ids    text[];
    v_status text;
    v_row    record;
BEGIN
    -- UNION (not UNION ALL) ends the recursion even if parent_id values formed a cycle.
    WITH RECURSIVE tree (id, status) AS (
        SELECT e.id, e.status FROM {schema}.executions e WHERE e.id = p_id
        UNION
        SELECT c.id, c.status FROM {schema}.executions c JOIN tree t ON c.parent_id = t.id
    )
    SELECT array_agg(t.id) INTO v_ids
      FROM tree t WHERE t.id = p_id OR t.status IN ('RUNNING', 'ENQUEUED', 'WAITING');
    IF v_ids IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM {schema}.lock_executions_v1(v_ids);
    SELECT status INTO v_status FROM {schema}.executions WHERE id = p_id FOR NO KEY UPDATE;
    IF v_status IS NULL OR v_status NOT IN ('RUNNING', 'ENQUEUED', 'WAITING') THEN
        RETURN v_status;
    END IF;
    FOR v_row IN
        SELECT e.id, e.status, e.parent_id FROM {schema}.executions e
         WHERE e.id = ANY (v_ids) AND e.status IN ('RUNNING', 'ENQUEUED', 'WAITING')
         ORDER BY e.id
           FOR NO KEY UPDATE
    LOOP
        UPDATE {schema}.executions
           SET status = 'CANCELLED', finished_at = now(), updated_at = now(), wake_at = NULL,
               waiting = NULL, waits_for = NULL,
               error = CASE WHEN id = p_id THEN p_error ELSE error END
         WHERE id = v_row.id;
        PERFORM {schema}.wake_waiters_v1(v_row.id);
        INSERT INTO {schema}.logs (execution_id, event, actor, details)
        VALUES (v_row.id, 'execution_cancelled', p_actor,
                CASE WHEN v_row.id = p_id
                     THEN jsonb_strip_nulls(jsonb_build_object(
                              'previous_status', v_row.status, 'reason', p_reason))
                     ELSE jsonb_build_object('previous_status', v_row.status,
                                             'reason', 'parent_cancelled',
                                             'ancestor', p_id, 'parent', v_row.parent_id)
                END);
        PERFORM pg_notify('stepstone', 'cancelled:' || v_row.id);
    END LOOP;
    RETURN v_status;
END $$;

-- An operator's cancel: cancel_tree_v1 with no reason and no error record.
CREATE FUNCTION {schema}.cancel_execution_v2(p_id text, p_actor text) RETURNS text
LANGUAGE sql AS $$
    SELECT {schema}.cancel_tree_v1(p_id, p_actor, NULL, NULL);
$$;

-- Ends up to p_limit executions whose deadline passed: each is cancelled with its
-- descendants (cancel_tree_v1), with reason 'timeout' and a WorkflowTimedOut error record,
-- by p_actor. Returns their ids. executions_deadline_idx.
CREATE FUNCTION {schema}.expire_deadlines_v1(p_actor text, p_limit integer)
RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    v_row record;
BEGIN
    FOR v_row IN
        SELECT e.id, e.deadline_at, e.started_at FROM {schema}.executions e
         WHERE e.deadline_at <= now() AND e.status IN ('ENQUEUED', 'RUNNING', 'WAITING')
         ORDER BY e.deadline_at
         LIMIT p_limit
    LOOP
        IF {schema}.cancel_tree_v1(
               v_row.id, p_actor, 'timeout',
               jsonb_build_object(
                   'type', 'stepstone.errors:WorkflowTimedOut',
                   'message', format('workflow %s passed its deadline (%s)',
                                     to_json(v_row.id), v_row.deadline_at),
                   'args', NULL, 'attrs', NULL, 'traceback', ''))
           IN ('ENQUEUED', 'RUNNING', 'WAITING') THEN
            RETURN NEXT v_row.id;
        END IF;
    END LOOP;
END $$;

-- Execution p_id (owned by p_owner at p_epoch), at position p_seq, waits for execution
-- p_target to end (a child's result, a handle's result). One statement, fenced: if the
-- target has ended (or does not exist), nothing is written and its outcome is returned
-- (ended = true) for the workflow to go on. Otherwise p_id becomes WAITING on it (no owner,
-- the next epoch, waits_for), with the state changes p_state/p_deleted, and ended = false:
-- the workflow unwinds; the target's end makes it due (wake_waiters_v1).
-- Locks: the advisory locks of both (exclusive, in key order), then the target's row
-- (FOR SHARE: a completion of the target, which locks its row, waits for this to commit,
-- and then finds the waiter WAITING), then p_id's own row (the exclusive fence).
CREATE FUNCTION {schema}.await_v1(
    p_id text, p_owner text, p_epoch bigint, p_seq integer, p_target text,
    p_state jsonb, p_deleted text[]
) RETURNS TABLE (ended boolean, status text, output text, error jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_target record;
BEGIN
    PERFORM {schema}.lock_executions_v1(ARRAY[p_id, p_target]);
    SELECT x.status, x.output, x.error INTO v_target
      FROM {schema}.executions x WHERE x.id = p_target FOR SHARE;
    PERFORM {schema}.fence_v1(p_id, p_owner, p_epoch, true);
    IF v_target.status IS NULL OR v_target.status IN ('SUCCEEDED', 'FAILED', 'CANCELLED') THEN
        RETURN QUERY SELECT true, v_target.status, v_target.output, v_target.error;
        RETURN;
    END IF;
    IF p_state IS NOT NULL OR p_deleted IS NOT NULL THEN
        PERFORM {schema}.write_state_v1(p_id, p_seq, p_state, p_deleted);
    END IF;
    UPDATE {schema}.executions e
       SET status = 'WAITING', owner = NULL, epoch = e.epoch + 1, wake_at = NULL,
           waits_for = p_target,
           waiting = jsonb_build_object('kind', 'execution', 'target', p_target, 'seq', p_seq),
           updated_at = now()
     WHERE e.id = p_id;
    INSERT INTO {schema}.logs (execution_id, event, actor, seq, details)
    VALUES (p_id, 'execution_waiting', p_owner, p_seq,
            jsonb_build_object('kind', 'execution', 'target', p_target, 'epoch', p_epoch + 1));
    RETURN QUERY SELECT false, v_target.status, NULL::text, NULL::jsonb;
END $$;

-- Execution p_id has ended: every execution WAITING for it is due now, and executors are
-- told ('due:' || id). Called by whatever ends an execution, in its transaction, holding
-- p_id's row. executions_waits_for_idx.
CREATE FUNCTION {schema}.wake_waiters_v1(p_id text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_waiter text;
BEGIN
    FOR v_waiter IN
        UPDATE {schema}.executions SET wake_at = now(), updated_at = now()
         WHERE status = 'WAITING' AND waits_for = p_id
     RETURNING id
    LOOP
        PERFORM pg_notify('stepstone', 'due:' || v_waiter);
    END LOOP;
END $$;

-- finish_execution_v1, and the executions waiting for this one are made due.
CREATE FUNCTION {schema}.finish_execution_v2(
    p_id text, p_owner text, p_epoch bigint, p_status text, p_output text, p_error jsonb,
    p_seq integer, p_state jsonb, p_deleted text[], p_details jsonb
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {schema}.finish_execution_v1(p_id, p_owner, p_epoch, p_status, p_output, p_error,
                                         p_seq, p_state, p_deleted, p_details);
    PERFORM {schema}.wake_waiters_v1(p_id);
END $$;

-- The outcome of a wait for key p_waiting->>'key' of execution p_waiting->>'target': its
-- committed value; past the timeout (p_waiting->>'timeout_at') without it, a StateTimeout
-- error record; a target that ended without it, StateNotSet; no such target,
-- WorkflowNotFound. Not resolved yet: (false, NULL, NULL). states_pkey, executions_pkey.
CREATE FUNCTION {schema}.resolve_state_wait_v1(p_waiting jsonb)
RETURNS TABLE (resolved boolean, output text, error jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_target  text := p_waiting->>'target';
    v_key     text := p_waiting->>'key';
    v_timeout timestamptz := (p_waiting->>'timeout_at')::timestamptz;
    v_status  text;
    v_value   text;
    v_type    text;
    v_message text;
BEGIN
    SELECT s.value INTO v_value FROM {schema}.states s
     WHERE s.execution_id = v_target AND s.key = v_key;
    IF v_value IS NOT NULL THEN
        RETURN QUERY SELECT true, v_value, NULL::jsonb;
        RETURN;
    END IF;
    SELECT x.status INTO v_status FROM {schema}.executions x WHERE x.id = v_target;
    IF v_status IS NULL THEN
        v_type := 'WorkflowNotFound';
        v_message := format('no execution has workflow id %s', to_json(v_target));
    ELSIF v_status IN ('SUCCEEDED', 'FAILED', 'CANCELLED') THEN
        v_type := 'StateNotSet';
        v_message := format('workflow %s ended (%s) without setting state key %s',
                            to_json(v_target), v_status, to_json(v_key));
    ELSIF v_timeout IS NOT NULL AND v_timeout <= now() THEN
        v_type := 'StateTimeout';
        v_message := format('workflow %s did not set state key %s within %s s',
                            to_json(v_target), to_json(v_key), p_waiting->>'timeout');
    ELSE
        RETURN QUERY SELECT false, NULL::text, NULL::jsonb;
        RETURN;
    END IF;
    RETURN QUERY SELECT true, NULL::text,
        jsonb_build_object('type', 'stepstone.errors:' || v_type, 'message', v_message,
                           'args', NULL, 'attrs', NULL, 'traceback', '');
END $$;

-- wait_v1, and waits for another execution's state (kind 'wait_state', p_waiting holds the
-- target and the key, p_seconds the timeout): waits_for is the target, and the target's
-- advisory lock is taken with the waiter's, in key order.
-- Locks: the advisory locks (exclusive, in key order), then the row (the exclusive fence).
CREATE FUNCTION {schema}.wait_v2(
    p_id text, p_owner text, p_epoch bigint, p_seq integer, p_name text, p_kind text,
    p_waiting jsonb, p_seconds double precision, p_until timestamptz,
    p_started_at timestamptz, p_state jsonb, p_deleted text[]
) RETURNS TABLE (resolved boolean, output text, error jsonb, wake_at timestamptz,
                 wake_in double precision)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_timer   timestamptz;
    v_waiting jsonb;
    v_outcome record;
    v_target  text := p_waiting->>'target';
BEGIN
    -- The target's lock too, exclusive: a step commit of the target (which takes it shared)
    -- either commits before this reads the target's state, or after this commit, when its
    -- state write finds this execution WAITING and makes it due.
    PERFORM {schema}.lock_executions_v1(
        CASE WHEN v_target IS NULL THEN ARRAY[p_id] ELSE ARRAY[p_id, v_target] END);
    PERFORM {schema}.fence_v1(p_id, p_owner, p_epoch, true);
    v_timer := coalesce(p_until, now() + make_interval(secs => p_seconds));
    v_waiting := p_waiting || jsonb_build_object(
        'kind', p_kind, 'seq', p_seq, 'name', p_name, 'started_at', p_started_at,
        'timeout', p_seconds,
        'timeout_at', CASE WHEN p_kind <> 'sleep' THEN v_timer END);
    SELECT * INTO v_outcome FROM {schema}.resolve_wait_v1(p_id, v_waiting, v_timer);
    IF p_state IS NOT NULL OR p_deleted IS NOT NULL THEN
        -- The checkpoint is taken at the wait's position: after it if it is done now.
        PERFORM {schema}.write_state_v1(
            p_id, p_seq + CASE WHEN v_outcome.resolved THEN 1 ELSE 0 END, p_state, p_deleted);
    END IF;
    IF v_outcome.resolved THEN
        INSERT INTO {schema}.steps
               (execution_id, seq, name, kind, output, error, attempts, started_at, finished_at)
        VALUES (p_id, p_seq, p_name, p_kind, v_outcome.output, v_outcome.error, 1,
                p_started_at, now());
        RETURN QUERY SELECT true, v_outcome.output, v_outcome.error, NULL::timestamptz,
                            NULL::double precision;
        RETURN;
    END IF;
    UPDATE {schema}.executions e
       SET status = 'WAITING', owner = NULL, epoch = e.epoch + 1, wake_at = v_timer,
           waiting = v_waiting, waits_for = v_target, updated_at = now()
     WHERE e.id = p_id;
    INSERT INTO {schema}.logs (execution_id, event, actor, seq, details)
    VALUES (p_id, 'execution_waiting', p_owner, p_seq,
            jsonb_build_object('kind', p_kind, 'topic', p_waiting->>'topic',
                               'wake_at', v_timer, 'epoch', p_epoch + 1)
            || CASE WHEN v_target IS NULL THEN '{{}}'::jsonb
                    ELSE jsonb_build_object('target', v_target, 'key', p_waiting->>'key') END);
    RETURN QUERY SELECT false, NULL::text, NULL::jsonb, v_timer,
                        extract(epoch FROM v_timer - now())::double precision;
END $$;

-- Execution p_id (owned by p_owner at p_epoch) continues as new at position p_seq of its
-- run: run p_run starts with inputs p_inputs. One statement, fenced: the steps, state and
-- checkpoints of the old run are deleted, the messages it received are stamped with its
-- number (p_run - 1), and the execution is RUNNING, owned by p_owner at the next epoch,
-- with run = p_run and no recovery counted; an audit entry records it. Returns what runs
-- the new run (as a claim does: no steps, no state).
-- Locks: the advisory lock (exclusive), then the row (the exclusive fence), then the rows
-- deleted and stamped. executions_pkey; steps_pkey, states_pkey, checkpoints_pkey and
-- messages_pkey by their leading execution_id.
CREATE FUNCTION {schema}.continue_as_new_v1(
    p_id text, p_owner text, p_epoch bigint, p_seq integer, p_inputs text, p_run integer
) RETURNS TABLE (id text, workflow_name text, workflow_version text, inputs text, epoch bigint,
                 recoveries integer, steps json, state json, trace_context jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_steps integer;
BEGIN
    PERFORM {schema}.lock_executions_v1(ARRAY[p_id]);
    PERFORM {schema}.fence_v1(p_id, p_owner, p_epoch, true);
    DELETE FROM {schema}.steps s WHERE s.execution_id = p_id;
    GET DIAGNOSTICS v_steps = ROW_COUNT;
    DELETE FROM {schema}.states st WHERE st.execution_id = p_id;
    DELETE FROM {schema}.checkpoints c WHERE c.execution_id = p_id;
    UPDATE {schema}.messages m SET received_run = p_run - 1
     WHERE m.execution_id = p_id AND m.received_seq IS NOT NULL AND m.received_run IS NULL;
    UPDATE {schema}.executions e
       SET inputs = p_inputs, run = p_run, epoch = e.epoch + 1, recoveries = 0,
           updated_at = now()
     WHERE e.id = p_id;
    INSERT INTO {schema}.logs (execution_id, event, actor, seq, details)
    VALUES (p_id, 'execution_continued_as_new', p_owner, p_seq,
            jsonb_build_object('run', p_run, 'previous_run', p_run - 1, 'epoch', p_epoch + 1,
                               'steps_removed', v_steps));
    RETURN QUERY
    SELECT e.id, e.workflow_name, e.workflow_version, e.inputs, e.epoch, e.recoveries,
           '[]'::json, '{{}}'::json, e.trace_context
      FROM {schema}.executions e WHERE e.id = p_id;
END $$;

-- Resume: as resume_execution_v1 (a FAILED or CANCELLED execution is RUNNING again, owned
-- by p_owner, from its last recorded step; its trailing failed steps are removed and run
-- again; a fresh recovery count; an execution_resumed audit entry); if it was CANCELLED,
-- the descendants its cancellation cancelled are resumed with it, with no owner. Returns
-- the status the named execution had (NULL: none); anything but FAILED or CANCELLED is
-- left as it was. executions_pkey, executions_parent_idx, logs_pkey.
CREATE FUNCTION {schema}.resume_execution_v2(p_id text, p_actor text, p_owner text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_children text[];
    v_ids      text[] := '{{}}';
    v_status   text;
    v_id       text;
    v_removed  integer;
    v_last     integer;
BEGIN
    WITH RECURSIVE tree (id) AS (
        SELECT c.id FROM {schema}.executions c WHERE c.parent_id = p_id
        UNION
        SELECT c.id FROM {schema}.executions c JOIN tree t ON c.parent_id = t.id
    )
    SELECT array_agg(t.id) INTO v_children
      FROM tree t
     WHERE t.id <> p_id
       AND (SELECT l.details->>'ancestor' FROM {schema}.logs l
             WHERE l.execution_id = t.id AND l.event = 'execution_cancelled'
             ORDER BY l.id DESC LIMIT 1) = p_id;
    PERFORM {schema}.lock_executions_v1(p_id || coalesce(v_children, '{{}}'));
    SELECT status INTO v_status FROM {schema}.executions WHERE id = p_id FOR NO KEY UPDATE;
    IF v_status IS NULL OR v_status NOT IN ('FAILED', 'CANCELLED') THEN
        RETURN v_status;
    END IF;
    IF v_status = 'CANCELLED' THEN
        v_ids := ARRAY(SELECT e.id FROM {schema}.executions e
                        WHERE e.id = ANY (v_children) AND e.status = 'CANCELLED'
                        ORDER BY e.id
                          FOR NO KEY UPDATE);
    END IF;
    FOREACH v_id IN ARRAY p_id || v_ids LOOP
        v_removed := 0;
        LOOP
            SELECT seq INTO v_last FROM {schema}.steps
             WHERE execution_id = v_id ORDER BY seq DESC LIMIT 1;
            EXIT WHEN v_last IS NULL OR NOT EXISTS (
                SELECT 1 FROM {schema}.steps
                 WHERE execution_id = v_id AND seq = v_last AND error IS NOT NULL);
            DELETE FROM {schema}.steps WHERE execution_id = v_id AND seq = v_last;
            v_removed := v_removed + 1;
        END LOOP;
        UPDATE {schema}.executions
           SET status = 'RUNNING', owner = CASE WHEN v_id = p_id THEN p_owner END,
               epoch = epoch + 1, output = NULL, error = NULL, finished_at = NULL,
               recoveries = 0, updated_at = now()
         WHERE id = v_id;
        INSERT INTO {schema}.logs (execution_id, event, actor, details)
        VALUES (v_id, 'execution_resumed', p_actor,
                CASE WHEN v_id = p_id
                     THEN jsonb_build_object('reason', 'operator', 'previous_status', v_status,
                                             'failed_steps_removed', v_removed)
                     ELSE jsonb_build_object('reason', 'parent_resumed', 'ancestor', p_id,
                                             'previous_status', 'CANCELLED',
                                             'failed_steps_removed', v_removed)
                END);
    END LOOP;
    RETURN v_status;
END $$;

-- Declares queue p_name with its limits (or changes them): the last declaration wins.
CREATE FUNCTION {schema}.declare_queue_v1(
    p_name text, p_concurrency integer, p_rate_limit integer, p_rate_period double precision,
    p_partition_concurrency integer
) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO {schema}.queues AS q
           (name, concurrency, rate_limit, rate_period, partition_concurrency)
    VALUES (p_name, p_concurrency, p_rate_limit, p_rate_period, p_partition_concurrency)
        ON CONFLICT (name) DO UPDATE
       SET concurrency = EXCLUDED.concurrency, rate_limit = EXCLUDED.rate_limit,
           rate_period = EXCLUDED.rate_period,
           partition_concurrency = EXCLUDED.partition_concurrency, updated_at = now()
     WHERE (q.concurrency, q.rate_limit, q.rate_period, q.partition_concurrency)
           IS DISTINCT FROM (EXCLUDED.concurrency, EXCLUDED.rate_limit, EXCLUDED.rate_period,
                             EXCLUDED.partition_concurrency);
$$;

-- Enqueues execution p_id of workflow p_name/p_version with inputs p_inputs on queue
-- p_queue: ENQUEUED, no owner, startable p_delay seconds from now (NULL: at once), with
-- its priority, dedup and partition keys, deadline length and trace context, and an
-- audit entry; dispatchers are told at commit. Returns what happened:
-- 'enqueued'; 'exists' (an execution has that id: its workflow name and status, nothing
-- written); 'deduplicated' (an unfinished execution of the queue has that dedup key: its
-- id in `existing`, nothing written); 'no_queue' (no queue has that name, nothing
-- written). executions_pkey, executions_dedup_idx, queues_pkey.
CREATE FUNCTION {schema}.enqueue_v1(
    p_id text, p_name text, p_version text, p_inputs text, p_queue text, p_priority integer,
    p_dedup text, p_partition text, p_delay double precision, p_timeout double precision,
    p_parent text, p_trace jsonb, p_attributes jsonb, p_actor text
) RETURNS TABLE (outcome text, workflow_name text, status text, existing text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM FROM {schema}.queues q WHERE q.name = p_queue;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_queue'::text, NULL::text, NULL::text, NULL::text;
        RETURN;
    END IF;
    INSERT INTO {schema}.executions AS e
           (id, workflow_name, workflow_version, status, inputs, epoch, parent_id,
            trace_context, attributes, queue_name, priority, queue_seq, dedup_key,
            partition_key, not_before, timeout_seconds)
    VALUES (p_id, p_name, p_version, 'ENQUEUED', p_inputs, 0, p_parent, p_trace,
            coalesce(p_attributes, '{{}}'::jsonb), p_queue, p_priority,
            nextval('{schema}.queue_seq'), p_dedup, p_partition,
            CASE WHEN p_delay > 0 THEN now() + make_interval(secs => p_delay) END, p_timeout)
        ON CONFLICT DO NOTHING;
    IF FOUND THEN
        INSERT INTO {schema}.logs (execution_id, event, actor, details)
        VALUES (p_id, 'execution_enqueued', p_actor,
                jsonb_strip_nulls(jsonb_build_object(
                    'queue', p_queue, 'priority', p_priority, 'dedup_key', p_dedup,
                    'partition_key', p_partition, 'delay', p_delay)));
        PERFORM pg_notify('stepstone', 'enqueued:' || p_queue);
        RETURN QUERY SELECT 'enqueued'::text, p_name, 'ENQUEUED'::text, NULL::text;
        RETURN;
    END IF;
    RETURN QUERY SELECT 'exists'::text, x.workflow_name, x.status, NULL::text
                   FROM {schema}.executions x WHERE x.id = p_id;
    IF FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT 'deduplicated'::text, x.workflow_name, x.status, x.id
                   FROM {schema}.executions x
                  WHERE x.queue_name = p_queue AND x.dedup_key = p_dedup
                    AND x.status IN ('ENQUEUED', 'RUNNING', 'WAITING');
    IF NOT FOUND THEN
        -- The conflicting execution ended between the insert and this look: try again.
        RETURN QUERY SELECT * FROM {schema}.enqueue_v1(
            p_id, p_name, p_version, p_inputs, p_queue, p_priority, p_dedup, p_partition,
            p_delay, p_timeout, p_parent, p_trace, p_attributes, p_actor);
    END IF;
END $$;

-- Claims startable executions of the queues p_queues, up to p_capacity[i] of queue i and
-- p_total in all (what this worker has room for), of the workflow versions this worker
-- runs (p_names[j], p_versions[j]), in one statement: each becomes RUNNING, owned by p_owner at the next
-- epoch, started (its deadline set from its timeout), with an audit entry. Per queue,
-- under its row lock: at most its concurrency minus what runs, its rate limit minus the
-- starts within the period, and per partition key its partition concurrency minus what
-- runs there; in priority order, FIFO within a priority, skipping those not yet due.
-- Returns rows of kind 'claimed' (what resumes each: its recorded steps and state, for
-- one woken from a wait) and one row of kind 'next': the seconds until the earliest
-- delayed start or the end of the oldest start in a rate period of these queues (NULL:
-- none known).
-- Locks: the queue rows (FOR UPDATE, in name order), then the claimed rows (SKIP LOCKED).
-- queues_pkey, executions_enqueued_idx, executions_queue_running_idx,
-- executions_dispatched_idx, executions_delayed_idx.
CREATE FUNCTION {schema}.dispatch_v1(
    p_owner text, p_queues text[], p_capacity integer[], p_total integer, p_names text[],
    p_versions text[]
) RETURNS TABLE (kind text, id text, workflow_name text, workflow_version text, inputs text,
                 epoch bigint, recoveries integer, steps json, state json,
                 trace_context jsonb, queue text, next_in double precision)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_queue    record;
    v_take     integer;
    v_claimed  text[] := '{{}}';
    v_next     timestamptz;
    v_ids      text[];
BEGIN
    FOR v_queue IN
        SELECT q.name, q.concurrency, q.rate_limit, q.rate_period, q.partition_concurrency,
               c.capacity
          FROM unnest(p_queues, p_capacity) AS c (name, capacity)
          JOIN {schema}.queues q ON q.name = c.name
         WHERE c.capacity > 0
         ORDER BY q.name
           FOR UPDATE OF q
    LOOP
        v_take := least(v_queue.capacity, p_total - cardinality(v_claimed));
        IF v_queue.concurrency IS NOT NULL THEN
            v_take := least(v_take, v_queue.concurrency - (
                SELECT count(*) FROM {schema}.executions e
                 WHERE e.queue_name = v_queue.name AND e.status = 'RUNNING'));
        END IF;
        IF v_queue.rate_limit IS NOT NULL THEN
            v_take := least(v_take, v_queue.rate_limit - (
                SELECT count(*) FROM {schema}.executions e
                 WHERE e.queue_name = v_queue.name
                   AND e.dispatched_at > now() - make_interval(secs => v_queue.rate_period)));
        END IF;
        CONTINUE WHEN v_take <= 0;
        -- The candidates in dispatch order, each partition's cut at its free slots; a
        -- bounded scan (a saturated partition cannot make a dispatch walk the whole queue).
        WITH running AS (
            SELECT e.partition_key, count(*) AS n FROM {schema}.executions e
             WHERE v_queue.partition_concurrency IS NOT NULL
               AND e.queue_name = v_queue.name AND e.status = 'RUNNING'
               AND e.partition_key IS NOT NULL
             GROUP BY e.partition_key
        ), ranked AS (
            SELECT cand.id, cand.priority, cand.queue_seq, cand.partition_key,
                   row_number() OVER (PARTITION BY cand.partition_key
                                      ORDER BY cand.priority, cand.queue_seq) AS nth
              FROM (SELECT e.id, e.priority, e.queue_seq, e.partition_key
                      FROM {schema}.executions e
                      JOIN unnest(p_names, p_versions) AS r (n, v)
                        ON e.workflow_name = r.n AND e.workflow_version = r.v
                     WHERE e.queue_name = v_queue.name AND e.status = 'ENQUEUED'
                       AND (e.not_before IS NULL OR e.not_before <= now())
                     ORDER BY e.priority, e.queue_seq
                     LIMIT CASE WHEN v_queue.partition_concurrency IS NULL THEN v_take
                                ELSE greatest(1000, v_take * 10) END) cand
        )
        SELECT array_agg(ranked.id ORDER BY ranked.priority, ranked.queue_seq) INTO v_ids
          FROM ranked LEFT JOIN running ON running.partition_key = ranked.partition_key
         WHERE v_queue.partition_concurrency IS NULL OR ranked.partition_key IS NULL
            OR ranked.nth <= v_queue.partition_concurrency - coalesce(running.n, 0);
        CONTINUE WHEN v_ids IS NULL;
        WITH locked AS (
            SELECT e.id FROM unnest(v_ids) WITH ORDINALITY AS c (id, nth)
              JOIN {schema}.executions e ON e.id = c.id
             WHERE e.status = 'ENQUEUED'
             ORDER BY c.nth
             LIMIT v_take
               FOR NO KEY UPDATE OF e SKIP LOCKED
        ), started AS (
            UPDATE {schema}.executions e
               SET status = 'RUNNING', owner = p_owner, epoch = e.epoch + 1,
                   started_at = coalesce(e.started_at, clock_timestamp()),
                   dispatched_at = coalesce(e.dispatched_at, clock_timestamp()),
                   deadline_at = coalesce(e.deadline_at,
                                          now() + make_interval(secs => e.timeout_seconds)),
                   updated_at = now()
              FROM locked WHERE e.id = locked.id
            RETURNING e.id, e.epoch
        ), logged AS (
            INSERT INTO {schema}.logs (execution_id, event, actor, details)
            SELECT s.id, 'execution_dequeued', p_owner,
                   jsonb_build_object('queue', v_queue.name, 'epoch', s.epoch)
              FROM started s
        )
        SELECT v_claimed || coalesce(array_agg(s.id), '{{}}') INTO v_claimed FROM started s;
    END LOOP;
    RETURN QUERY
    SELECT 'claimed'::text, e.id, e.workflow_name, e.workflow_version, e.inputs, e.epoch,
           e.recoveries,
           (SELECT coalesce(json_agg(json_build_array(s.seq, s.name, s.kind, s.output, s.error)
                                     ORDER BY s.seq), '[]')
              FROM {schema}.steps s WHERE s.execution_id = e.id),
           (SELECT coalesce(json_object_agg(st.key, st.value), '{{}}')
              FROM {schema}.states st WHERE st.execution_id = e.id),
           e.trace_context, e.queue_name, NULL::double precision
      FROM {schema}.executions e WHERE e.id = ANY (v_claimed);
    SELECT least(
               (SELECT min(first.not_before) FROM unnest(p_queues) AS q (name),
                       LATERAL (SELECT e.not_before FROM {schema}.executions e
                                 WHERE e.queue_name = q.name AND e.status = 'ENQUEUED'
                                   AND e.not_before IS NOT NULL AND e.not_before > now()
                                 ORDER BY e.not_before
                                 LIMIT 1) first),
               (SELECT min(first.dispatched_at + make_interval(secs => q.rate_period))
                  FROM {schema}.queues q,
                       LATERAL (SELECT e.dispatched_at FROM {schema}.executions e
                                 WHERE e.queue_name = q.name
                                   AND e.dispatched_at > now() - make_interval(secs => q.rate_period)
                                 ORDER BY e.dispatched_at
                                 LIMIT 1) first
                 WHERE q.name = ANY (p_queues) AND q.rate_limit IS NOT NULL))
      INTO v_next;
    RETURN QUERY
    SELECT 'next'::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::bigint,
           NULL::integer, NULL::json, NULL::json, NULL::jsonb, NULL::text,
           extract(epoch FROM v_next - now())::double precision;
END $$;

-- Resumes execution p_id as resume_execution_v2 does, a queued one back to ENQUEUED.
-- Returns the status it had (NULL: none) and, when its dedup key is held by another
-- unfinished execution of its queue (nothing changed), that execution's id.
-- Locks: as resume_execution_v2. executions_pkey, executions_dedup_idx.
CREATE FUNCTION {schema}.resume_execution_v3(p_id text, p_actor text, p_owner text)
RETURNS TABLE (status text, held_by text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_row    record;
    v_status text;
    v_holder text;
BEGIN
    SELECT e.queue_name, e.dedup_key INTO v_row FROM {schema}.executions e WHERE e.id = p_id;
    IF v_row.queue_name IS NULL THEN
        RETURN QUERY SELECT {schema}.resume_execution_v2(p_id, p_actor, p_owner), NULL::text;
        RETURN;
    END IF;
    BEGIN
        v_status := {schema}.resume_execution_v2(p_id, p_actor, NULL);
        IF v_status IN ('FAILED', 'CANCELLED') THEN
            UPDATE {schema}.executions e SET status = 'ENQUEUED', owner = NULL
             WHERE e.id = p_id;
            PERFORM pg_notify('stepstone', 'enqueued:' || v_row.queue_name);
        END IF;
    EXCEPTION WHEN unique_violation THEN
        SELECT x.id INTO v_holder FROM {schema}.executions x
         WHERE x.queue_name = v_row.queue_name AND x.dedup_key = v_row.dedup_key
           AND x.status IN ('ENQUEUED', 'RUNNING', 'WAITING') AND x.id <> p_id;
        SELECT e.status INTO v_status FROM {schema}.executions e WHERE e.id = p_id;
    END;
    RETURN QUERY SELECT v_status, v_holder;
END $$;

-- Hands back a RUNNING execution that p_owner owns at p_epoch but cannot run (its inputs
-- cannot be decoded there), fenced like release_v1: no owner, the next epoch, p_owner added
-- to refused_by (its sweeps pass the execution over until it restarts), an audit entry
-- 'execution_refused' with p_reason, and a notification so that another executor claims it
-- at once. Not an interruption: no recovery is counted. An execution of a queue stays
-- RUNNING too (re-enqueued, the same worker's dispatcher would take it again). False,
-- changing nothing, if it is not p_owner's at p_epoch. Locks: the advisory lock
-- (exclusive), then the row. executions_pkey.
CREATE FUNCTION {schema}.refuse_v1(p_id text, p_owner text, p_epoch bigint, p_reason text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_epoch bigint;
BEGIN
    PERFORM {schema}.lock_executions_v1(ARRAY[p_id]);
    UPDATE {schema}.executions
       SET owner = NULL, epoch = epoch + 1,
           refused_by = array_append(array_remove(coalesce(refused_by, '{{}}'), p_owner), p_owner),
           updated_at = now()
     WHERE id = p_id AND status = 'RUNNING' AND owner = p_owner AND epoch = p_epoch
    RETURNING epoch INTO v_epoch;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO {schema}.logs (execution_id, event, actor, details)
    VALUES (p_id, 'execution_refused', p_owner,
            jsonb_build_object('reason', p_reason, 'epoch', v_epoch, 'previous_epoch', p_epoch));
    PERFORM pg_notify('stepstone', 'due:' || p_id);
    RETURN true;
END $$;

-- The code an execution runs with (see 0014_execution_fingerprints.sql).
-- Sets NEW.fingerprint, on insert (unless given) and when `run` changes (continue-as-new),
-- to the registered fingerprint of the execution's workflow version. workflows_pkey.
CREATE FUNCTION {schema}.execution_fingerprint_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' AND NEW.fingerprint IS NOT NULL THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.run IS NOT DISTINCT FROM OLD.run THEN
        RETURN NEW;
    END IF;
    NEW.fingerprint := (SELECT w.fingerprint FROM {schema}.workflows w
                         WHERE w.name = NEW.workflow_name AND w.version = NEW.workflow_version);
    RETURN NEW;
END $$;

CREATE TRIGGER executions_fingerprint
    BEFORE INSERT OR UPDATE OF run ON {schema}.executions
    FOR EACH ROW EXECUTE FUNCTION {schema}.execution_fingerprint_v1();
