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

/// Send `sql` as one Query and return the first row of its result (text columns, NULL as
/// `None`), or the first error. `Err(())`: the connection is unusable.
pub async fn first_row(
    conn: &mut ServerConn,
    sql: &[u8],
) -> Result<Result<Vec<Option<String>>, PgError>, ()> {
    let mut out = BytesMut::new();
    put_query(&mut out, sql);
    write_all(&mut conn.stream, &out).await.map_err(|_| ())?;
    let mut row = None;
    let mut first_error = None;
    loop {
        match read_message(&mut conn.stream, &mut conn.rbuf, MAX_ANSWER).await {
            Ok((b'Z', _)) => {
                return Ok(match (first_error, row) {
                    (Some(e), _) => Err(e),
                    (None, r) => Ok(r.unwrap_or_default()),
                })
            }
            Err(_) => return Err(()),
            Ok((b'E', body)) if first_error.is_none() => {
                first_error = Some(parse_error_fields(&body).to_error());
            }
            Ok((b'D', body)) if row.is_none() => row = Some(data_row(&body).ok_or(())?),
            Ok(_) => {}
        }
    }
}

/// The text columns of a DataRow body.
fn data_row(mut b: &[u8]) -> Option<Vec<Option<String>>> {
    let take = |b: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let (h, t) = (b.get(..n)?.to_vec(), b.get(n..)?);
        *b = t;
        Some(h)
    };
    let n = i16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
    (0..n.max(0))
        .map(|_| {
            let len = i32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
            match len {
                l if l < 0 => Some(None),
                l => Some(Some(
                    String::from_utf8_lossy(&take(&mut b, l as usize)?).into_owned(),
                )),
            }
        })
        .collect()
}
