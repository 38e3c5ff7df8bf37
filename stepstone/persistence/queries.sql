-- Every statement the Store sends, one named block each. {schema} is the quoted schema;
-- %(name)s are bound parameters. Beside each hot query: the index it relies on.

-- name: save_workflow
INSERT INTO {schema}.workflows AS w (name, version, fingerprint)
VALUES (%(name)s, %(version)s, %(fingerprint)s)
    ON CONFLICT (name, version) DO UPDATE
   SET fingerprint = EXCLUDED.fingerprint, last_seen = now()
RETURNING w.name, w.version, w.fingerprint, w.first_seen, w.last_seen;

-- name: load_workflow
SELECT name, version, fingerprint, first_seen, last_seen
  FROM {schema}.workflows
 WHERE name = %(name)s AND (%(version)s::text IS NULL OR version = %(version)s::text)
 ORDER BY last_seen DESC, version DESC
 LIMIT 1;

-- name: register_executor
INSERT INTO {schema}.executors AS x (id, hostname, pid)
VALUES (%(id)s, %(hostname)s, %(pid)s)
    ON CONFLICT (id) DO UPDATE
   SET hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, started_at = now(), heartbeat_at = now();

-- name: start_execution
-- Hot (one per start). executions_pkey.
SELECT created, workflow_name, status, owner, epoch, output, error
  FROM {schema}.start_execution(%(id)s, %(name)s, %(version)s, %(inputs)s, %(owner)s,
                                %(parent)s, %(trace)s, %(attributes)s);

-- name: commit_step
-- Hot (one per step). executions_pkey for the fence, steps_pkey for the insert.
SELECT {schema}.commit_step(%(id)s, %(owner)s, %(epoch)s, %(seq)s, %(name)s, %(kind)s,
                            %(output)s, %(error)s, %(attempts)s, %(started_at)s,
                            %(finished_at)s, %(state)s, %(deleted)s, %(logs)s);

-- name: finish_execution
-- Hot (one per completion). executions_pkey.
SELECT {schema}.finish_execution(%(id)s, %(owner)s, %(epoch)s, %(status)s, %(output)s,
                                 %(error)s, %(seq)s, %(state)s, %(deleted)s, %(details)s);

-- name: update_state
-- executions_pkey for the fence, states_pkey and checkpoints_pkey for the writes.
SELECT {schema}.fence(%(id)s, %(owner)s, %(epoch)s),
       {schema}.write_state(%(id)s, %(seq)s, %(state)s, %(deleted)s);

-- name: save_checkpoint
-- executions_pkey for the fence, checkpoints_pkey for the upsert.
WITH fenced AS (SELECT {schema}.fence(%(id)s, %(owner)s, %(epoch)s))
INSERT INTO {schema}.checkpoints (execution_id, seq, state)
SELECT %(id)s, %(seq)s, %(state)s FROM fenced
    ON CONFLICT (execution_id, seq) DO UPDATE SET state = EXCLUDED.state, created_at = now();

-- name: recover_from_checkpoint
-- checkpoints_pkey (execution_id, seq), read backwards from the position asked for.
SELECT seq, state
  FROM {schema}.checkpoints
 WHERE execution_id = %(id)s AND seq <= %(seq)s
 ORDER BY seq DESC
 LIMIT 1;

-- name: claim_own
-- Resume an execution this executor owns (after a restart, or when called again with its
-- id): bump the epoch so that any older run of it is fenced out, record the resumption and
-- return the inputs with every recorded step and the committed state, in one statement. executions_pkey, steps_pkey.
WITH previous AS (
    SELECT id, owner, epoch, status FROM {schema}.executions
     WHERE id = %(id)s
       FOR NO KEY UPDATE
), claimed AS (
    UPDATE {schema}.executions e
       SET epoch = e.epoch + 1, updated_at = now()
      FROM previous p
     WHERE e.id = p.id AND p.status = 'RUNNING' AND p.owner = %(owner)s
 RETURNING e.id, e.workflow_name, e.workflow_version, e.inputs, e.epoch, p.owner AS previous_owner,
           p.epoch AS previous_epoch
), logged AS (
    INSERT INTO {schema}.logs (execution_id, event, actor, details)
    SELECT c.id, 'execution_resumed', %(owner)s,
           jsonb_build_object('epoch', c.epoch, 'previous_owner', c.previous_owner,
                              'previous_epoch', c.previous_epoch)
      FROM claimed c
)
SELECT c.workflow_name, c.workflow_version, c.inputs, c.epoch,
       (SELECT coalesce(json_agg(json_build_array(s.seq, s.name, s.kind, s.output, s.error)
                                 ORDER BY s.seq), '[]')
          FROM {schema}.steps s WHERE s.execution_id = c.id),
       (SELECT coalesce(json_object_agg(st.key, st.value), '{{}}')
          FROM {schema}.states st WHERE st.execution_id = c.id)
  FROM claimed c;

-- name: get_execution
-- executions_pkey.
SELECT id, workflow_name, workflow_version, status, inputs, output, error, owner, epoch,
       parent_id, attributes, created_at, updated_at, started_at, finished_at
  FROM {schema}.executions
 WHERE id = %(id)s;

-- name: get_status
-- executions_pkey.
SELECT status, output, error FROM {schema}.executions WHERE id = %(id)s;

-- name: get_state
-- states_pkey (execution_id, key).
SELECT key, value FROM {schema}.states WHERE execution_id = %(id)s ORDER BY key;

-- name: list_steps
-- steps_pkey (execution_id, seq).
SELECT execution_id, seq, name, kind, output, error, attempts, started_at, finished_at
  FROM {schema}.steps
 WHERE execution_id = %(id)s
 ORDER BY seq;

-- name: list_logs
-- logs_pkey (execution_id, id).
SELECT execution_id, id, at, event, actor, seq, details
  FROM {schema}.logs
 WHERE execution_id = %(id)s
 ORDER BY id;

-- name: schema_version
SELECT max(version) FROM {schema}.schema_migrations;
