-- What patients send back from their gateway's page: follow-up requests for the care team
-- ("call me back") and receipts for the clinicians' inbox messages (delivered, read). Both
-- arrive over MQTT and are stored once on the id the gateway chose, however often it resends.
--
-- Like readings, neither table has a foreign key to patients or gateways: ingest checks the
-- gateway and the patient's binding before it stores anything, and what a patient asked for
-- stays on record when they are unbound or removed.

CREATE TABLE follow_up_requests (
    request_id   uuid PRIMARY KEY,       -- chosen by the gateway, the same on every resend
    gateway_id   text NOT NULL,
    patient_id   text NOT NULL,          -- bound to gateway_id when it arrived
    kind         text NOT NULL CHECK (kind IN ('call_back')),
    note         text CHECK (char_length(note) <= 500),  -- the patient's own words
    in_reply_to  text,                   -- the inbox message the patient was answering
    requested_at timestamptz NOT NULL,   -- by the gateway's clock
    received_at  timestamptz NOT NULL DEFAULT now(),
    status       text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done')),
    closed_by    text,                   -- the clinician who marked it done
    closed_at    timestamptz,
    close_note   text CHECK (char_length(close_note) <= 2000),
    CHECK ((status = 'open' AND closed_by IS NULL AND closed_at IS NULL)
           OR (status = 'done' AND closed_by IS NOT NULL AND closed_at IS NOT NULL))
);
CREATE INDEX follow_up_requests_open ON follow_up_requests (received_at DESC)
    WHERE status = 'open';
CREATE INDEX follow_up_requests_patient ON follow_up_requests (patient_id, received_at DESC);

CREATE TABLE inbox_receipts (
    -- The gateway's receipt id; for a gateway that sends none, a UUIDv5 of (gateway id,
    -- message id, state), so that its resends collapse too (ingest.follow_ups.receipt_key).
    receipt_id  uuid PRIMARY KEY,
    gateway_id  text NOT NULL,
    message_id  text NOT NULL,
    state       text NOT NULL CHECK (state IN ('delivered', 'read')),
    at          timestamptz NOT NULL,    -- by the gateway's clock
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbox_receipts_message ON inbox_receipts (message_id, state);
