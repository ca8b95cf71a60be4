//! The proxy's own simple Query on a server connection, read through to ReadyForQuery (session
//! resets, the check of a client's startup parameters).

use bytes::BytesMut;

use super::ServerConn;
use crate::net::{read_message, write_all};
use crate::protocol::backend::{parse_error_fields, parse_parameter_status, PgError};
use crate::protocol::frontend::put_query;

/// Largest server message read here: the answers are small (command tags, one row, errors).
const MAX_ANSWER: usize = 1 << 20;

/// Send `sql` as one Query and read to its ReadyForQuery, keeping the connection's view of
/// its parameters current. `Ok(None)`: every statement succeeded; `Ok(Some(e))`: the first
/// error, as an ERROR with PostgreSQL's SQLSTATE and message. `Err(())`: the connection is
/// unusable (I/O failure, or not idle after the Query) and must be closed.
pub async fn run(conn: &mut ServerConn, sql: &[u8]) -> Result<Option<PgError>, ()> {
    let mut out = BytesMut::new();
    put_query(&mut out, sql);
    write_all(&mut conn.stream, &out).await.map_err(|_| ())?;
    let mut first_error = None;
    loop {
        match read_message(&mut conn.stream, &mut conn.rbuf, MAX_ANSWER).await {
            Ok((b'Z', body)) if body.first() == Some(&b'I') => return Ok(first_error),
            Ok((b'Z', _)) | Err(_) => return Err(()),
            Ok((b'E', body)) if first_error.is_none() => {
                first_error = Some(parse_error_fields(&body).to_error());
            }
            Ok((b'S', body)) => {
                if let Some((k, v)) = parse_parameter_status(&body) {
                    conn.params.observe(k, v);
                }
            }
            Ok(_) => {}
        }
    }
}
