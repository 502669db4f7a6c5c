-- Flag lifecycle: who a flag is assigned to, snoozes per patient, rule and direction, and
-- escalations of urgent flags nobody acknowledged in time.

ALTER TABLE flags
    ADD COLUMN assignee       text,
    -- When the flag reached its current severity: the escalation clock starts here, so a
    -- flag that steps up to critical is escalated after the critical wait, not at once.
    ADD COLUMN severity_since timestamptz NOT NULL DEFAULT now(),
    -- Opened by a reading that reached CareWatch long after it was taken: never escalated.
    ADD COLUMN late           boolean NOT NULL DEFAULT false;
UPDATE flags SET severity_since = created_at;
CREATE INDEX flags_assignee ON flags (assignee) WHERE status <> 'resolved';

-- A snooze hides one patient's flags of one rule and direction from the triage queue and
-- from escalation until it expires (or is cancelled): a low snoozed does not silence a high.
-- Nothing is dropped: flags are still raised and recorded meanwhile.
CREATE TABLE flag_snoozes (
    snooze_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id   text NOT NULL REFERENCES patients ON DELETE CASCADE,
    rule_id      text NOT NULL,
    direction    text NOT NULL CHECK (direction IN ('high', 'low', 'none')),
    until        timestamptz NOT NULL,
    reason       text NOT NULL,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    cancelled_at timestamptz,
    cancelled_by text,
    CHECK (until > created_at)
);
CREATE INDEX flag_snoozes_active
    ON flag_snoozes (patient_id, rule_id, direction, until) WHERE cancelled_at IS NULL;

-- One row per escalation of a flag (an open flag of an escalating severity, unacknowledged
-- for longer than that severity's wait). notified_at / notify_error: what the hook did.
CREATE TABLE flag_escalations (
    escalation_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    flag_id       bigint NOT NULL REFERENCES flags ON DELETE CASCADE,
    severity      text NOT NULL,
    waited        interval NOT NULL,
    escalated_at  timestamptz NOT NULL DEFAULT now(),
    notified_at   timestamptz,
    notify_error  text,
    UNIQUE (flag_id, severity)
);

-- Snoozed right now: one row per patient, rule and direction, with the latest expiry.
CREATE VIEW active_snoozes AS
    SELECT patient_id, rule_id, direction, max(until) AS until
    FROM flag_snoozes
    WHERE cancelled_at IS NULL AND until > now()
    GROUP BY patient_id, rule_id, direction;

ALTER TABLE flag_events DROP CONSTRAINT flag_events_event_check;
ALTER TABLE flag_events ADD CONSTRAINT flag_events_event_check CHECK (event IN (
    'opened', 'breach', 'severity_raised', 'acknowledged', 'resolved', 'assigned', 'escalated'));
