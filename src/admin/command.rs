//! Admin commands: the statement is split into words and dispatched. PgBouncer's commands
//! have PgBouncer's meaning; where pgward differs, the command's doc says how.
//!
//! Invariants: every command answers with exactly one CommandComplete or one ErrorResponse;
//! every wait (`WAIT_CLOSE`) is bounded; an unknown name is an error naming it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::{settings, show};
use crate::pool::Pool;
use crate::protocol::backend::{self, PgError};
use crate::proxy::Shared;

/// Longest `WAIT_CLOSE` waits before it reports what is still open.
const WAIT_CLOSE_LIMIT: Duration = Duration::from_secs(60);

pub async fn execute(shared: &Arc<Shared>, sql: &str, out: &mut BytesMut) {
    let text = sql.trim().trim_end_matches(';').trim();
    let mut words = text.split_whitespace();
    let verb = words.next().unwrap_or("").to_ascii_uppercase();
    let rest: Vec<&str> = words.collect();
    // Object names may be quoted; keywords are case-insensitive.
    let arg = rest.first().map(|a| a.trim_matches('"').to_string());
    let done = |out: &mut BytesMut, tag: &str| backend::command_complete(out, tag);
    let r: Result<(), PgError> = match (verb.as_str(), rest.len()) {
        ("", _) => {
            out.extend_from_slice(b"I\0\0\0\x04"); // EmptyQueryResponse
            Ok(())
        }
        ("SHOW", 1) => {
            let what = rest[0].to_ascii_uppercase();
            match what.as_str() {
                "HELP" => {
                    PgError::notice("Console usage")
                        .with_detail(HELP)
                        .encode(out);
                    done(out, "SHOW");
                    Ok(())
                }
                _ => match show::table(shared, &what) {
                    Some(t) => {
                        t.encode(out);
                        Ok(())
                    }
                    None => Err(PgError::error(
                        "42601",
                        format!("unknown SHOW command: {what} (SHOW HELP lists them)"),
                    )),
                },
            }
        }
        ("PAUSE", 0 | 1) => {
            pools_named(shared, arg.as_deref(), |p| p.pause()).map(|_| done(out, "PAUSE"))
        }
        ("RESUME", 0 | 1) => {
            pools_named(shared, arg.as_deref(), |p| p.resume()).map(|_| done(out, "RESUME"))
        }
        ("RECONNECT", 0 | 1) => {
            pools_named(shared, arg.as_deref(), |p| p.reconnect()).map(|_| done(out, "RECONNECT"))
        }
        ("WAIT_CLOSE", 0 | 1) => wait_close(shared, arg.as_deref())
            .await
            .map(|_| done(out, "WAIT_CLOSE")),
        ("KILL", 0 | 1) => kill(shared, arg.as_deref()).map(|_| done(out, "KILL")),
        ("KILL_CLIENT", 1) => kill_client(shared, rest[0]).map(|_| done(out, "KILL_CLIENT")),
        ("DISABLE", 1) | ("ENABLE", 1) => {
            let name = arg.unwrap_or_default();
            database_exists(shared, &name).map(|_| {
                let mut set = shared.disabled.lock().unwrap_or_else(|e| e.into_inner());
                match verb.as_str() {
                    "DISABLE" => set.insert(name),
                    _ => set.remove(&name),
                };
                drop(set);
                done(out, &verb);
            })
        }
        ("SET", _) => settings::set(shared, &rest.join(" ")).map(|_| done(out, "SET")),
        ("RELOAD", 0) => match crate::config::Config::load(&shared.config().path) {
            Ok(c) => shared
                .reload(c)
                .map(|_| done(out, "RELOAD"))
                .map_err(|e| PgError::error("F0000", e)),
            Err(e) => Err(PgError::error("F0000", e.to_string())),
        },
        ("SHUTDOWN", 0) => {
            shared.begin_shutdown();
            done(out, "SHUTDOWN");
            Ok(())
        }
        ("SUSPEND", 0) => Err(PgError::error(
            "0A000",
            "SUSPEND is not supported by pgward (it exists in PgBouncer for its online restart)",
        )),
        _ => Err(PgError::error(
            "42601",
            format!("unsupported admin command: {text} (SHOW HELP lists the commands)"),
        )),
    };
    if let Err(e) = r {
        e.encode(out);
    }
}

