//! `pgward demo`: a throwaway PostgreSQL with a demo database and two tenant schemas, pgward
//! in front of it, and the connection strings to paste into psql. Ctrl-C tears it all down.

use std::path::PathBuf;

use crate::config::Config;
use crate::pgctl::{PgOptions, TempPostgres};

const SETUP_SQL: &str = r#"
CREATE ROLE pgward LOGIN PASSWORD 'pgward-demo';
CREATE DATABASE app OWNER pgward;
\c app
SET ROLE pgward;
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

[[tenants]]
id = "globex"
database = "app"
search_path = ["globex", "public"]
settings = {{ "app.tenant_id" = "globex" }}
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
         Tenant acme (schema acme, app.tenant_id = acme):\n  psql \"postgres://app_user:demo@127.0.0.1:{p}/acme\"\n\
         Tenant globex, by user name suffix:\n  psql \"postgres://app_user.globex:demo@127.0.0.1:{p}/app\"\n\
         No tenant (plain pooling):\n  psql \"postgres://app_user:demo@127.0.0.1:{p}/app\"\n\
         Admin console:\n  psql \"postgres://admin:admin@127.0.0.1:{p}/pgward\" -c 'SHOW POOLS'\n\
         Metrics: curl http://127.0.0.1:{http}/metrics   Readiness: curl http://127.0.0.1:{http}/ready\n\n\
         Try: SELECT * FROM customers;  SELECT * FROM orders;  SHOW search_path;\n\
         Config written to {cfg}. Press Ctrl-C to stop and remove everything.",
        pg_port = pg.port(),
        http = running.http_addr.map(|a| a.port()).unwrap_or(http_port),
        cfg = path.display(),
    );
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("stopping …");
    drop(running);
    tokio::task::spawn_blocking(move || drop(pg))
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
