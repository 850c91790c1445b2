-- The directory: companies, their linked users, deliberate removals, and the admin audit.
-- Applied by `outlook-sync db migrate` (and by `run` at start) inside one transaction, under an
-- advisory lock, with search_path set to database.schema.

-- A company: the typed columns are what is queried; `doc` is the whole document as the service
-- writes it (the client secret sealed with AES-256-GCM, never in clear), so a field added to the
-- company flows without a migration.
CREATE TABLE companies (
    company_id  text        PRIMARY KEY,
    plan        text        NOT NULL,
    enabled     boolean     NOT NULL,
    doc         jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A linked user, keyed (company, cyzen user). `mailbox_key` is the address as
-- tenants::mailbox_key spells it (ASCII lowercase: Exchange compares addresses without case).
-- `last_sync_at` is written behind in batches and is not part of `doc`, so it notifies no one.
CREATE TABLE linked_users (
    company_id   text        NOT NULL,
    user_id      text        NOT NULL,
    mailbox      text        NOT NULL,
    mailbox_key  text        NOT NULL CHECK (mailbox_key = lower(mailbox_key)),
    status       text        NOT NULL,
    doc          jsonb       NOT NULL,
    last_sync_at timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (company_id, user_id)
);
CREATE INDEX linked_users_by_mailbox ON linked_users (company_id, mailbox_key);

-- Companies whose integration an administrator removed: an event for one is skipped as unknown,
-- while a company the directory knew and lost without such a record is retried.
CREATE TABLE removed_companies (
    company_id text        PRIMARY KEY,
    removed_at timestamptz NOT NULL DEFAULT now()
);

-- Every admin write: when, the name of the admin token that made it, what, without secrets.
CREATE TABLE audit (
    id         bigserial   PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    token_name text        NOT NULL,
    company_id text        NOT NULL,
    action     text        NOT NULL,
    summary    text        NOT NULL
);
CREATE INDEX audit_by_company ON audit (company_id, id);

-- Every change a worker's cache must see is announced, in the writing transaction (delivered
-- at its commit), on one channel with "<schema>/<company>" as the payload.
CREATE FUNCTION directory_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    company text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        company := OLD.company_id;
    ELSE
        company := NEW.company_id;
    END IF;
    PERFORM pg_notify('outlook_sync_directory', TG_TABLE_SCHEMA || '/' || company);
    RETURN NULL;
END
$$;

CREATE TRIGGER companies_notify AFTER INSERT OR UPDATE OR DELETE ON companies
    FOR EACH ROW EXECUTE FUNCTION directory_notify();
CREATE TRIGGER linked_users_notify_insert_delete AFTER INSERT OR DELETE ON linked_users
    FOR EACH ROW EXECUTE FUNCTION directory_notify();
-- A last-sync time alone is not worth reloading a company in every worker.
CREATE TRIGGER linked_users_notify_update AFTER UPDATE ON linked_users
    FOR EACH ROW WHEN (OLD.doc IS DISTINCT FROM NEW.doc OR OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION directory_notify();
