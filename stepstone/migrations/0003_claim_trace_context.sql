-- A claim also returns the execution's stored trace context, so that a resumed run
-- continues the trace of the run it takes over. (The functions' result types change, so
-- they are dropped and created again.)

DROP FUNCTION {schema}.sweep(text, text[], text[], integer);
DROP FUNCTION {schema}.claim(text, text[], text);

-- Takes over executions the caller has locked (p_ids): new owner, next epoch, one more
-- recovery, an audit entry, and everything needed to replay them. executions_pkey,
-- steps_pkey, states_pkey.
CREATE FUNCTION {schema}.claim(p_owner text, p_ids text[], p_reason text)
RETURNS TABLE (id text, workflow_name text, workflow_version text, inputs text, epoch bigint,
               recoveries integer, steps json, state json, trace_context jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH previous AS (
        SELECT x.id, x.owner, x.epoch FROM {schema}.executions x
         WHERE x.id = ANY (p_ids) AND x.status = 'RUNNING'
    ), claimed AS (
        UPDATE {schema}.executions e
           SET owner = p_owner, epoch = e.epoch + 1, recoveries = e.recoveries + 1,
               updated_at = now()
          FROM previous p
         WHERE e.id = p.id
     RETURNING e.id, e.workflow_name, e.workflow_version, e.inputs, e.epoch, e.recoveries,
               e.trace_context, p.owner AS previous_owner, p.epoch AS previous_epoch
    ), logged AS (
        INSERT INTO {schema}.logs (execution_id, event, actor, details)
        SELECT c.id, 'execution_resumed', p_owner,
               jsonb_build_object(
                   'reason', CASE WHEN c.previous_owner IS NULL THEN 'released' ELSE p_reason END,
                   'epoch', c.epoch, 'previous_owner', c.previous_owner,
                   'previous_epoch', c.previous_epoch)
          FROM claimed c
    )
    SELECT c.id, c.workflow_name, c.workflow_version, c.inputs, c.epoch, c.recoveries,
           (SELECT coalesce(json_agg(json_build_array(s.seq, s.name, s.kind, s.output, s.error)
                                     ORDER BY s.seq), '[]')
              FROM {schema}.steps s WHERE s.execution_id = c.id),
           (SELECT coalesce(json_object_agg(st.key, st.value), '{{}}')
              FROM {schema}.states st WHERE st.execution_id = c.id),
           c.trace_context
      FROM claimed c;
END $$;

-- One sweep, one statement: claim up to p_limit running executions whose owner's lease
-- expired (or that have no owner) and whose definition the caller runs, with FOR UPDATE
-- SKIP LOCKED so concurrent sweepers split the work; also list (up to 100) expired ones
-- the caller cannot run. executors_pkey, executions_running_owner_idx.
CREATE FUNCTION {schema}.sweep(p_owner text, p_names text[], p_versions text[], p_limit integer)
RETURNS TABLE (kind text, id text, workflow_name text, workflow_version text, inputs text,
               epoch bigint, recoveries integer, steps json, state json, trace_context jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_expired text[];
    v_ids     text[];
BEGIN
    SELECT coalesce(array_agg(x.id), '{{}}') INTO v_expired
      FROM {schema}.executors x
     WHERE x.id <> p_owner AND x.heartbeat_at < now() - make_interval(secs => x.lease_seconds);
    IF p_limit > 0 THEN
        v_ids := ARRAY(
                   SELECT e.id FROM {schema}.executions e
                    WHERE e.status = 'RUNNING' AND e.owner = ANY (v_expired)
                      AND (e.workflow_name, e.workflow_version) IN
                          (SELECT n, v FROM unnest(p_names, p_versions) AS r (n, v))
                    LIMIT p_limit
                      FOR NO KEY UPDATE SKIP LOCKED)
              || ARRAY(
                   SELECT e.id FROM {schema}.executions e
                    WHERE e.status = 'RUNNING' AND e.owner IS NULL
                      AND (e.workflow_name, e.workflow_version) IN
                          (SELECT n, v FROM unnest(p_names, p_versions) AS r (n, v))
                    LIMIT p_limit
                      FOR NO KEY UPDATE SKIP LOCKED);
        IF cardinality(v_ids) > 0 THEN
            RETURN QUERY SELECT 'claimed'::text, c.* FROM {schema}.claim(p_owner, v_ids, 'expired_lease') c;
        END IF;
    END IF;
    RETURN QUERY
    SELECT 'unclaimable'::text, e.id, e.workflow_name, e.workflow_version, NULL::text,
           NULL::bigint, NULL::integer, NULL::json, NULL::json, NULL::jsonb
      FROM {schema}.executions e
     WHERE e.status = 'RUNNING' AND (e.owner = ANY (v_expired) OR e.owner IS NULL)
       AND (e.workflow_name, e.workflow_version) NOT IN
           (SELECT n, v FROM unnest(p_names, p_versions) AS r (n, v))
     LIMIT 100;
END $$;
