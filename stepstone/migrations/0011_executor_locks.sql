-- A dead executor is known at once, not after its lease.
--
-- Each executor holds a session-level advisory lock on its id for the life of its process
-- (its heartbeat connection); PostgreSQL releases it the moment that connection dies. The
-- key is stored with the executor (lock_key) when it registers, so that a sweep can test
-- it: if another session can take the lock, no live process holds the executor id, and
-- its RUNNING executions are claimed at once, without waiting for its heartbeat to age
-- past its lease (as for an expired lease: reason 'expired_lease', one recovery each). The test takes the lock for the sweep's own
-- transaction only (pg_try_advisory_xact_lock), so a restarting executor gets its id a
-- moment later. Executors registered before this migration (no lock_key) are presumed
-- dead by their lease alone.
--
-- {schema} is replaced by the configured schema, quoted as an identifier.

-- The key of the session-level advisory lock the executor holds on its id.
ALTER TABLE {schema}.executors ADD COLUMN lock_key bigint;

-- sweep_v1 (0002), and the executors whose lock is free are dead as those whose lease
-- expired. Same signature and result. executors_pkey, executions_running_owner_idx.
CREATE OR REPLACE FUNCTION {schema}.sweep_v1(p_owner text, p_names text[], p_versions text[], p_limit integer)
RETURNS TABLE (kind text, id text, workflow_name text, workflow_version text, inputs text,
               epoch bigint, recoveries integer, steps json, state json, trace_context jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_expired   text[];
    v_gone      text[];
    v_ids       text[] := '{{}}';
    v_candidate record;
BEGIN
    SELECT coalesce(array_agg(x.id), '{{}}') INTO v_expired
      FROM {schema}.executors x
     WHERE x.id <> p_owner AND x.heartbeat_at < now() - make_interval(secs => x.lease_seconds);
    -- Only executors that own running executions are tested: few, and each test is one
    -- lock attempt.
    SELECT coalesce(array_agg(x.id), '{{}}') INTO v_gone
      FROM {schema}.executors x
     WHERE x.id <> p_owner AND x.id <> ALL (v_expired) AND x.lock_key IS NOT NULL
       AND EXISTS (SELECT 1 FROM {schema}.executions e
                    WHERE e.status = 'RUNNING' AND e.owner = x.id)
       AND pg_try_advisory_xact_lock(x.lock_key);
    v_expired := v_expired || v_gone;
    IF p_limit > 0 THEN
        -- Executions of dead owners first, then released ones (no owner).
        FOR v_candidate IN
            SELECT e.id, e.owner FROM {schema}.executions e
             WHERE e.status = 'RUNNING' AND e.owner = ANY (v_expired)
               AND (e.workflow_name, e.workflow_version) IN
                   (SELECT n, v FROM unnest(p_names, p_versions) AS r (n, v))
            UNION ALL
            SELECT e.id, e.owner FROM {schema}.executions e
             WHERE e.status = 'RUNNING' AND e.owner IS NULL
               AND (e.workflow_name, e.workflow_version) IN
                   (SELECT n, v FROM unnest(p_names, p_versions) AS r (n, v))
        LOOP
            CONTINUE WHEN NOT pg_try_advisory_xact_lock(1937010533, hashtext(v_candidate.id));
            PERFORM 1 FROM {schema}.executions e
              WHERE e.id = v_candidate.id AND e.status = 'RUNNING'
                AND e.owner IS NOT DISTINCT FROM v_candidate.owner
                FOR NO KEY UPDATE SKIP LOCKED;
            CONTINUE WHEN NOT FOUND;
            v_ids := v_ids || v_candidate.id;
            EXIT WHEN cardinality(v_ids) >= p_limit;
        END LOOP;
        IF cardinality(v_ids) > 0 THEN
            -- claim_v1 takes the same locks again: this transaction holds them already.
            RETURN QUERY SELECT 'claimed'::text, c.*
                           FROM {schema}.claim_v1(p_owner, v_ids, 'expired_lease') c;
        END IF;
    END IF;
    IF cardinality(v_ids) < p_limit OR p_limit = 0 THEN
        RETURN QUERY
        SELECT 'unclaimable'::text, e.id, e.workflow_name, e.workflow_version, NULL::text,
               NULL::bigint, NULL::integer, NULL::json, NULL::json, NULL::jsonb
          FROM {schema}.executions e
         WHERE e.status = 'RUNNING' AND (e.owner = ANY (v_expired) OR e.owner IS NULL)
           AND (e.workflow_name, e.workflow_version) NOT IN
               (SELECT n, v FROM unnest(p_names, p_versions) AS r (n, v))
         LIMIT 100;
    END IF;
END $$;
