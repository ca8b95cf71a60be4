//! The admin console: dbname `pgward` on the main port, for `admin_users`, over the simple
//! query protocol (psql, PgBouncer exporters). Column names follow PgBouncer's where the same
//! column exists.

mod show;

use std::sync::Arc;

use bytes::BytesMut;

use crate::net::{read_message, write_all, Stream};
use crate::protocol::backend::{self, PgError};
use crate::protocol::frontend::query_text;
use crate::proxy::Shared;

/// A result set: column names and text rows.
pub struct Table {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    pub fn new(columns: &[&'static str]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }
    pub fn row(&mut self, values: Vec<Option<String>>) {
        self.rows.push(values);
    }
    fn encode(&self, tag: &str, out: &mut BytesMut) {
        backend::row_description(out, &self.columns);
        for r in &self.rows {
            let vals: Vec<Option<&str>> = r.iter().map(|v| v.as_deref()).collect();
            backend::data_row(out, &vals);
        }
        backend::command_complete(out, &format!("{tag} {}", self.rows.len()));
    }
}

pub async fn run(mut stream: Stream, mut buf: BytesMut, shared: Arc<Shared>, user: String) {
    let mut out = BytesMut::new();
    for (k, v) in [
        ("server_version", crate::VERSION_STRING),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", "pgward"),
    ] {
        backend::parameter_status(&mut out, k, v);
    }
    backend::backend_key_data(&mut out, 0, 0);
    backend::ready_for_query(&mut out, b'I');
    if write_all(&mut stream, &out).await.is_err() {
        return;
    }
    tracing::info!(%user, "admin console session");
    let mut refused = false;
    loop {
        out.clear();
        let (tag, body) = match read_message(&mut stream, &mut buf, 1 << 20).await {
            Ok(m) => m,
            Err(_) => return,
        };
        match tag {
            b'Q' => {
                let sql = query_text(&body).map(|s| String::from_utf8_lossy(s).into_owned());
                match sql {
                    Some(sql) => execute(&shared, &sql, &mut out).await,
                    None => PgError::error("08P01", "invalid Query message").encode(&mut out),
                }
                backend::ready_for_query(&mut out, b'I');
            }
            b'X' => return,
            b'S' => {
                refused = false;
                backend::ready_for_query(&mut out, b'I')
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => {
                // Only the simple query protocol: one error per extended block, then the
                // rest of the block is skipped until Sync (as PostgreSQL skips after an error).
                if refused {
                    continue;
                }
                refused = true;
                PgError::error(
                    "0A000",
                    "the admin console supports only the simple query protocol",
                )
                .encode(&mut out);
            }
            _ => {
                PgError::fatal("08P01", "invalid message for the admin console").encode(&mut out);
                let _ = write_all(&mut stream, &out).await;
                return;
            }
        }
        if write_all(&mut stream, &out).await.is_err() {
            return;
        }
        if shared
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
    }
}

async fn execute(shared: &Arc<Shared>, sql: &str, out: &mut BytesMut) {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let arg = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .nth(1)
        .map(|s| s.trim_matches('"').to_string());
    let w: Vec<&str> = words.iter().map(|s| s.as_str()).collect();
    let r: Result<(), PgError> = match w.as_slice() {
        [] => {
            out.extend_from_slice(b"I\0\0\0\x04");
            Ok(())
        }
        ["SHOW", what] => match show::table(shared, what) {
            Some(t) => {
                t.encode("SHOW", out);
                Ok(())
            }
            None => Err(PgError::error(
                "42601",
                format!("unknown SHOW command: {what}"),
            )),
        },
        ["PAUSE"] | ["PAUSE", _] => pools_named(shared, arg.as_deref(), |p| p.pause()).map(|_| {
            backend::command_complete(out, "PAUSE");
        }),
        ["RESUME"] | ["RESUME", _] => {
            pools_named(shared, arg.as_deref(), |p| p.resume()).map(|_| {
                backend::command_complete(out, "RESUME");
            })
        }
        ["RELOAD"] => match crate::config::Config::load(&shared.config().path) {
            Ok(c) => shared
                .reload(c)
                .map(|_| backend::command_complete(out, "RELOAD"))
                .map_err(|e| PgError::error("F0000", e)),
            Err(e) => Err(PgError::error("F0000", e.to_string())),
        },
        ["SHUTDOWN"] => {
            shared.begin_shutdown();
            backend::command_complete(out, "SHUTDOWN");
            Ok(())
        }
        _ => Err(PgError::error(
            "42601",
            format!("unsupported admin command: {}", sql.trim()),
        )),
    };
    if let Err(e) = r {
        e.encode(out);
    }
}

fn pools_named(
    shared: &Shared,
    name: Option<&str>,
    f: impl Fn(&crate::pool::Pool),
) -> Result<(), PgError> {
    match name {
        None => {
            for p in shared.pools.iter() {
                f(p.value());
            }
            Ok(())
        }
        Some(n) => match shared.pool(n) {
            Some(p) => {
                f(&p);
                Ok(())
            }
            None => Err(PgError::error("3D000", format!("no such database: {n}"))),
        },
    }
}
