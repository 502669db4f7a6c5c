-- The care team's follow-up work: messages to patients (to their gateway's inbox over MQTT,
-- optionally by email) and calls (a video-room link and the patient's phone; outcome, notes
-- and duration logged). Call minutes are treatment-management time for the billing evidence,
-- and an answered call is a live interaction; both are computed, never typed in.

ALTER TABLE patients ADD COLUMN email text CHECK (char_length(email) <= 254);
-- The start of the patient's monitoring episode (device days are counted in 30-day periods
-- from it); the day they were enrolled unless someone says otherwise.
ALTER TABLE patients ADD COLUMN monitoring_started_on date;
UPDATE patients SET monitoring_started_on = (created_at AT TIME ZONE 'UTC')::date;
ALTER TABLE patients ALTER COLUMN monitoring_started_on SET DEFAULT (now() AT TIME ZONE 'UTC')::date;
ALTER TABLE patients ALTER COLUMN monitoring_started_on SET NOT NULL;

CREATE TABLE patient_messages (
    message_id    uuid PRIMARY KEY,
    patient_id    text NOT NULL REFERENCES patients ON DELETE CASCADE,
    gateway_id    text,            -- the patient's gateway when sent; NULL: none bound
    sender        text NOT NULL,   -- the user who wrote it
    template_id   text,
    body          text NOT NULL CHECK (body <> '' AND char_length(body) <= 2000),
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- To the gateway: published (QoS 1, acknowledged by the broker) at this time; the
    -- gateway's receipts (inbox_receipts) then say delivered and read.
    published_at  timestamptz,
    publish_attempts integer NOT NULL DEFAULT 0,
    publish_next_at timestamptz,     -- after a failure: not before (backoff)
    publish_error text,
    -- By email, when asked and the patient has an address.
    email_to      text,
    emailed_at    timestamptz,
    email_attempts integer NOT NULL DEFAULT 0,
    email_next_at timestamptz,
    email_error   text
);
CREATE INDEX patient_messages_patient ON patient_messages (patient_id, created_at DESC);
CREATE INDEX patient_messages_unpublished ON patient_messages (created_at)
    WHERE published_at IS NULL AND gateway_id IS NOT NULL;
CREATE INDEX patient_messages_unemailed ON patient_messages (created_at)
    WHERE emailed_at IS NULL AND email_to IS NOT NULL;

CREATE TABLE calls (
    call_id     uuid PRIMARY KEY,
    patient_id  text NOT NULL REFERENCES patients ON DELETE CASCADE,
    caller      text NOT NULL,       -- the user who called
    room_url    text,
    phone       text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz,
    outcome     text CHECK (outcome IN ('reached', 'no_answer', 'voicemail', 'wrong_number',
                                        'declined')),
    note        text CHECK (char_length(note) <= 4000),
    CHECK ((ended_at IS NULL AND outcome IS NULL) OR (ended_at IS NOT NULL AND outcome IS NOT NULL)),
    CHECK (ended_at IS NULL OR ended_at >= started_at)
);
CREATE INDEX calls_patient ON calls (patient_id, started_at DESC);

-- Treatment-management time, as the billing evidence reads it: every ended call, its
-- duration, and whether it was a live interaction (the patient was reached).
CREATE VIEW care_time AS
    SELECT patient_id, started_at, extract(epoch FROM ended_at - started_at) / 60.0 AS minutes,
           outcome = 'reached' AS live, 'call'::text AS activity, call_id::text AS source_id
    FROM calls WHERE ended_at IS NOT NULL AND ended_at > started_at;
