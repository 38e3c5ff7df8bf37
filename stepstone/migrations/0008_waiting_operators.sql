-- Resuming an execution that was cancelled while it waited for its children.
--
-- A cancel ends the execution and its unfinished descendants (cancel_tree_v1): a parent
-- WAITING for its child takes the child with it. resume_execution_v1 makes only the named
-- execution RUNNING again, so its replay reaches the child step, finds the child CANCELLED
-- and raises WorkflowCancelled there: a resume of such a parent could only fail.
-- resume_execution_v2 also resumes the descendants that this execution's cancellation
-- cancelled and that are still CANCELLED (their latest execution_cancelled audit entry
-- names it as the ancestor): each is RUNNING again with no owner, from its last recorded
-- step, and the next sweep of an executor that runs its workflow claims it. The parent's
-- replay then waits for its child again, as before the cancel. (No notification hurries
-- that sweep: it would race the parent's replay, which finds the child unowned and waits
-- for it, against a claim that makes it owned by the same executor, which the replay
-- would take for a restart.) Descendants cancelled for another reason (a cancel of their
-- own) stay as they are.
--
-- Locks: the advisory locks of the execution and of those descendants (exclusive, in key
-- order), then their rows; statuses are checked under both.
--
-- {schema} is replaced by the configured schema, quoted as an identifier.

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
