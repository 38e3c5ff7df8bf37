-- Start and dispatch times are the moment of the dispatch.
--
-- dispatch_v1 runs as one statement that first waits for each queue's row lock; now() is
-- the start of its transaction, before that wait. A run that ended while the dispatcher
-- waited (and whose end freed the slot the dispatcher then counts) has a finished_at after
-- that instant, so the stored intervals of a queue's executions seemed to overlap beyond
-- its concurrency although the count under the lock never exceeded it. dispatch_v1 is
-- replaced (same signature and result): started_at and dispatched_at are
-- clock_timestamp(), read when the row is claimed, after the lock was taken.
--
-- {schema} is replaced by the configured schema, quoted as an identifier.

CREATE OR REPLACE FUNCTION {schema}.dispatch_v1(
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
                   started_at = coalesce(e.started_at, clock_timestamp()),
                   dispatched_at = coalesce(e.dispatched_at, clock_timestamp()),
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
