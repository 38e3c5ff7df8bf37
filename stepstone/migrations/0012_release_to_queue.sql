-- A queued execution handed back goes back to its queue.
--
-- release_v1 hands a RUNNING execution back with no owner; any executor that runs its
-- workflow claims it with a sweep. For an execution of a queue that skipped the queue: the
-- sweep of an executor that does not serve the queue could take it, past that executor's
-- worker_concurrency. release_v1 is replaced (same signature and result): a queued
-- execution handed back is ENQUEUED again, with no owner (its recorded steps stay), and
-- dispatchers are told ('enqueued:' || queue), so that a worker serving the queue starts
-- it again within the queue's limits; another is RUNNING with no owner, as before.
--
-- {schema} is replaced by the configured schema, quoted as an identifier.

-- Hands an interrupted execution back at once, fenced: if p_owner still owns the RUNNING
-- execution at p_epoch, it loses its owner and moves to the next epoch, and true is
-- returned; otherwise nothing changes and false is returned. An execution of a queue is
-- ENQUEUED again (a dispatcher starts it); any other stays RUNNING for any executor that
-- runs its workflow to claim with its next sweep. A hand-back after an interruption
-- (p_interrupted) counts as a recovery here (the claim or dispatch that follows does not),
-- so a hand-back loop ends at max_recoveries; handing back at a graceful shutdown does not
-- count. Locks: the advisory lock (exclusive), then the row. executions_pkey.
CREATE OR REPLACE FUNCTION {schema}.release_v1(
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
