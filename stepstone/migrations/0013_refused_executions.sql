-- Executions an executor cannot run.
--
-- An executor that claims an execution whose inputs it cannot decode (by the workflow's
-- annotations: a type its code lacks, a value that no longer fits) does not fail it: it
-- refuses it (refuse_v1), handing it back with its id in the new column refused_by, for
-- another executor, or itself once its code is fixed and restarted, to run. sweep_v1 is
-- replaced (same signature and result): it no longer claims an execution the sweeping
-- executor refused. An executor forgets its refusals when it starts.
--
-- {schema} is replaced by the configured schema, quoted as an identifier.

-- The executors that refused the execution (NULL: none).
ALTER TABLE {schema}.executions ADD COLUMN refused_by text[];
-- An executor's refusals, looked up when it starts.
CREATE INDEX executions_refused_idx ON {schema}.executions (id) WHERE refused_by IS NOT NULL;

-- One sweep, one statement: claim up to p_limit running executions whose owner's lease
-- expired (then, if there is room, ones that have no owner) and whose definition the
-- caller runs and has not refused (see 0013_refused_executions.sql); once out of those,
-- also list (up to 100) expired ones the caller cannot run.
-- The sweep never waits for a lock: per candidate, in a loop that stops at the limit, it
-- tries the advisory lock (a candidate whose lock is taken, by a step commit in flight or
-- a cancel, is left for a later sweep), then locks the row with SKIP LOCKED and checks
-- under both locks that the candidate is still RUNNING with the owner it was found with;
-- concurrent sweepers split the work. Trying the advisory lock only inside the loop keeps
-- the sweep from taking locks on candidates it does not claim. executors_pkey,
-- executions_running_owner_idx.
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
               AND (e.refused_by IS NULL OR p_owner <> ALL (e.refused_by))
            UNION ALL
            SELECT e.id, e.owner FROM {schema}.executions e
             WHERE e.status = 'RUNNING' AND e.owner IS NULL
               AND (e.workflow_name, e.workflow_version) IN
                   (SELECT n, v FROM unnest(p_names, p_versions) AS r (n, v))
               AND (e.refused_by IS NULL OR p_owner <> ALL (e.refused_by))
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

-- Hands back a RUNNING execution that p_owner owns at p_epoch but cannot run (its inputs
-- cannot be decoded there), fenced like release_v1: no owner, the next epoch, p_owner added
-- to refused_by (its sweeps pass the execution over until it restarts), an audit entry
-- 'execution_refused' with p_reason, and a notification so that another executor claims it
-- at once. Not an interruption: no recovery is counted. An execution of a queue stays
-- RUNNING too (re-enqueued, the same worker's dispatcher would take it again). False,
-- changing nothing, if it is not p_owner's at p_epoch. Locks: the advisory lock
-- (exclusive), then the row. executions_pkey.
CREATE FUNCTION {schema}.refuse_v1(p_id text, p_owner text, p_epoch bigint, p_reason text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_epoch bigint;
BEGIN
    PERFORM {schema}.lock_executions_v1(ARRAY[p_id]);
    UPDATE {schema}.executions
       SET owner = NULL, epoch = epoch + 1,
           refused_by = array_append(array_remove(coalesce(refused_by, '{{}}'), p_owner), p_owner),
           updated_at = now()
     WHERE id = p_id AND status = 'RUNNING' AND owner = p_owner AND epoch = p_epoch
    RETURNING epoch INTO v_epoch;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO {schema}.logs (execution_id, event, actor, details)
    VALUES (p_id, 'execution_refused', p_owner,
            jsonb_build_object('reason', p_reason, 'epoch', v_epoch, 'previous_epoch', p_epoch));
    PERFORM pg_notify('stepstone', 'due:' || p_id);
    RETURN true;
END $$;
