-- Every statement the Store sends, one named block each. {schema} is the quoted schema;
-- %(name)s are bound parameters. Beside each hot query: the index it relies on.

-- name: save_workflow
INSERT INTO {schema}.workflows AS w (name, version, fingerprint)
VALUES (%(name)s, %(version)s, %(fingerprint)s)
    ON CONFLICT (name, version) DO UPDATE
   SET fingerprint = EXCLUDED.fingerprint, last_seen = now()
RETURNING w.name, w.version, w.fingerprint, w.first_seen, w.last_seen;

-- name: register_workflow
-- save_workflow, and what the registration meets: the fingerprint registered before it, and
-- the unfinished executions of the version that started with another fingerprint (how many,
-- their fingerprints, the ten oldest ids). The CTEs see the rows as they were before the
-- upsert. workflows_pkey; executions_waiting_idx and executions_status_created_idx for the
-- unfinished executions (as health_counts).
WITH previous AS (
    SELECT fingerprint FROM {schema}.workflows
     WHERE name = %(name)s AND version = %(version)s
), saved AS (
    INSERT INTO {schema}.workflows AS w (name, version, fingerprint)
    VALUES (%(name)s, %(version)s, %(fingerprint)s)
        ON CONFLICT (name, version) DO UPDATE
       SET fingerprint = EXCLUDED.fingerprint, last_seen = now()
    RETURNING w.name, w.version, w.fingerprint, w.first_seen, w.last_seen
), changed AS (
    SELECT e.id, e.fingerprint, e.created_at
      FROM {schema}.executions e
     WHERE e.status IN ('ENQUEUED', 'RUNNING', 'WAITING')
       AND e.workflow_name = %(name)s AND e.workflow_version = %(version)s
       AND e.fingerprint <> %(fingerprint)s
)
SELECT saved.name, saved.version, saved.fingerprint, saved.first_seen, saved.last_seen,
       (SELECT fingerprint FROM previous),
       (SELECT count(*) FROM changed),
       (SELECT coalesce(array_agg(DISTINCT fingerprint ORDER BY fingerprint), '{{}}') FROM changed),
       (SELECT coalesce(array_agg(id ORDER BY created_at, id), '{{}}')
          FROM (SELECT id, created_at FROM changed ORDER BY created_at, id LIMIT 10) oldest)
  FROM saved;

-- name: load_workflow
SELECT name, version, fingerprint, first_seen, last_seen
  FROM {schema}.workflows
 WHERE name = %(name)s AND (%(version)s::text IS NULL OR version = %(version)s::text)
 ORDER BY last_seen DESC, version DESC
 LIMIT 1;

-- name: register_executor
INSERT INTO {schema}.executors AS x (id, hostname, pid, lease_seconds, workflows, lock_key)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(lease)s, %(workflows)s, %(lock_key)s)
    ON CONFLICT (id) DO UPDATE
   SET hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, lease_seconds = EXCLUDED.lease_seconds,
       workflows = EXCLUDED.workflows, lock_key = EXCLUDED.lock_key, started_at = now(),
       heartbeat_at = now();

-- name: lock_executor
-- A session-level advisory lock on the executor id, held by the heartbeat connection for
-- the life of the process: a second live process with the same id cannot take it, and it
-- is released the moment the holder's connection dies.
SELECT pg_try_advisory_lock(%(key)s);

-- name: identify_database
-- Which database of which server a connection reaches: the pooled DSN and the session DSN
-- must reach the same one (advisory locks are per database and server).
SELECT current_database(), pg_postmaster_start_time();

-- name: describe_executor
SELECT hostname, pid, extract(epoch FROM now() - heartbeat_at) FROM {schema}.executors WHERE id = %(id)s;

-- name: heartbeat
-- One statement touching one row per interval, however many executions the executor runs.
-- executors_pkey.
UPDATE {schema}.executors SET heartbeat_at = now() WHERE id = %(id)s;

-- name: expire_executor
-- On shutdown: the lease ends now, so any execution left behind is claimable at once.
UPDATE {schema}.executors SET heartbeat_at = '-infinity' WHERE id = %(id)s;

