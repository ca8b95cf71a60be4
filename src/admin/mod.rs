//! The admin console: dbname `pgward` (or PgBouncer's `pgbouncer`, unless a database has that
//! name) on the main port, for `admin_users`, over the simple query protocol (psql, PgBouncer
//! exporters).
//!
//! Compatibility with PgBouncer's console is for tooling: every `SHOW` that PgBouncer has
//! gives PgBouncer's columns in PgBouncer's order with PgBouncer's types (1.25's layout, a
//! superset of 1.18's apart from `SHOW DATABASES`' `reserve_pool`, renamed by PgBouncer to
//! `reserve_pool_size`), then pgward's own columns. A column pgward has no figure for holds
//! what PgBouncer shows in that case (0, or NULL where PgBouncer has NULL); tests/admin_compat.rs
//! compares the shapes with a running PgBouncer. CommandComplete of a SHOW is `SHOW`.
//!
//! Files: `show.rs` (tables about pools, databases, users, configuration), `sockets.rs`
//! (`SHOW CLIENTS`/`SERVERS`), `stats.rs` (`SHOW STATS*`/`TOTALS`), `command.rs` (everything
//! that is not a SHOW), `settings.rs` (`SHOW CONFIG` rows and `SET`).
//! `SHOW POOLS`' and `SHOW TENANTS`' figures are also what the status page shows
//! (`crate::status`), through [`pool_figures`] and [`tenant_load`].

mod command;
mod settings;
mod show;
mod sockets;
mod stats;

pub use show::{pool_figures, tenant_load, PoolFigures};

use std::sync::Arc;

use bytes::BytesMut;

use crate::net::{read_message, write_all, Stream};
use crate::protocol::backend::{self, PgError};
use crate::protocol::frontend::query_text;
use crate::proxy::Shared;

/// A result set: typed columns and text rows.
pub struct Table {
    pub columns: Vec<(&'static str, u32, i16)>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    /// Columns typed the way PgBouncer's console declares them, one letter each: `s` text,
    /// `i` int4, `q` int8, `N` numeric.
    pub fn new(types: &str, names: &[&'static str]) -> Table {
        debug_assert_eq!(types.len(), names.len(), "{names:?}");
        let columns = types
            .bytes()
            .zip(names)
            .map(|(t, n)| match t {
                b'i' => (*n, 23, 4),
                b'q' => (*n, 20, 8),
                b'N' => (*n, 1700, -1),
                _ => (*n, 25, -1),
            })
            .collect();
        Table {
            columns,
            rows: Vec::new(),
        }
    }
    pub fn row(&mut self, values: Vec<Option<String>>) {
        debug_assert_eq!(values.len(), self.columns.len());
        self.rows.push(values);
    }
    fn encode(&self, out: &mut BytesMut) {
        backend::row_description_typed(out, &self.columns);
        for r in &self.rows {
            let vals: Vec<Option<&str>> = r.iter().map(|v| v.as_deref()).collect();
            backend::data_row(out, &vals);
        }
        backend::command_complete(out, "SHOW");
    }
}

/// A cell from anything printable.
fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
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
                    Some(sql) => command::execute(&shared, &sql, &mut out).await,
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
