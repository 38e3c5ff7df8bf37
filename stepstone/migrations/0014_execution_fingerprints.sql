-- The code an execution runs with: the fingerprint of its workflow's code when it started.
--
-- A workflow is registered at launch with a fingerprint of its function's source
-- (workflows.fingerprint, the latest registration's). When that code changes while
-- executions of the same name and version have not ended, their replay runs other code than
-- the one that recorded their steps, and may diverge (NonDeterminismError). To tell which
-- executions those are, each execution keeps the fingerprint registered for its workflow
-- version when it was created, and again when it continues as new (a new run starts from
-- its first step). The fingerprint is taken by a trigger, so that every path that creates
-- an execution (a start, a child, an enqueue, a fork) records it without a parameter more;
-- NULL where the version was never registered here, and for executions created before
-- this migration (unknown, never reported as changed).
--
-- {schema} is replaced by the configured schema, quoted as an identifier.

ALTER TABLE {schema}.executions ADD COLUMN fingerprint text;

-- Sets NEW.fingerprint, on insert (unless given) and when `run` changes (continue-as-new),
-- to the registered fingerprint of the execution's workflow version. workflows_pkey.
CREATE FUNCTION {schema}.execution_fingerprint_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' AND NEW.fingerprint IS NOT NULL THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.run IS NOT DISTINCT FROM OLD.run THEN
        RETURN NEW;
    END IF;
    NEW.fingerprint := (SELECT w.fingerprint FROM {schema}.workflows w
                         WHERE w.name = NEW.workflow_name AND w.version = NEW.workflow_version);
    RETURN NEW;
END $$;

CREATE TRIGGER executions_fingerprint
    BEFORE INSERT OR UPDATE OF run ON {schema}.executions
    FOR EACH ROW EXECUTE FUNCTION {schema}.execution_fingerprint_v1();
