//! `pgward demo`: a throwaway PostgreSQL with a demo database and two tenant schemas, pgward
//! in front of it, and the connection strings to paste into psql. Ctrl-C or SIGTERM tears it
//! all down (the server stopped, its directory removed).

use std::path::PathBuf;

use crate::config::Config;
use crate::pgctl::{PgOptions, TempPostgres};

/// The recommended setup of docs/tenancy.md: pgward's login role owns nothing and inherits
/// nothing, a role without privileges for statements that miss their context, a role per
/// tenant, objects owned by a separate owner, row-level security forced.
pub const SETUP_SQL: &str = r#"
CREATE ROLE pgward LOGIN NOINHERIT PASSWORD 'pgward-demo';
CREATE ROLE pgward_nobody NOLOGIN;
CREATE ROLE app_owner NOLOGIN;
CREATE ROLE tenant_acme NOLOGIN;
CREATE ROLE tenant_globex NOLOGIN;
GRANT pgward_nobody, tenant_acme, tenant_globex TO pgward;
CREATE DATABASE app OWNER app_owner;
\c app
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE UPDATE ON pg_catalog.pg_settings FROM PUBLIC;
SET ROLE app_owner;
CREATE SCHEMA acme;
CREATE SCHEMA globex;
CREATE TABLE acme.customers (id int PRIMARY KEY, name text);
CREATE TABLE globex.customers (id int PRIMARY KEY, name text);
INSERT INTO acme.customers VALUES (1, 'Wile E. Coyote'), (2, 'Road Runner');
INSERT INTO globex.customers VALUES (1, 'Hank Scorpio');
CREATE TABLE public.orders (id serial PRIMARY KEY, tenant_id text NOT NULL, item text);
INSERT INTO public.orders (tenant_id, item) VALUES ('acme', 'anvil'), ('acme', 'rocket skates'), ('globex', 'doomsday device');
ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.orders FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON public.orders USING (tenant_id = current_setting('app.tenant_id', true));
GRANT USAGE ON SCHEMA acme TO tenant_acme;
GRANT USAGE ON SCHEMA globex TO tenant_globex;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA acme TO tenant_acme;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA globex TO tenant_globex;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.orders TO tenant_acme, tenant_globex;
GRANT USAGE ON SEQUENCE public.orders_id_seq TO tenant_acme, tenant_globex;
RESET ROLE;
"#;

pub fn config_text(upstream_port: u16, port: u16, http_port: u16) -> String {
    format!(
        r#"listen = "127.0.0.1:{port}"
http_listen = "127.0.0.1:{http_port}"
admin_users = ["admin"]

[pool]
mode = "transaction"
size = 10

[[databases]]
name = "app"
upstream = "postgres://pgward:pgward-demo@127.0.0.1:{upstream_port}/app?sslmode=disable"
baseline_role = "pgward_nobody"
role_check = "strict"

[[users]]
name = "app_user"
password = "demo"

[[users]]
name = "admin"
password = "admin"

[[tenants]]
id = "acme"
database = "app"
search_path = ["acme", "public"]
settings = {{ "app.tenant_id" = "acme" }}
role = "tenant_acme"

[[tenants]]
id = "globex"
database = "app"
search_path = ["globex", "public"]
settings = {{ "app.tenant_id" = "globex" }}
role = "tenant_globex"
"#
    )
}

pub async fn run(port: u16) -> Result<(), String> {
    eprintln!("starting a throwaway PostgreSQL …");
    let pg = tokio::task::spawn_blocking(|| TempPostgres::start(PgOptions::default()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("could not start PostgreSQL: {e}"))?;
    pg.psql("postgres", SETUP_SQL)
        .map_err(|e| format!("demo setup failed: {e}"))?;
    let http_port = port.checked_add(3498).unwrap_or(9930);
    let text = config_text(pg.port(), port, http_port);
    let path = pg
        .data_dir()
        .parent()
        .map(|p| p.join("pgward-demo.toml"))
        .unwrap_or_else(|| PathBuf::from("pgward-demo.toml"));
    std::fs::write(&path, &text).map_err(|e| e.to_string())?;
    let config = Config::from_toml(&text, &path).map_err(|e| e.to_string())?;
    let running = crate::run::start(config).await?;
    let p = running.addr.port();
    println!(
        "\npgward is running in front of a throwaway PostgreSQL (port {pg_port}).\n\n\
         Tenant acme (schema acme, app.tenant_id = acme, role tenant_acme):\n  psql \"postgres://app_user:demo@127.0.0.1:{p}/acme\"\n\
         Tenant globex, by user name suffix:\n  psql \"postgres://app_user.globex:demo@127.0.0.1:{p}/app\"\n\
         No tenant (plain pooling; pgward's login role holds no privileges, so every table is denied):\n  psql \"postgres://app_user:demo@127.0.0.1:{p}/app\"\n\
         Admin console:\n  psql \"postgres://admin:admin@127.0.0.1:{p}/pgward\" -c 'SHOW POOLS'\n\
         Metrics: curl http://127.0.0.1:{http}/metrics   Readiness: curl http://127.0.0.1:{http}/ready\n\n\
         Try: SELECT * FROM customers;  SELECT * FROM orders;  SELECT current_user;  SHOW search_path;\n\
         Config written to {cfg}. Press Ctrl-C to stop and remove everything.",
        pg_port = pg.port(),
        http = running.http_addr.map(|a| a.port()).unwrap_or(http_port),
        cfg = path.display(),
    );
    // Ctrl-C, or SIGTERM (timeout, docker stop, systemd): the same clean teardown.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("stopping …");
    drop(running);
    tokio::task::spawn_blocking(move || drop(pg))
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
