-- Every read and write of patient data through the API: who, what, when, outcome, from where.
-- Append-only: a trigger refuses UPDATE and DELETE, whoever asks.

CREATE TABLE audit_log (
    audit_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,
    action     text NOT NULL,      -- e.g. read.patient, read.readings, write.flag.acknowledge
    resource   text NOT NULL,      -- e.g. patient/pt-0001, flag/42
    outcome    text NOT NULL,      -- ok, not_found, denied, error
    client     text                -- remote address
);
CREATE INDEX audit_log_at ON audit_log (at DESC);

CREATE FUNCTION carewatch_audit_log_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END $$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION carewatch_audit_log_is_append_only();
