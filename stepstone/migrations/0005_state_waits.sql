-- Waiting for another execution's state: stepstone.wait_state(workflow_id, key, timeout).
--
-- A workflow that waits for a key of another execution's state records the wait like a
-- receive (wait_v2: kind 'wait_state', waits_for = the target, due at the timeout): if the
-- key is committed already, the wait's step row holds its value at once. Otherwise a state
-- write of the target that commits the key (write_state_v1, in the writer's transaction)
-- makes the waiter due and tells executors ('due:' || id); the target's end makes it due
-- too (wake_waiters_v1, 0004), and resolves it as an error if the key never came. The
-- sweep's wake resolves the wait (resolve_state_wait_v1) and writes its step row: its
-- replay returns the value, or raises the recorded StateTimeout, StateNotSet or
-- WorkflowNotFound.
--
-- Lock order as in 0002: advisory locks (in key order), then rows. wait_v2 takes the
-- target's advisory lock exclusive, which every step commit of the target takes shared:
-- the check of the target's state and the waiter's WAITING row are serialized with the
-- target's state writes, so a key committed meanwhile is never missed.
--
-- {schema} is replaced by the configured schema, quoted as an identifier.

ALTER TABLE {schema}.steps DROP CONSTRAINT steps_kind_check;
ALTER TABLE {schema}.steps ADD CONSTRAINT steps_kind_check
    CHECK (kind IN ('step', 'transaction', 'workflow', 'sleep', 'recv', 'send', 'wait_state'));

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

-- resolve_wait_v1 (0004), and a wait for another execution's state.
CREATE OR REPLACE FUNCTION {schema}.resolve_wait_v1(p_id text, p_waiting jsonb, p_timer timestamptz)
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

-- write_state_v1 (0002), and executions WAITING for one of the keys written are made due
-- (executions_waits_for_idx: one probe of an index that holds only waiting executions).
CREATE OR REPLACE FUNCTION {schema}.write_state_v1(
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
