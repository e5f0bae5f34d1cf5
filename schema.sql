-- agent-resilience PostgreSQL schema.
--
-- This file is the complete current schema. Applying it brings any earlier
-- version of the database up to date, and applying it twice changes nothing:
-- every statement is CREATE ... IF NOT EXISTS or ADD COLUMN IF NOT EXISTS.
-- Every time is timestamptz, and every table has created_at.

-- Circuit breaker transitions. Redis stores the live state, and this table is
-- the durable record of the last transition per service.
CREATE TABLE IF NOT EXISTS circuit_breaker_state (
    id bigserial PRIMARY KEY,
    service_name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE circuit_breaker_state
    ADD COLUMN IF NOT EXISTS state text NOT NULL DEFAULT 'closed',
    ADD COLUMN IF NOT EXISTS generation bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS consecutive_fails integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS last_failure timestamptz,
    ADD COLUMN IF NOT EXISTS last_success timestamptz,
    ADD COLUMN IF NOT EXISTS opened_until timestamptz,
    ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
CREATE UNIQUE INDEX IF NOT EXISTS circuit_breaker_state_service_name_key
    ON circuit_breaker_state (service_name);

-- Human escalations: one row per Step Functions execution. The task token is
-- stored encrypted; `token` is a hash of the link secret, never the secret.
CREATE TABLE IF NOT EXISTS escalation_token (
    id bigserial PRIMARY KEY,
    task_run_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE escalation_token
    ADD COLUMN IF NOT EXISTS token text,
    ADD COLUMN IF NOT EXISTS task_token bytea,
    ADD COLUMN IF NOT EXISTS data bytea,
    ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'pending',
    ADD COLUMN IF NOT EXISTS decision text,
    ADD COLUMN IF NOT EXISTS reason text,
    ADD COLUMN IF NOT EXISTS expires_at timestamptz,
    ADD COLUMN IF NOT EXISTS resolved_at timestamptz,
    ADD COLUMN IF NOT EXISTS resolved_by text,
    ADD COLUMN IF NOT EXISTS org_id text NOT NULL DEFAULT 'default';
CREATE UNIQUE INDEX IF NOT EXISTS escalation_token_task_run_id_key
    ON escalation_token (task_run_id);
CREATE UNIQUE INDEX IF NOT EXISTS escalation_token_token_key
    ON escalation_token (token);
CREATE INDEX IF NOT EXISTS escalation_token_pending_idx
    ON escalation_token (created_at) WHERE resolved_at IS NULL;

-- Partial-success items. One row per idempotency key
-- `batch:{batch_id}:item:{item_id}`; a row in_progress is a lease that ends
-- at lease_until.
CREATE TABLE IF NOT EXISTS batch_item (
    id bigserial PRIMARY KEY,
    batch_id text NOT NULL,
    item_id text NOT NULL,
    idempotency_key text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE batch_item
    ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'in_progress',
    ADD COLUMN IF NOT EXISTS success boolean,
    ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS reason text,
    ADD COLUMN IF NOT EXISTS output jsonb,
    ADD COLUMN IF NOT EXISTS payload_hash text,
    ADD COLUMN IF NOT EXISTS lease_until timestamptz,
    ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN IF NOT EXISTS org_id text NOT NULL DEFAULT 'default';
CREATE UNIQUE INDEX IF NOT EXISTS batch_item_idempotency_key_key
    ON batch_item (idempotency_key);
-- Completing an item rewrites its row. No index covers status, lease or
-- outcome columns, and each page keeps half its space free, so PostgreSQL can
-- put the new version of every row beside the old one (a HOT update) without
-- touching any index. At 70 only about half of a batch's rows found room.
DROP INDEX IF EXISTS batch_item_failed_idx;
ALTER TABLE batch_item SET (fillfactor = 50);

-- Partial success: leases, redrive and the side-effect policy. data is kept
-- so that failed items can be re-sent; started_at is set while a call with
-- side effects runs and stays set when its outcome is unknown.
ALTER TABLE batch_item
    ADD COLUMN IF NOT EXISTS data jsonb,
    ADD COLUMN IF NOT EXISTS processor text,
    ADD COLUMN IF NOT EXISTS retryable boolean,
    ADD COLUMN IF NOT EXISTS error text,
    ADD COLUMN IF NOT EXISTS lease_owner text,
    ADD COLUMN IF NOT EXISTS started_at timestamptz,
    ADD COLUMN IF NOT EXISTS completed_at timestamptz;
-- data keeps the item's JSON text as the runner wrote it (type json, not
-- jsonb), because jsonb rewrites numbers such as 1e+20 and -0.0. A re-driven
-- item is sent with this text, and its payload hash must match the stored one.
DO $$
BEGIN
    IF (SELECT data_type FROM information_schema.columns
        WHERE table_schema = current_schema()
          AND table_name = 'batch_item' AND column_name = 'data') = 'jsonb' THEN
        ALTER TABLE batch_item ALTER COLUMN data TYPE json USING data::json;
    END IF;
END
$$;
-- Every claim inserts into every index of the table, so the table keeps
-- only two.
-- The key sorts in byte order ("C"), which is cheaper to compare, and every
-- key of a batch then lies between "batch:{batch_id}:item:" and
-- "batch:{batch_id}:item;" (';' follows ':', and a batch id has no ':'). Lookups
-- by batch scan that range of the key index, which replaces an index on
-- batch_id. Changing the collation rebuilds the key index once.
DO $$
BEGIN
    IF (SELECT collation_name FROM information_schema.columns
        WHERE table_schema = current_schema()
          AND table_name = 'batch_item'
          AND column_name = 'idempotency_key') IS DISTINCT FROM 'C' THEN
        ALTER TABLE batch_item ALTER COLUMN idempotency_key TYPE text COLLATE "C";
    END IF;
END
$$;
DROP INDEX IF EXISTS batch_item_batch_id_idx;
DROP INDEX IF EXISTS batch_item_org_batch_idx;

-- Every mutation of every pattern. dedupe_key, when present, makes a retried
-- write of the same event a no-op.
CREATE TABLE IF NOT EXISTS audit_log (
    id bigserial PRIMARY KEY,
    pattern text NOT NULL,
    action text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE audit_log
    ADD COLUMN IF NOT EXISTS task_id text,
    ADD COLUMN IF NOT EXISTS run_id text,
    ADD COLUMN IF NOT EXISTS org_id text,
    ADD COLUMN IF NOT EXISTS actor text,
    ADD COLUMN IF NOT EXISTS metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN IF NOT EXISTS dedupe_key text;
CREATE UNIQUE INDEX IF NOT EXISTS audit_log_dedupe_key_key
    ON audit_log (dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_log_task_id_idx ON audit_log (task_id);
CREATE INDEX IF NOT EXISTS audit_log_created_at_idx ON audit_log (created_at);

-- One row per LLM call, cached and template answers included. cost is NULL
-- when the model has no price, never 0.
CREATE TABLE IF NOT EXISTS llm_usage (
    id bigserial PRIMARY KEY,
    task_run_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE llm_usage
    ADD COLUMN IF NOT EXISTS org_id text NOT NULL DEFAULT 'default',
    ADD COLUMN IF NOT EXISTS model text NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS provider text NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS prompt_tokens integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS completion_tokens integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS total_tokens integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS cost numeric(14, 8),
    ADD COLUMN IF NOT EXISTS cached boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS degraded boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS latency_ms integer NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS llm_usage_org_created_idx
    ON llm_usage (org_id, created_at);
CREATE INDEX IF NOT EXISTS llm_usage_task_run_id_idx ON llm_usage (task_run_id);

-- Human escalation, in depth. escalation_token.task_run_id is the escalation
-- id and the Step Functions execution name; `token` is the SHA-256 of the task
-- token, and task_token and data are envelope-encrypted (AES-GCM).
ALTER TABLE escalation_token
    ADD COLUMN IF NOT EXISTS escalation_type text NOT NULL DEFAULT 'default',
    ADD COLUMN IF NOT EXISTS requested_by text,
    ADD COLUMN IF NOT EXISTS approvers jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN IF NOT EXISTS source jsonb,
    ADD COLUMN IF NOT EXISTS app_url text,
    ADD COLUMN IF NOT EXISTS execution_arn text,
    ADD COLUMN IF NOT EXISTS decided_channel text,
    ADD COLUMN IF NOT EXISTS decided_data bytea,
    ADD COLUMN IF NOT EXISTS completed_at timestamptz,
    ADD COLUMN IF NOT EXISTS notify_state text NOT NULL DEFAULT 'waiting',
    ADD COLUMN IF NOT EXISTS notify_claimed_at timestamptz,
    ADD COLUMN IF NOT EXISTS notify_error text,
    ADD COLUMN IF NOT EXISTS slack_channel text,
    ADD COLUMN IF NOT EXISTS slack_ts text,
    ADD COLUMN IF NOT EXISTS reminded_at timestamptz,
    ADD COLUMN IF NOT EXISTS resumed_at timestamptz,
    ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX IF NOT EXISTS escalation_token_status_idx
    ON escalation_token (status, created_at);

-- One approval link per approver. Only the SHA-256 of the link's signature is
-- stored, so the table cannot be used to rebuild a link.
CREATE TABLE IF NOT EXISTS escalation_link (
    id bigserial PRIMARY KEY,
    escalation_id text NOT NULL,
    approver text NOT NULL,
    signature_hash text NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS escalation_link_escalation_approver_key
    ON escalation_link (escalation_id, approver);

-- The winning decision of an escalation, kept until Step Functions accepts it.
-- status: pending, delivering (leased until lease_until), delivered, gone
-- (Step Functions no longer knows the token), superseded (the execution ended
-- another way first).
CREATE TABLE IF NOT EXISTS escalation_outbox (
    id bigserial PRIMARY KEY,
    escalation_id text NOT NULL,
    decision text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE escalation_outbox
    ADD COLUMN IF NOT EXISTS payload bytea,
    ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'pending',
    ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS last_error text,
    ADD COLUMN IF NOT EXISTS lease_until timestamptz,
    ADD COLUMN IF NOT EXISTS next_attempt_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN IF NOT EXISTS delivered_at timestamptz,
    ADD COLUMN IF NOT EXISTS alerted_at timestamptz,
    ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
CREATE UNIQUE INDEX IF NOT EXISTS escalation_outbox_escalation_id_key
    ON escalation_outbox (escalation_id);
CREATE INDEX IF NOT EXISTS escalation_outbox_undelivered_idx
    ON escalation_outbox (next_attempt_at)
    WHERE status IN ('pending', 'delivering');

-- Signed Slack requests already accepted, so a replayed request is rejected.
CREATE TABLE IF NOT EXISTS slack_request_seen (
    signature_hash text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Graceful degradation, in depth: the token partitions, price version, tier
-- and outcome of each llm_usage row, and the spend per org and UTC day that
-- the budgets are checked against. `reserved` is the maximum cost of paid
-- calls in flight, so a hard budget is checked against spent + reserved.
ALTER TABLE llm_usage
    ADD COLUMN IF NOT EXISTS tier text NOT NULL DEFAULT 'default',
    ADD COLUMN IF NOT EXISTS cached_input_tokens integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS cache_write_tokens integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS tokens_estimated boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS price_version text,
    ADD COLUMN IF NOT EXISTS incomplete boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS reason text,
    ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS llm_daily_spend (
    org_id text NOT NULL,
    day date NOT NULL,
    spent numeric(14, 8) NOT NULL DEFAULT 0,
    reserved numeric(14, 8) NOT NULL DEFAULT 0,
    alerted_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, day)
);
