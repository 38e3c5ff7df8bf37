-- Continue-as-new: a workflow ends its run and starts afresh, under the same id, with new
-- arguments and an empty history; how a long-lived workflow bounds its replay cost.
--
-- The workflow calls stepstone.continue_as_new(...); one fenced statement
-- (continue_as_new_v1) deletes the run's steps, state and checkpoints, stores the new
-- inputs, moves the execution to its next run and its next epoch (anything still running
-- the old run is fenced out), gives it a fresh recovery budget and writes an audit entry
-- ('execution_continued_as_new'). The execution stays RUNNING, owned by the same executor,
-- which runs the new run at once in the same thread. A crash before the commit leaves the
-- old run whole (its replay reaches the same call and does it again); after it, the new
-- run is in place (a claim replays it from its start). Everything else stays: the id, the
-- parent, the deadline, the attributes, the trace, the children, the audit log, and the
-- mailbox: unread messages are the new run's to receive.
--
-- Runs. executions.run numbers the runs of an execution (1 for the first). Positions
-- (steps.seq, messages.received_seq) restart at 0 in each run, so a message received by an
-- earlier run is stamped with that run's number (received_run) when the run ends: it stays
-- received (never delivered again, its idempotency key still deduplicates), and is told
-- apart from the receive of the current run at the same position (received_run IS NULL).
-- No function of 0001-0006 is replaced: a receive marks its message as before.
--
-- Lock order as in 0002: the execution's advisory lock (exclusive: the epoch changes), then
-- its row, then the rows of its other tables.
--
-- {schema} is replaced by the configured schema, quoted as an identifier.

-- Which run of the execution this is: 1, then one more at each continue-as-new.
ALTER TABLE {schema}.executions ADD COLUMN run integer NOT NULL DEFAULT 1 CHECK (run >= 1);
-- For a message received by an earlier run of its execution: that run's number (its
-- received_seq is a position in that run). NULL for the messages of the current run.
ALTER TABLE {schema}.messages ADD COLUMN received_run integer;

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
