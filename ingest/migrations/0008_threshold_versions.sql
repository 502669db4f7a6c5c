-- Threshold sets: versioned overrides of the rules file for a care program or one patient.
-- Every version is kept (who, when, why); the latest of each scope is in force.
CREATE TABLE threshold_versions (
    version_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope       text NOT NULL CHECK (scope IN ('program', 'patient')),
    scope_id    text NOT NULL,
    overrides   jsonb NOT NULL,   -- rule id -> dotted path -> value
    locked      text[] NOT NULL DEFAULT '{}',  -- "rule-id.path" (programs only)
    reason      text NOT NULL CHECK (reason <> ''),
    author      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (scope = 'program' OR locked = '{}')
);
CREATE INDEX threshold_versions_latest ON threshold_versions (scope, scope_id, version_id DESC);
