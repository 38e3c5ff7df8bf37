-- Resuming a queued execution keeps its queue's limits.
--
-- resume_execution_v2 makes a FAILED or CANCELLED execution RUNNING at once. For an
-- execution of a queue that would start it outside the dispatchers, past the queue's
-- concurrency. resume_execution_v3 resumes it as v2 does (trailing failed steps removed,
-- descendants its cancel took with it resumed, an audit entry), and then puts a queued
-- one back to ENQUEUED, with no owner, in the same transaction (it is never seen
-- RUNNING), for a dispatcher to start within the limits; dispatchers are told. A queued
-- execution whose dedup key another unfinished execution of its queue holds now is not
-- resumed: its holder is returned.
--
-- {schema} is replaced by the configured schema, quoted as an identifier.

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