-- name: claim_all_own
-- At launch: every running execution this executor id owned before it restarted, that it
-- runs and that is not running in this process. The ids are found without locks; claim_v1
-- takes their advisory locks, then their rows, and claims those this executor still owns.
-- executions_running_owner_idx.
SELECT id, workflow_name, workflow_version, inputs, epoch, recoveries, steps, state, trace_context
  FROM {schema}.claim_v1(%(owner)s, ARRAY(
         SELECT e.id FROM {schema}.executions e
          WHERE e.status = 'RUNNING' AND e.owner = %(owner)s
            AND (e.workflow_name, e.workflow_version) IN
                (SELECT n, v FROM unnest(%(names)s::text[], %(versions)s::text[]) AS r (n, v))
            AND e.id <> ALL (%(active)s::text[])), %(reason)s, true);

-- name: release_unregistered_own
-- Own running executions whose definition this executor lacks lose their owner, so that an
-- executor that has it claims them (see release_unregistered_v1).
-- executions_running_owner_idx.
SELECT id, workflow_name, workflow_version
  FROM {schema}.release_unregistered_v1(%(owner)s, %(names)s::text[], %(versions)s::text[]);

-- name: sweep
-- One statement per sweep (see sweep_v3): due waits (how overdue, and what each waited
-- for), expired leases, the next due time.
SELECT kind, id, workflow_name, workflow_version, inputs, epoch, recoveries, steps, state,
       trace_context, next_wake_in, overdue, waited
  FROM {schema}.sweep_v3(%(owner)s, %(names)s::text[], %(versions)s::text[], %(limit)s);

-- name: count_waiting
-- Not hot: once per metric collection (stepstone.executions.waiting). An index-only scan of
-- executions_waiting_idx (partial: WAITING rows only, workflow_name first).
SELECT workflow_name, count(*) FROM {schema}.executions
 WHERE status = 'WAITING'
 GROUP BY workflow_name;

-- name: wait
-- Hot (one per wait reached). A sleep, a receive or a wait for another execution's state:
-- done now, or the execution WAITING. executions_pkey, messages_unread_idx, states_pkey.
SELECT resolved, output, error, wake_at, wake_in
  FROM {schema}.wait_v2(%(id)s, %(owner)s, %(epoch)s, %(seq)s, %(name)s, %(kind)s,
                        %(waiting)s, %(seconds)s, %(until)s, %(started_at)s, %(state)s,
                        %(deleted)s);

-- name: await
-- A wait for another execution's end (see await_v1). executions_pkey.
SELECT ended, status, output, error
  FROM {schema}.await_v1(%(id)s, %(owner)s, %(epoch)s, %(seq)s, %(target)s, %(state)s,
                         %(deleted)s);

-- name: send
-- A message into a mailbox (see send_v1). executions_pkey, messages_idempotency_idx.
SELECT status, stored FROM {schema}.send_v1(%(id)s, %(topic)s, %(payload)s, %(key)s, %(sender)s);

-- name: release
-- Hand an execution back at once (see the release function): after an interruption
-- (counted as a recovery), or at a graceful shutdown (not counted). A release tells the
-- executors ('due:' || id, a hint at commit) so that one of them claims it with its next
-- sweep at once, not at its sweep interval. executions_pkey.
SELECT r.released
  FROM {schema}.release_v1(%(id)s, %(owner)s, %(epoch)s, %(reason)s, %(interrupted)s)
       AS r (released)
  LEFT JOIN LATERAL (SELECT pg_notify('stepstone', 'due:' || %(id)s) WHERE r.released) n
    ON true;

-- name: refuse
-- Hand back an execution this executor cannot run (see refuse_v1). executions_pkey.
SELECT {schema}.refuse_v1(%(id)s, %(owner)s, %(epoch)s, %(reason)s);

-- name: forget_refusals
-- At launch: the executions this executor refused before it restarted are claimable by it
-- again (its code may have changed). executions_refused_idx.
UPDATE {schema}.executions
   SET refused_by = nullif(array_remove(refused_by, %(owner)s), '{{}}')
 WHERE refused_by IS NOT NULL AND %(owner)s = ANY (refused_by);

-- name: running_owned_by
-- executions_running_owner_idx.
SELECT id FROM {schema}.executions WHERE status = 'RUNNING' AND owner = %(owner)s;

