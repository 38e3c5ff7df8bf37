-- How late a wake is, by the database's clock.
--
-- sweep_v3 is sweep_v2 with two more columns on its 'woken' rows: `overdue`, the seconds
-- since the wait was due (now() - wake_at, both by this server's clock, read under the row
-- lock just before the wake), and `waited`, what the execution waited for (the `waiting`
-- value the wake clears: kind, seq, topic...). An executor adds the time it takes to start
-- the woken run to `overdue` (stepstone.wake.latency), never comparing its own clock with
-- the server's. sweep_v2 stays for executors of 0003/0004 during a rolling deploy.
--
-- {schema} is replaced by the configured schema, quoted as an identifier.

-- sweep_v2, with how overdue each woken execution was and what it waited for.
-- executions_waiting_idx, executions_deadline_idx, executors_pkey,
-- executions_running_owner_idx (as sweep_v2).
CREATE FUNCTION {schema}.sweep_v3(p_owner text, p_names text[], p_versions text[], p_limit integer)
RETURNS TABLE (kind text, id text, workflow_name text, workflow_version text, inputs text,
               epoch bigint, recoveries integer, steps json, state json, trace_context jsonb,
               next_wake_in double precision, overdue double precision, waited jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_due       text[] := '{{}}';
    v_overdue   double precision[] := '{{}}';
    v_waited    jsonb[] := '{{}}';
    v_candidate record;
    v_locked    record;
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
            SELECT e.wake_at, e.waiting INTO v_locked FROM {schema}.executions e
             WHERE e.id = v_candidate.id AND e.status = 'WAITING' AND e.wake_at <= now()
               FOR NO KEY UPDATE SKIP LOCKED;
            CONTINUE WHEN NOT FOUND;
            v_due := v_due || v_candidate.id;
            v_overdue := v_overdue || extract(epoch FROM now() - v_locked.wake_at)::double precision;
            v_waited := v_waited || v_locked.waiting;
            EXIT WHEN cardinality(v_due) >= p_limit;
        END LOOP;
        IF cardinality(v_due) > 0 THEN
            RETURN QUERY SELECT 'woken'::text, w.*, NULL::double precision, d.late, d.what
                           FROM {schema}.wake_v1(p_owner, v_due) w
                           JOIN unnest(v_due, v_overdue, v_waited) AS d (due_id, late, what)
                             ON d.due_id = w.id;
            v_left := p_limit - cardinality(v_due);
        END IF;
    END IF;
    RETURN QUERY SELECT s.*, NULL::double precision, NULL::double precision, NULL::jsonb
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
                   AND e.status IN ('ENQUEUED', 'RUNNING', 'WAITING'))) - now())::double precision,
           NULL::double precision, NULL::jsonb;
END $$;
