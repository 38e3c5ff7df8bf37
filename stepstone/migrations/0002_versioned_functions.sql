-- Versioned function names, one lock order, a recovery counter that counts only
-- recoveries, cancellation that reaches an execution's descendants, and a fenced hand-back.
--
-- Naming. Every function the Store calls carries a version suffix (fence_v1, claim_v1...).
-- A later migration that changes what a function does, its arguments or its result creates
-- it under the next name (claim_v2) and keeps the old one, so that during a rolling deploy
-- executors of the previous release (calling claim_v1) and of the new one (calling
-- claim_v2) share one schema; a migration of a later release, once no executor calls the
-- old name, drops it. The unversioned functions of 0001 are dropped here: no release ever
-- called them.
--
-- Lock order. Two kinds of lock guard an execution:
--   - its advisory lock, key (1937010533, hashtext(id)): a fixed class for stepstone and the
--     id's hash (a collision only means a wait). A step commit takes it shared (in the
--     fence); every change of an execution's owner or epoch, and every change of its
--     status but its owner's own completion, takes it exclusive (claim_v1, release_v1,
--     release_unregistered_v1, cancel_execution_v1, resume_execution_v1);
--   - its row lock (FOR NO KEY UPDATE, or the UPDATE itself).
-- Every function that takes both takes them in this order: the advisory locks first, of
-- several executions in ascending key order (lock_executions_v1), then the row locks. Taken
-- the other way round, a row held while waiting for an advisory lock closes a cycle: a
-- step commit holds E's shared lock, a cancel of E waits for the exclusive one, and a sweep
-- that had locked E's row and now waits behind the cancel for the advisory lock holds the
-- row the cancel needs next (PostgreSQL aborts one of them with 40P01).
-- The sweep keeps the order and never waits at all (pg_try_advisory_xact_lock, then the
-- row with SKIP LOCKED). Functions that take only row locks cannot close a cycle either:
-- the completion (finish_execution_v1) locks the row of its own execution and waits for
-- nothing once it has it; the purge locks rows of ended executions with SKIP LOCKED.
--
-- {schema} is replaced by the configured schema, quoted as an identifier.

DROP FUNCTION {schema}.fence(text, text, bigint, boolean);
DROP FUNCTION {schema}.write_state(text, integer, jsonb, text[]);
DROP FUNCTION {schema}.start_execution(text, text, text, text, text, text, jsonb, jsonb);
DROP FUNCTION {schema}.commit_step(
    text, text, bigint, integer, text, text, text, jsonb, integer, timestamptz, timestamptz,
    jsonb, text[], jsonb);
DROP FUNCTION {schema}.finish_execution(
    text, text, bigint, text, text, jsonb, integer, jsonb, text[], jsonb);
DROP FUNCTION {schema}.claim(text, text[], text);
DROP FUNCTION {schema}.sweep(text, text[], text[], integer);
DROP FUNCTION {schema}.cancel_execution(text, text);
DROP FUNCTION {schema}.resume_execution(text, text, text);
DROP FUNCTION {schema}.fork_execution(text, integer, text, text, text);
DROP FUNCTION {schema}.purge_executions(timestamptz, integer);

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

-- Applies state changes and snapshots the resulting state as the checkpoint at p_seq.
CREATE FUNCTION {schema}.write_state_v1(
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
-- execution at p_epoch, it loses its owner and moves to the next epoch (any executor that
-- runs its workflow claims it with its next sweep), and true is returned; otherwise nothing
-- changes and false is returned. A hand-back after an interruption (p_interrupted) counts
-- as a recovery here (the claim that follows does not), so a hand-back loop ends at
-- max_recoveries; handing back at a graceful shutdown does not count.
-- Locks: the advisory lock (exclusive), then the row. executions_pkey.
CREATE FUNCTION {schema}.release_v1(
    p_id text, p_owner text, p_epoch bigint, p_reason text, p_interrupted boolean
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_epoch bigint;
BEGIN
    PERFORM {schema}.lock_executions_v1(ARRAY[p_id]);
    UPDATE {schema}.executions
       SET owner = NULL, epoch = epoch + 1,
           recoveries = recoveries + CASE WHEN p_interrupted THEN 1 ELSE 0 END,
           updated_at = now()
     WHERE id = p_id AND status = 'RUNNING' AND owner = p_owner AND epoch = p_epoch
    RETURNING epoch INTO v_epoch;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO {schema}.logs (execution_id, event, actor, details)
    VALUES (p_id, 'execution_released', p_owner,
            jsonb_build_object('reason', p_reason, 'epoch', v_epoch, 'previous_epoch', p_epoch,
                               'interrupted', p_interrupted));
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
-- caller runs; once out of those, also list (up to 100) expired ones the caller cannot run.
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
    v_ids       text[] := '{{}}';
    v_candidate record;
BEGIN
    SELECT coalesce(array_agg(x.id), '{{}}') INTO v_expired
      FROM {schema}.executors x
     WHERE x.id <> p_owner AND x.heartbeat_at < now() - make_interval(secs => x.lease_seconds);
    IF p_limit > 0 THEN
        -- Executions of expired owners first, then released ones (no owner).
        FOR v_candidate IN
            SELECT e.id, e.owner FROM {schema}.executions e
             WHERE e.status = 'RUNNING' AND e.owner = ANY (v_expired)
               AND (e.workflow_name, e.workflow_version) IN
                   (SELECT n, v FROM unnest(p_names, p_versions) AS r (n, v))
            UNION ALL
            SELECT e.id, e.owner FROM {schema}.executions e
             WHERE e.status = 'RUNNING' AND e.owner IS NULL
               AND (e.workflow_name, e.workflow_version) IN
                   (SELECT n, v FROM unnest(p_names, p_versions) AS r (n, v))
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