-- name: health_counts
-- executions_status_created_idx for the unfinished executions; executors_pkey for their
-- owners; workflows_pkey for the registered fingerprints; the (name, version) pairs live
-- executors run are gathered once, not per row. An execution no live executor can run:
-- none runs its workflow version, or each that does refused it (its inputs cannot be
-- decoded there).
WITH live AS (
    SELECT DISTINCT l.id, w->>0 AS name, w->>1 AS version
      FROM {schema}.executors l, jsonb_array_elements(l.workflows) w
     WHERE l.heartbeat_at >= now() - make_interval(secs => l.lease_seconds)
)
SELECT count(*) FILTER (WHERE e.status = 'RUNNING'),
       count(*) FILTER (WHERE e.status = 'ENQUEUED'),
       count(*) FILTER (WHERE e.status = 'RUNNING' AND (e.owner IS NULL OR o.heartbeat_at < now() - make_interval(secs => o.lease_seconds))),
       count(*) FILTER (WHERE e.status = 'RUNNING'
                          AND (e.owner IS NULL OR o.heartbeat_at < now() - make_interval(secs => o.lease_seconds))
                          AND NOT EXISTS (
                              SELECT 1 FROM live
                               WHERE live.name = e.workflow_name
                                 AND live.version = e.workflow_version
                                 AND (e.refused_by IS NULL OR live.id <> ALL (e.refused_by)))),
       extract(epoch FROM now() - min(e.created_at) FILTER (WHERE e.status = 'RUNNING'))::float8,
       count(*) FILTER (WHERE e.fingerprint <> w.fingerprint)
  FROM {schema}.executions e
  LEFT JOIN {schema}.executors o ON o.id = e.owner
  LEFT JOIN {schema}.workflows w ON w.name = e.workflow_name AND w.version = e.workflow_version
 WHERE e.status IN ('ENQUEUED', 'RUNNING', 'WAITING');

-- name: start_execution
-- Hot (one per start). executions_pkey.
SELECT created, workflow_name, status, owner, epoch, output, error
  FROM {schema}.start_execution_v2(%(id)s, %(name)s, %(version)s, %(inputs)s, %(owner)s,
                                   %(parent)s, %(trace)s, %(attributes)s, %(timeout)s);

-- name: commit_step
-- Hot (one per step). executions_pkey for the fence, steps_pkey for the insert.
SELECT {schema}.commit_step_v1(%(id)s, %(owner)s, %(epoch)s, %(seq)s, %(name)s, %(kind)s,
                               %(output)s, %(error)s, %(attempts)s, %(started_at)s,
                               %(finished_at)s, %(state)s, %(deleted)s, %(logs)s);

-- name: commit_transaction_step
-- Hot (one per step). executions_pkey for the fence, steps_pkey for the insert.
SELECT {schema}.commit_transaction_step_v1(%(id)s, %(owner)s, %(epoch)s, %(seq)s, %(name)s, %(kind)s,
                                           %(output)s, %(error)s, %(attempts)s, %(started_at)s,
                                           %(finished_at)s, %(state)s, %(deleted)s, %(logs)s);

-- name: finish_execution
-- Hot (one per completion). executions_pkey.
SELECT {schema}.finish_execution_v2(%(id)s, %(owner)s, %(epoch)s, %(status)s, %(output)s,
                                    %(error)s, %(seq)s, %(state)s, %(deleted)s, %(details)s);

-- name: update_state
-- executions_pkey for the fence, states_pkey and checkpoints_pkey for the writes.
SELECT {schema}.fence_v1(%(id)s, %(owner)s, %(epoch)s),
       {schema}.write_state_v1(%(id)s, %(seq)s, %(state)s, %(deleted)s);

-- name: save_checkpoint
-- executions_pkey for the fence, checkpoints_pkey for the upsert.
WITH fenced AS (SELECT {schema}.fence_v1(%(id)s, %(owner)s, %(epoch)s))
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
-- Resume one execution this executor owns (called again with its id, or left behind by a
-- database error): bump the epoch so that any older run of it is fenced out, record the
-- resumption and return the inputs with every recorded step and the committed state, in
-- one statement. The id is looked up without a lock (nothing is locked if it is not ours);
-- claim_v1 takes its advisory lock, then its row, and checks again. executions_pkey.
SELECT id, workflow_name, workflow_version, inputs, epoch, recoveries, steps, state, trace_context
  FROM {schema}.claim_v1(%(owner)s, ARRAY(
         SELECT e.id
           FROM (SELECT x.id, x.status, x.owner FROM {schema}.executions x
                  WHERE x.id = %(id)s OFFSET 0) e
          WHERE e.status = 'RUNNING' AND e.owner = %(owner)s), %(reason)s, true);

-- name: get_execution
-- executions_pkey; workflows_pkey for the fingerprint registered now.
SELECT e.id, e.workflow_name, e.workflow_version, e.status, e.inputs, e.output, e.error,
       e.owner, e.epoch, e.parent_id, e.attributes, e.created_at, e.updated_at, e.started_at,
       e.finished_at, e.wake_at, e.waiting, e.run, e.fingerprint, w.fingerprint
  FROM {schema}.executions e
  LEFT JOIN {schema}.workflows w ON w.name = e.workflow_name AND w.version = e.workflow_version
 WHERE e.id = %(id)s;

