-- Clinicians' notes on a patient (the patient page's "Notes"): kept as written, newest first;
-- a correction is a new note.
CREATE TABLE patient_notes (
    note_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id text NOT NULL REFERENCES patients ON DELETE CASCADE,
    author     text NOT NULL,
    body       text NOT NULL CHECK (body <> '' AND char_length(body) <= 4000),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX patient_notes_patient ON patient_notes (patient_id, created_at DESC);
