-- Queues: work handed from any process to the workers that serve the queue, with exact
-- limits.
--
-- A queue is a row of `queues`: its name and limits (global concurrency, a rate limit of
-- starts per period, concurrency per partition key), written by the runtimes that declare
-- it. Enqueuing (enqueue_v1) writes an execution ENQUEUED, with no owner, in the caller's
-- transaction if it likes, and tells dispatchers ('enqueued:' || queue, a hint). A
-- dispatcher claims startable executions of all its queues in one statement
-- (dispatch_v1): per queue it locks the queue's row, so that the dispatchers of a queue
-- take turns, counts what runs and what started within the rate period under that lock,
-- and makes at most the free slots RUNNING, owned by it, in priority order (lower first;
-- FIFO within a priority by enqueue order), skipping executions not yet due (a delay)
-- and partitions at their cap. The number of RUNNING executions of a queue therefore
-- never exceeds its concurrency: only a dispatch makes a queued execution RUNNING, and a
-- queued execution woken from a wait goes back to ENQUEUED (wake_v1 below) to take a slot
-- again, since a WAITING execution holds none. A takeover of a dead worker's execution
-- leaves it RUNNING: the count does not change.
--
-- A dedup key is unique among the unfinished executions of its queue
-- (executions_dedup_idx: ENQUEUED, RUNNING or WAITING), so it frees itself when its
-- execution ends.
--
-- Lock order: the queue rows (in name order), then executions rows (SKIP LOCKED), then
-- advisory locks are not needed: an ENQUEUED execution has no owner to fence and no
-- step commits.
--
-- {schema} is replaced by the configured schema, quoted as an identifier.

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

-- The queue of an execution, and what orders and limits its start.
ALTER TABLE {schema}.executions ADD COLUMN queue_name text;
ALTER TABLE {schema}.executions ADD COLUMN priority integer NOT NULL DEFAULT 0;
-- Enqueue order (FIFO within a priority).
ALTER TABLE {schema}.executions ADD COLUMN queue_seq bigint;
ALTER TABLE {schema}.executions ADD COLUMN dedup_key text;
ALTER TABLE {schema}.executions ADD COLUMN partition_key text;
-- Not started before this time (enqueue with a delay).
ALTER TABLE {schema}.executions ADD COLUMN not_before timestamptz;
-- The deadline's length of an enqueued execution: its deadline is set when it starts.
ALTER TABLE {schema}.executions ADD COLUMN timeout_seconds double precision;
-- When a dispatcher first started it (the rate limit counts these).
ALTER TABLE {schema}.executions ADD COLUMN dispatched_at timestamptz;

CREATE SEQUENCE {schema}.queue_seq;

-- The startable executions of a queue, in dispatch order.
CREATE INDEX executions_enqueued_idx ON {schema}.executions (queue_name, priority, queue_seq)
    WHERE status = 'ENQUEUED';
-- The earliest delayed start of a queue (the dispatcher sleeps until then).
CREATE INDEX executions_delayed_idx ON {schema}.executions (queue_name, not_before)
    WHERE status = 'ENQUEUED' AND not_before IS NOT NULL;
-- What runs in a queue (and per partition), counted under the queue's lock.
CREATE INDEX executions_queue_running_idx ON {schema}.executions (queue_name, partition_key)
    WHERE status = 'RUNNING' AND queue_name IS NOT NULL;
-- Starts within the rate period.
CREATE INDEX executions_dispatched_idx ON {schema}.executions (queue_name, dispatched_at)
    WHERE dispatched_at IS NOT NULL;
CREATE UNIQUE INDEX executions_dedup_idx ON {schema}.executions (queue_name, dedup_key)
    WHERE dedup_key IS NOT NULL AND status IN ('ENQUEUED', 'RUNNING', 'WAITING');

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
                   started_at = coalesce(e.started_at, now()),
                   dispatched_at = coalesce(e.dispatched_at, now()),
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

-- wake_v1 (0004), and a queued execution whose wait is over goes back to ENQUEUED (its
-- wait resolved, its step row written, no owner) for a dispatcher to start it again
-- within its queue's limits; dispatchers are told ('enqueued:' || queue). It is not
-- returned: only the executions woken to run here are.
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