-- name: get_status
-- executions_pkey.
SELECT status, output, error FROM {schema}.executions WHERE id = %(id)s;

-- name: get_state
-- states_pkey (execution_id, key).
SELECT key, value FROM {schema}.states WHERE execution_id = %(id)s ORDER BY key;

-- name: state_value
-- An execution's status and one key of its state. executions_pkey, states_pkey.
SELECT e.status, s.value
  FROM {schema}.executions e
  LEFT JOIN {schema}.states s ON s.execution_id = e.id AND s.key = %(key)s
 WHERE e.id = %(id)s;

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

-- name: unread_messages
-- An execution's mailbox: its unread messages per topic, how many and the oldest's send
-- time. messages_unread_idx (execution_id, topic, id) WHERE received_seq IS NULL.
SELECT execution_id, topic, count(*), min(sent_at)
  FROM {schema}.messages
 WHERE execution_id = %(id)s AND received_seq IS NULL
 GROUP BY execution_id, topic
 ORDER BY topic;

-- name: received_messages
-- The messages the current run of an execution received (not those of runs it continued
-- from: received_run IS NULL), in the order of the receives that consumed them, with when
-- each receive was recorded. messages_pkey (execution_id, topic, id); steps_pkey
-- (execution_id, seq) for the receive's step.
SELECT m.execution_id, m.topic, m.id, m.received_seq, m.sender, m.sent_at, s.finished_at
  FROM {schema}.messages m
  LEFT JOIN {schema}.steps s ON s.execution_id = m.execution_id AND s.seq = m.received_seq
 WHERE m.execution_id = %(id)s AND m.received_seq IS NOT NULL AND m.received_run IS NULL
 ORDER BY m.received_seq, m.id;

-- name: schema_version
SELECT max(version) FROM {schema}.schema_migrations;

-- name: list_checkpoints
-- checkpoints_pkey (execution_id, seq).
SELECT execution_id, seq, state FROM {schema}.checkpoints WHERE execution_id = %(id)s ORDER BY seq;

-- name: count_steps
-- steps_pkey.
SELECT count(*) FROM {schema}.steps WHERE execution_id = %(id)s;

-- name: cancel_execution
SELECT {schema}.cancel_execution_v2(%(id)s, %(actor)s);

-- name: resume_execution
SELECT status, held_by FROM {schema}.resume_execution_v3(%(id)s, %(actor)s, %(owner)s);

-- name: fork_execution
SELECT {schema}.fork_execution_v1(%(id)s, %(step)s, %(new_id)s, %(actor)s, %(owner)s);

-- name: purge_executions
SELECT {schema}.purge_executions_v2(%(cutoff)s, %(batch)s);

-- name: log_system_event
-- Events that belong to no execution (a purge) are logged under the id '', which no
-- execution can have.
INSERT INTO {schema}.logs (execution_id, event, actor, details)
VALUES ('', %(event)s, %(actor)s, %(details)s);

-- name: workflow_stats
-- executions_created_idx for the window; steps_pkey for the retries.
SELECT e.workflow_name,
       count(*),
       count(*) FILTER (WHERE e.status = 'SUCCEEDED'),
       count(*) FILTER (WHERE e.status = 'FAILED'),
       count(*) FILTER (WHERE e.status = 'CANCELLED'),
       count(*) FILTER (WHERE e.status IN ('RUNNING', 'ENQUEUED')),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM e.finished_at - e.created_at)::float8)
           FILTER (WHERE e.finished_at IS NOT NULL),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM e.finished_at - e.created_at)::float8)
           FILTER (WHERE e.finished_at IS NOT NULL),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM e.finished_at - e.created_at)::float8)
           FILTER (WHERE e.finished_at IS NOT NULL),
       coalesce(sum((SELECT sum(s.attempts - 1) FROM {schema}.steps s WHERE s.execution_id = e.id)), 0)::bigint
  FROM {schema}.executions e
 WHERE e.created_at >= %(since)s AND e.created_at < %(until)s
   AND (%(name)s::text IS NULL OR e.workflow_name = %(name)s::text)
 GROUP BY e.workflow_name
 ORDER BY e.workflow_name;

