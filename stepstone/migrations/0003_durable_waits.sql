-- Durable waits and mailboxes.
--
-- A workflow that waits (a sleep, a receive) records the wait in one fenced commit: if it
-- is satisfied at once (the sleep is over, a message is in the mailbox) the wait's step row
-- is written with its outcome; otherwise the execution becomes WAITING, with no owner, a
-- new epoch, the time it is due (wake_at: the timer, or the receive's timeout) and what it
-- waits for (waiting). A WAITING execution holds no executor, no thread and no connection.
-- Whatever satisfies the wait makes it due (a send sets wake_at to now()) and notifies
-- executors ('due:' || id on the channel 'stepstone', a hint). The sweep of an executor
-- that runs its workflow claims due executions (sweep_v2): it resolves the wait in the
-- same transaction (a message is consumed there, and its receipt recorded as the wait's
-- step row: exactly once), and the executor replays the workflow, where the wait returns
-- its outcome. A wake is not a recovery: no recovery is counted.
--
-- Times come from the database clock (now()), never from the executors' hosts.
--
-- Lock order as in 0002: the advisory lock of an execution, then its row. Suspending and
-- sending take the advisory lock exclusive (they change or read-then-change the execution
-- a concurrent suspend or claim also changes), so a send and a suspend of the same
-- execution are serialized: either the send comes first and the suspend finds its message,
-- or the suspend comes first and the send finds it WAITING and makes it due.
--
-- {schema} is replaced by the configured schema, quoted as an identifier.

ALTER TABLE {schema}.executions DROP CONSTRAINT executions_status_check;
ALTER TABLE {schema}.executions ADD CONSTRAINT executions_status_check
    CHECK (status IN ('ENQUEUED', 'RUNNING', 'WAITING', 'SUCCEEDED', 'FAILED', 'CANCELLED'));
-- When a WAITING execution is due, and what it waits for: the kind ("sleep" or "recv"),
-- its position (seq) and name, the topic, the timeout and when the wait began.
ALTER TABLE {schema}.executions ADD COLUMN wake_at timestamptz;
ALTER TABLE {schema}.executions ADD COLUMN waiting jsonb;
-- The sweep's due executions, earliest first; also the next due time.
-- The waits of one workflow version by due time: the sweep looks up, per workflow it
-- runs, the due ones and the next due time, one probe each however many executions wait
-- (of its workflows or of others). Not a plain (wake_at) index: with one, the planner
-- walks it past every wait of other workflows to find the first of its own.
CREATE INDEX executions_waiting_idx ON {schema}.executions
    (workflow_name, workflow_version, wake_at) WHERE status = 'WAITING';
-- When the execution must have ended (with_options(timeout=...)); past it, a sweep ends
-- it CANCELLED with a WorkflowTimedOut error record, and its unfinished descendants too.
ALTER TABLE {schema}.executions ADD COLUMN deadline_at timestamptz;
CREATE INDEX executions_deadline_idx ON {schema}.executions (deadline_at)
    WHERE deadline_at IS NOT NULL AND status IN ('ENQUEUED', 'RUNNING', 'WAITING');

ALTER TABLE {schema}.steps DROP CONSTRAINT steps_kind_check;
ALTER TABLE {schema}.steps ADD CONSTRAINT steps_kind_check
    CHECK (kind IN ('step', 'transaction', 'workflow', 'sleep', 'recv', 'send'));

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
    PRIMARY KEY (execution_id, topic, id)
);
CREATE UNIQUE INDEX messages_idempotency_idx ON {schema}.messages (execution_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX messages_unread_idx ON {schema}.messages (execution_id, topic, id)
    WHERE received_seq IS NULL;

-- The outcome of a pending wait of execution p_id, if it has one now: a sleep is over once
-- its time has come; a receive takes the first unread message of its topic (marking it
-- received by the receive at p_waiting->>'seq', in the caller's transaction), or, past its
-- timeout, ends with a RecvTimeout error record. Not resolved: (false, NULL, NULL).
-- The caller holds the execution's locks. messages_unread_idx.
CREATE FUNCTION {schema}.resolve_wait_v1(p_id text, p_waiting jsonb, p_timer timestamptz)
RETURNS TABLE (resolved boolean, output text, error jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_message record;
    v_timeout timestamptz := (p_waiting->>'timeout_at')::timestamptz;
BEGIN
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
-- wait is resolved (its step row written with the outcome: a receive consumes its message
-- here), and the execution is RUNNING again, owned by p_owner at the next epoch, with
-- everything needed to replay it. A wait that cannot be resolved after all (its message
-- went to another receive) goes back to waiting for its timeout. Not a recovery.
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
        INSERT INTO {schema}.steps
               (execution_id, seq, name, kind, output, error, attempts, started_at, finished_at)
        VALUES (v_row.id, (v_row.waiting->>'seq')::integer, v_row.waiting->>'name',
                v_row.waiting->>'kind', v_outcome.output, v_outcome.error, 1,
                coalesce((v_row.waiting->>'started_at')::timestamptz, now()), now());
        UPDATE {schema}.executions
           SET status = 'RUNNING', owner = p_owner, epoch = v_row.epoch + 1, wake_at = NULL,
               waiting = NULL, updated_at = now()
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
-- its next step body, and its next commit fails with SS002). p_error, if given, is stored
-- as the named execution's error record (why it was cancelled: a timeout), and p_reason
-- goes into its audit entry. Returns the status the named execution had (NULL: none);
-- anything but RUNNING, ENQUEUED or WAITING is left as it was.
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
               waiting = NULL, error = CASE WHEN id = p_id THEN p_error ELSE error END
         WHERE id = v_row.id;
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
