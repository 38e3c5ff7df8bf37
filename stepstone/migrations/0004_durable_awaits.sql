-- Durable waits for other executions.
--
-- A workflow that waits for another execution's end (a child's result, h.result() or
-- rt.handle(id).result() in a workflow body) records the wait like a sleep (0003): one
-- fenced statement (await_v1) either finds the target ended, or makes the waiter WAITING on
-- it (waits_for, waiting kind 'execution', no wake_at, no owner). Whatever ends the target
-- (finish_execution_v2, cancel_tree_v1) makes its waiters due (wake_waiters_v1) and tells
-- executors ('due:' || id); the sweep wakes them (wake_v1 writes no step row for such a
-- wait: the replay reads the target's outcome). A wake is not a recovery.
--
-- resolve_wait_v1, wake_v1 and cancel_tree_v1 are replaced with versions that know this
-- kind of wait; their signatures and results are unchanged, so executors of 0003 keep
-- working beside them.
--
-- {schema} is replaced by the configured schema, quoted as an identifier.

-- The execution a WAITING execution waits for (a child's result, a handle's result): its
-- end makes the waiter due (wake_waiters_v1).
ALTER TABLE {schema}.executions ADD COLUMN waits_for text;
CREATE INDEX executions_waits_for_idx ON {schema}.executions (waits_for)
    WHERE status = 'WAITING' AND waits_for IS NOT NULL;


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

-- The outcome of a pending wait of execution p_id, if it has one now: a wait for another
-- execution is over once that one has ended; a sleep once its time has come; a receive
-- takes the first unread message of its topic (marking it received by the receive at
-- p_waiting->>'seq', in the caller's transaction), or, past its timeout, ends with a
-- RecvTimeout error record. Not resolved: (false, NULL, NULL).
-- The caller holds the execution's locks. messages_unread_idx.
CREATE OR REPLACE FUNCTION {schema}.resolve_wait_v1(p_id text, p_waiting jsonb, p_timer timestamptz)
RETURNS TABLE (resolved boolean, output text, error jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_message record;
    v_timeout timestamptz := (p_waiting->>'timeout_at')::timestamptz;
BEGIN
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

-- Wakes the due executions p_ids, which the caller has locked (advisory, then row): each
-- wait is resolved (a sleep's or a receive's step row written with the outcome: a receive
-- consumes its message here; a wait for another execution writes nothing, its replay reads
-- the outcome), and the execution is RUNNING again, owned by p_owner at the next epoch, with
-- everything needed to replay it. A wait that cannot be resolved after all (its message
-- went to another receive) goes back to waiting for its timeout. Not a recovery.
CREATE OR REPLACE FUNCTION {schema}.wake_v1(p_owner text, p_ids text[])
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
        SELECT e.id, e.epoch, e.wake_at, e.waiting FROM {schema}.executions e
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
        UPDATE {schema}.executions
           SET status = 'RUNNING', owner = p_owner, epoch = v_row.epoch + 1, wake_at = NULL,
               waiting = NULL, waits_for = NULL, updated_at = now()
         WHERE id = v_row.id;
        INSERT INTO {schema}.logs (execution_id, event, actor, seq, details)
        VALUES (v_row.id, 'execution_woken', p_owner, (v_row.waiting->>'seq')::integer,
                jsonb_build_object('kind', v_row.waiting->>'kind', 'epoch', v_row.epoch + 1,
                                   'due_at', v_row.wake_at,
                                   'timed_out', v_outcome.error IS NOT NULL));
        v_woken := v_woken || v_row.id;
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
CREATE OR REPLACE FUNCTION {schema}.cancel_tree_v1(p_id text, p_actor text, p_reason text, p_error jsonb)
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