-- name: slowest_steps
-- executions_created_idx for the window, steps_pkey per execution.
SELECT s.execution_id, e.workflow_name, s.seq, s.name, s.kind,
       extract(epoch FROM s.finished_at - s.started_at)::float8, s.attempts, s.error IS NOT NULL
  FROM {schema}.executions e
  JOIN {schema}.steps s ON s.execution_id = e.id
 WHERE e.created_at >= %(since)s AND e.created_at < %(until)s
   AND (%(name)s::text IS NULL OR e.workflow_name = %(name)s::text)
 ORDER BY s.finished_at - s.started_at DESC, s.execution_id, s.seq
 LIMIT %(limit)s;

-- name: continue_as_new
-- One per continue_as_new() (see continue_as_new_v1): the run ends and the next one starts
-- with these inputs. executions_pkey; steps_pkey, states_pkey, checkpoints_pkey and
-- messages_pkey by their leading execution_id.
SELECT id, workflow_name, workflow_version, inputs, epoch, recoveries, steps, state, trace_context
  FROM {schema}.continue_as_new_v1(%(id)s, %(owner)s, %(epoch)s, %(seq)s, %(inputs)s, %(run)s);

-- name: declare_queue
-- A queue and its limits (see declare_queue_v1). queues_pkey.
SELECT {schema}.declare_queue_v1(%(name)s, %(concurrency)s, %(rate_limit)s, %(rate_period)s,
                                 %(partition_concurrency)s);

-- name: enqueue
-- Hot (one per enqueue). executions_pkey, executions_dedup_idx, queues_pkey.
SELECT outcome, workflow_name, status, existing
  FROM {schema}.enqueue_v1(%(id)s, %(name)s, %(version)s, %(inputs)s, %(queue)s,
                           %(priority)s, %(dedup_key)s, %(partition_key)s, %(delay)s,
                           %(timeout)s, %(parent)s, %(trace)s, %(attributes)s, %(actor)s);

-- name: enqueue_registered
-- Hot (one per Client.enqueue). enqueue, of a definition a worker registered: the version
-- given, or (NULL) the one seen most recently; no row (and nothing written) if there is
-- none. workflows_pkey, then as enqueue. The function sits on the inner side of the
-- lateral join, so it runs only for a registered definition.
WITH chosen AS (
    SELECT w.version
      FROM {schema}.workflows w
     WHERE w.name = %(name)s AND (%(version)s::text IS NULL OR w.version = %(version)s::text)
     ORDER BY w.last_seen DESC, w.version DESC
     LIMIT 1
)
SELECT e.outcome, e.workflow_name, e.status, e.existing, c.version
  FROM chosen c
 CROSS JOIN LATERAL {schema}.enqueue_v1(%(id)s, %(name)s, c.version, %(inputs)s, %(queue)s,
                                        %(priority)s, %(dedup_key)s, %(partition_key)s,
                                        %(delay)s, %(timeout)s, %(parent)s, %(trace)s,
                                        %(attributes)s, %(actor)s) e;

-- name: dispatch
-- Hot (one per dispatch round). See dispatch_v1 for the indexes.
SELECT kind, id, workflow_name, workflow_version, inputs, epoch, recoveries, steps, state,
       trace_context, queue, next_in
  FROM {schema}.dispatch_v1(%(owner)s, %(queues)s, %(capacity)s, %(total)s, %(names)s,
                            %(versions)s);

-- name: list_executors
-- Every registered executor, with its heartbeat's age (NULL: it shut down, ending its
-- lease) and its running executions. executors_pkey, executions_running_owner_idx.
SELECT x.id, x.hostname, x.pid, x.started_at,
       CASE WHEN isfinite(x.heartbeat_at)
            THEN extract(epoch FROM now() - x.heartbeat_at)::double precision END,
       x.lease_seconds,
       (SELECT count(*) FROM {schema}.executions e
         WHERE e.status = 'RUNNING' AND e.owner = x.id)::integer,
       isfinite(x.heartbeat_at)
       AND x.heartbeat_at >= now() - make_interval(secs => x.lease_seconds)
  FROM {schema}.executors x
 ORDER BY x.id;

-- name: prune_executors
-- Executors whose last heartbeat is older than the cutoff and that own no running
-- execution: their rows go (a purge's second part). executions_running_owner_idx.
DELETE FROM {schema}.executors x
 WHERE x.heartbeat_at < %(cutoff)s
   AND NOT EXISTS (SELECT 1 FROM {schema}.executions e
                    WHERE e.status = 'RUNNING' AND e.owner = x.id)
RETURNING x.id;