const HELP: &str = "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION|STATE\n\
\tSHOW LISTS|MEM\n\
\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n\
\tSHOW TENANTS|QUERIES (pgward)\n\
\tSET key = arg\n\
\tRELOAD\n\
\tPAUSE [<db>]\n\
\tRESUME [<db>]\n\
\tDISABLE <db>\n\
\tENABLE <db>\n\
\tRECONNECT [<db>]\n\
\tKILL [<db>]\n\
\tKILL_CLIENT <client_id>\n\
\tSHUTDOWN\n\
\tWAIT_CLOSE [<db>]";

fn database_exists(shared: &Shared, name: &str) -> Result<(), PgError> {
    match shared.config().database(name) {
        Some(_) => Ok(()),
        None => Err(PgError::error("3D000", format!("no such database: {name}"))),
    }
}

/// Every pool (a database's own, its auth_query users', its dedicated tenants') of database
/// `name`, or of all databases.
fn pools_named(shared: &Shared, name: Option<&str>, f: impl Fn(&Pool)) -> Result<(), PgError> {
    if let Some(n) = name {
        database_exists(shared, n)?;
    }
    for p in shared.pools.iter() {
        if name.is_none_or(|n| p.name() == n) {
            f(p.value());
        }
    }
    Ok(())
}

/// `KILL [db]`: every client of the database (or all) is disconnected with 57P01, its server
/// connections closed, and the pools paused until `RESUME` (new clients wait, as after PAUSE).
fn kill(shared: &Shared, name: Option<&str>) -> Result<(), PgError> {
    pools_named(shared, name, |p| {
        p.pause();
        p.reconnect();
    })?;
    for c in shared.clients.iter() {
        if name.is_none_or(|n| c.database == n) {
            c.killed.store(true, std::sync::atomic::Ordering::Release);
            c.kill.notify_one();
        }
    }
    Ok(())
}

/// `KILL_CLIENT id`: the client with this `id` (SHOW CLIENTS) is disconnected with 57P01; a
/// transaction it had open is rolled back with its server connection.
fn kill_client(shared: &Shared, id: &str) -> Result<(), PgError> {
    let id: u64 = id
        .parse()
        .map_err(|_| PgError::error("22023", format!("KILL_CLIENT: {id:?} is not a client id")))?;
    match shared.clients.get(&id) {
        Some(c) => {
            c.killed.store(true, std::sync::atomic::Ordering::Release);
            c.kill.notify_one();
            Ok(())
        }
        None => Err(PgError::error(
            "42704",
            format!("KILL_CLIENT: no client with id {id}"),
        )),
    }
}

/// `WAIT_CLOSE [db]`: wait until the server connections that `RECONNECT` or `KILL` marked
/// for closing are gone, at most [`WAIT_CLOSE_LIMIT`] (PgBouncer waits without a bound).
async fn wait_close(shared: &Shared, name: Option<&str>) -> Result<(), PgError> {
    if let Some(n) = name {
        database_exists(shared, n)?;
    }
    let start = Instant::now();
    loop {
        let left: usize = shared
            .pools
            .iter()
            .filter(|p| name.is_none_or(|n| p.name() == n))
            .map(|p| p.closing())
            .sum();
        if left == 0 {
            return Ok(());
        }
        if start.elapsed() >= WAIT_CLOSE_LIMIT {
            return Err(PgError::error(
                "57014",
                format!(
                    "WAIT_CLOSE: {left} server connection(s) still in use after {}s; they close when their transactions end",
                    WAIT_CLOSE_LIMIT.as_secs()
                ),
            ));
        }
        if shared.shutting_down.load(Ordering::Acquire) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
