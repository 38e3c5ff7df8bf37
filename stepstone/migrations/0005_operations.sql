-- Inspecting and operating: indexes for listing and purging, a distinct error for a fenced
-- commit of a cancelled execution, and one function per operator action (cancel, resume,
-- fork, purge), each recorded in the audit log with who did it.

-- Listing: by status and creation time (also the health counts), by update time, by
-- duration, and by user attributes; purging: by finish time.
DROP INDEX {schema}.executions_active_idx;
CREATE INDEX executions_status_created_idx ON {schema}.executions (status, created_at, id);
CREATE INDEX executions_updated_idx ON {schema}.executions (updated_at, id);
CREATE INDEX executions_duration_idx ON {schema}.executions ((finished_at - created_at), id)
    WHERE finished_at IS NOT NULL;
CREATE INDEX executions_finished_idx ON {schema}.executions (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE INDEX executions_attributes_idx ON {schema}.executions USING gin (attributes jsonb_path_ops);

-- The fence raises SS002 instead of SS001 when the execution was cancelled, so that the
-- runtime stops it as cancelled rather than as taken over.
CREATE OR REPLACE FUNCTION {schema}.fence(
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

-- Cancel a RUNNING or ENQUEUED execution: it ends CANCELLED now; its executor stops at its
-- next step boundary (that commit fails with SS002). Returns the status found (NULL: no
-- such execution); anything but RUNNING or ENQUEUED is left as it was.
CREATE FUNCTION {schema}.cancel_execution(p_id text, p_actor text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
BEGIN
    PERFORM pg_advisory_xact_lock(1937010533, hashtext(p_id));
    SELECT status INTO v_status FROM {schema}.executions WHERE id = p_id FOR NO KEY UPDATE;
    IF v_status IN ('RUNNING', 'ENQUEUED') THEN
        UPDATE {schema}.executions
           SET status = 'CANCELLED', finished_at = now(), updated_at = now()
         WHERE id = p_id;
        INSERT INTO {schema}.logs (execution_id, event, actor, details)
        VALUES (p_id, 'execution_cancelled', p_actor, jsonb_build_object('previous_status', v_status));
    END IF;
    RETURN v_status;
END $$;

-- Resume a FAILED or CANCELLED execution: the step records at its end that hold an error
-- are removed (those steps run again), and it is RUNNING again with a new epoch, owned by
-- p_owner (NULL: the next sweep of an executor that runs its workflow claims it). Returns
-- the status found (NULL: no such execution); anything but FAILED or CANCELLED is left alone.
CREATE FUNCTION {schema}.resume_execution(p_id text, p_actor text, p_owner text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_status  text;
    v_removed integer := 0;
    v_last    integer;
BEGIN
    PERFORM pg_advisory_xact_lock(1937010533, hashtext(p_id));
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
           finished_at = NULL, updated_at = now()
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
-- is within its recorded steps.
CREATE FUNCTION {schema}.fork_execution(
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
-- steps, state, checkpoints and log. Returns how many executions were deleted.
-- executions_finished_idx. (The purge itself is logged under the execution id '', which no
-- execution can have.)
CREATE FUNCTION {schema}.purge_executions(p_cutoff timestamptz, p_batch integer) RETURNS integer
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
