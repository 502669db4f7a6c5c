-- Workspace accounts: users with a role, care teams, which patients a team looks after, API
-- sessions with an idle timeout, and login attempts (the rate limit reads them).
--
-- A user sees only the patients of their teams. Passwords are argon2id hashes; session tokens
-- are stored as SHA-256 digests, never as themselves.

CREATE TABLE users (
    user_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      text NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9][a-z0-9._-]{1,63}$'),
    display_name  text NOT NULL CHECK (display_name <> '' AND char_length(display_name) <= 120),
    role          text NOT NULL CHECK (role IN ('clinician', 'nurse', 'lead', 'admin')),
    password_hash text NOT NULL,
    email         text,
    active        boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL
);

CREATE TABLE care_teams (
    team_id    text PRIMARY KEY CHECK (team_id ~ '^[a-z0-9][a-z0-9._-]{1,63}$'),
    name       text NOT NULL CHECK (name <> ''),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE team_members (
    team_id text NOT NULL REFERENCES care_teams ON DELETE CASCADE,
    user_id bigint NOT NULL REFERENCES users ON DELETE CASCADE,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_user ON team_members (user_id);

CREATE TABLE team_patients (
    team_id    text NOT NULL REFERENCES care_teams ON DELETE CASCADE,
    patient_id text NOT NULL REFERENCES patients ON DELETE CASCADE,
    PRIMARY KEY (team_id, patient_id)
);
CREATE INDEX team_patients_patient ON team_patients (patient_id);

CREATE TABLE api_sessions (
    token_sha256 bytea PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,           -- the latest it can live, however busy
    ended_at     timestamptz,                    -- logout
    client       text
);
CREATE INDEX api_sessions_user ON api_sessions (user_id);

CREATE TABLE login_attempts (
    attempt_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    username   text NOT NULL,
    client     text,
    succeeded  boolean NOT NULL
);
CREATE INDEX login_attempts_username ON login_attempts (username, at DESC);
CREATE INDEX login_attempts_client ON login_attempts (client, at DESC);

-- The role the API works as (it switches to it on every pooled connection): it may read and
-- write the application's tables but only append to the audit log, never change or empty it.
-- Roles belong to the whole server, so another database may have created it already.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'carewatch_app') THEN
        CREATE ROLE carewatch_app NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another database's migration created it meanwhile
END $$;
-- The owner switches to it on the API's connections (PostgreSQL 16 does not make a role's
-- creator a member it can SET ROLE to).
GRANT carewatch_app TO CURRENT_USER;

GRANT USAGE ON SCHEMA public TO carewatch_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO carewatch_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO carewatch_app;
-- The audit log: append, with the time and id the database gives (no backdating).
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON audit_log FROM carewatch_app;
GRANT INSERT (actor, action, resource, outcome, client) ON audit_log TO carewatch_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO carewatch_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO carewatch_app;
