-- The step commit's fence no longer locks the execution row. A row lock is written to the
-- heap and the WAL, and the foreign key checks of the child tables took a second lock mode
-- on the same row (a MultiXact) in every step commit. Instead, the fence takes a shared
-- transaction-scoped advisory lock on the execution (memory only) and then reads the row;
-- every claim takes the exclusive lock first. A claim therefore waits for step commits in
-- flight, and a step commit that starts after a claim reads the claim's new owner and
-- epoch. The completion still locks the row, which it updates anyway. A transaction step
-- that raised its isolation above READ COMMITTED reads an older snapshot, so for it the
-- fence locks the row as before (and fails with a serialization error if a claim won).
--
-- The advisory lock key is (1937010533, hashtext(execution id)): a fixed class number for
-- stepstone, whatever the schema, and the execution id's hash (a collision only means a wait).
--
-- The child tables' foreign keys go: the fence already proves the execution exists, and
-- the purge deletes children explicitly.

ALTER TABLE {schema}.steps DROP CONSTRAINT steps_execution_id_fkey;
ALTER TABLE {schema}.states DROP CONSTRAINT states_execution_id_fkey;
ALTER TABLE {schema}.checkpoints DROP CONSTRAINT checkpoints_execution_id_fkey;
ALTER TABLE {schema}.logs DROP CONSTRAINT logs_execution_id_fkey;

CREATE OR REPLACE FUNCTION {schema}.fence(
    p_id text, p_owner text, p_epoch bigint, p_exclusive boolean DEFAULT false
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    found_owner  text;
    found_epoch  bigint;
    found_status text;
BEGIN
    IF p_exclusive THEN
        SELECT owner, epoch, status INTO found_owner, found_epoch, found_status
          FROM {schema}.executions WHERE id = p_id FOR NO KEY UPDATE;
    ELSIF current_setting('transaction_isolation') = 'read committed' THEN
        PERFORM pg_advisory_xact_lock_shared(1937010533, hashtext(p_id));
        -- A new statement, so a new snapshot: it sees any claim committed before the lock.
        SELECT owner, epoch, status INTO found_owner, found_epoch, found_status
          FROM {schema}.executions WHERE id = p_id;
    ELSE
        -- Under REPEATABLE READ or SERIALIZABLE the snapshot may predate a claim, so lock
        -- the row: a claim committed since the snapshot makes this fail (SQLSTATE 40001).
        SELECT owner, epoch, status INTO found_owner, found_epoch, found_status
          FROM {schema}.executions WHERE id = p_id FOR SHARE;
    END IF;
    IF found_owner IS DISTINCT FROM p_owner OR found_epoch IS DISTINCT FROM p_epoch
       OR found_status IS DISTINCT FROM 'RUNNING' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'SS001',
            MESSAGE = format('executor %s no longer owns execution %s at epoch %s',
                             p_owner, p_id, p_epoch),
            DETAIL = format('the execution has owner %s, epoch %s, status %s',
                            coalesce(found_owner, '(none)'), coalesce(found_epoch::text, '(none)'),
                            coalesce(found_status, '(no such execution)'));
    END IF;
END $$;

CREATE OR REPLACE FUNCTION {schema}.claim(p_owner text, p_ids text[], p_reason text)
RETURNS TABLE (id text, workflow_name text, workflow_version text, inputs text, epoch bigint,
               recoveries integer, steps json, state json, trace_context jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    -- The exclusive side of the fence: wait for step commits of these executions in
    -- flight, and make later ones see the new owner and epoch. Ordered, so that two
    -- claimers of overlapping sets cannot deadlock.
    PERFORM pg_advisory_xact_lock(1937010533, k)
       FROM (SELECT DISTINCT hashtext(x) AS k FROM unnest(p_ids) AS x) keys
      ORDER BY k;
    RETURN QUERY
    WITH previous AS (
        SELECT x.id, x.owner, x.epoch FROM {schema}.executions x
         WHERE x.id = ANY (p_ids) AND x.status = 'RUNNING'
    ), claimed AS (
        UPDATE {schema}.executions e
           SET owner = p_owner, epoch = e.epoch + 1, recoveries = e.recoveries + 1,
               updated_at = now()
          FROM previous p
         WHERE e.id = p.id AND e.status = 'RUNNING'
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

-- The sweep claims at most p_limit executions in all, and looks for expired executions it
-- cannot run only once it has run out of ones it can (so that a large claimable backlog is
-- not scanned twice on every sweep).
CREATE OR REPLACE FUNCTION {schema}.sweep(p_owner text, p_names text[], p_versions text[], p_limit integer)
RETURNS TABLE (kind text, id text, workflow_name text, workflow_version text, inputs text,
               epoch bigint, recoveries integer, steps json, state json, trace_context jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_expired text[];
    v_ids     text[] := '{{}}';
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
                      FOR NO KEY UPDATE SKIP LOCKED);
        IF cardinality(v_ids) < p_limit THEN
            v_ids := v_ids || ARRAY(
                   SELECT e.id FROM {schema}.executions e
                    WHERE e.status = 'RUNNING' AND e.owner IS NULL
                      AND (e.workflow_name, e.workflow_version) IN
                          (SELECT n, v FROM unnest(p_names, p_versions) AS r (n, v))
                    LIMIT p_limit - cardinality(v_ids)
                      FOR NO KEY UPDATE SKIP LOCKED);
        END IF;
        IF cardinality(v_ids) > 0 THEN
            RETURN QUERY SELECT 'claimed'::text, c.* FROM {schema}.claim(p_owner, v_ids, 'expired_lease') c;
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
