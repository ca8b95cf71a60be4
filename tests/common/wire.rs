//! A raw PostgreSQL protocol client for protocol-sequence tests: it writes exactly the frontend
//! messages it is given and reads backend messages one by one, each read bounded in time.
//! Connects over TCP (cleartext, md5 or SCRAM-SHA-256 password) or over PostgreSQL's
//! unix socket (trust, as the test server's local connections).

use std::path::Path;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Wire {
    io: Box<dyn Io>,
    buf: BytesMut,
}

/// What a read gave.
#[derive(Debug)]
pub enum Read {
    Msg(u8, Bytes),
    Eof,
    Timeout,
}

impl Wire {
    /// Over TCP to `port` on 127.0.0.1; answers cleartext and md5 password requests.
    pub async fn tcp(port: u16, user: &str, db: &str, password: &str) -> Result<Wire, String> {
        Wire::tcp_with(port, user, db, password, &[])
            .await
            .map(|(w, _)| w)
    }

    /// [`Wire::tcp`] with more startup parameters; also returns the ParameterStatus values
    /// the server reported at login.
    pub async fn tcp_with(
        port: u16,
        user: &str,
        db: &str,
        password: &str,
        params: &[(&str, &str)],
    ) -> Result<(Wire, Vec<(String, String)>), String> {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        s.set_nodelay(true).ok();
        Wire::startup(Box::new(s), user, db, password, params).await
    }

    /// Over PostgreSQL's unix socket in `dir` (trust authentication).
    pub async fn unix(dir: &Path, port: u16, user: &str, db: &str) -> Result<Wire, String> {
        let s = tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}")))
            .await
            .map_err(|e| e.to_string())?;
        Wire::startup(Box::new(s), user, db, "", &[])
            .await
            .map(|(w, _)| w)
    }

    /// [`Wire::unix`] with more startup parameters, and the ParameterStatus values reported.
    pub async fn unix_with(
        dir: &Path,
        port: u16,
        user: &str,
        db: &str,
        params: &[(&str, &str)],
    ) -> Result<(Wire, Vec<(String, String)>), String> {
        let s = tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}")))
            .await
            .map_err(|e| e.to_string())?;
        Wire::startup(Box::new(s), user, db, "", params).await
    }

    async fn startup(
        io: Box<dyn Io>,
        user: &str,
        db: &str,
        password: &str,
        params: &[(&str, &str)],
    ) -> Result<(Wire, Vec<(String, String)>), String> {
        let mut w = Wire {
            io,
            buf: BytesMut::new(),
        };
        let mut body = BytesMut::new();
        body.put_i32(196608);
        for kv in ["user", user, "database", db] {
            put_cstr(&mut body, kv.as_bytes());
        }
        for (k, v) in params {
            put_cstr(&mut body, k.as_bytes());
            put_cstr(&mut body, v.as_bytes());
        }
        body.put_u8(0);
        let mut reported = Vec::new();
        let mut scram: Option<postgres_protocol::authentication::sasl::ScramSha256> = None;
        let mut out = BytesMut::new();
        out.put_i32(body.len() as i32 + 4);
        out.extend_from_slice(&body);
        w.send(&out).await?;
        loop {
            match w.read(Duration::from_secs(10)).await {
                Read::Msg(b'R', body) => {
                    let code = i32::from_be_bytes(body[..4].try_into().unwrap());
                    match code {
                        0 => {}
                        3 => {
                            let mut m = BytesMut::new();
                            put_cstr(&mut m, password.as_bytes());
                            w.send(&frame(b'p', &m)).await?;
                        }
                        5 => {
                            let inner = md5_hex(format!("{password}{user}").as_bytes());
                            let mut salted = inner.into_bytes();
                            salted.extend_from_slice(&body[4..8]);
                            let mut m = BytesMut::new();
                            put_cstr(&mut m, format!("md5{}", md5_hex(&salted)).as_bytes());
                            w.send(&frame(b'p', &m)).await?;
                        }
                        // SCRAM-SHA-256 (no channel binding).
                        10 => {
                            use postgres_protocol::authentication::sasl::{
                                ChannelBinding, ScramSha256,
                            };
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            let mut m = BytesMut::new();
                            put_cstr(&mut m, b"SCRAM-SHA-256");
                            m.put_i32(s.message().len() as i32);
                            m.extend_from_slice(s.message());
                            w.send(&frame(b'p', &m)).await?;
                            scram = Some(s);
                        }
                        11 | 12 => {
                            let s = scram.as_mut().ok_or("SASL continue before start")?;
                            match code {
                                11 => {
                                    s.update(&body[4..]).map_err(|e| e.to_string())?;
                                    w.send(&frame(b'p', s.message())).await?;
                                }
                                _ => s.finish(&body[4..]).map_err(|e| e.to_string())?,
                            }
                        }
                        other => return Err(format!("unsupported authentication request {other}")),
                    }
                }
                Read::Msg(b'E', body) => return Err(error_text(&body)),
                Read::Msg(b'Z', _) => return Ok((w, reported)),
                Read::Msg(b'S', body) => {
                    let mut parts = body.split(|b| *b == 0);
                    let k = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    let v = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    reported.push((k, v));
                }
                Read::Msg(..) => {}
                Read::Eof => return Err("connection closed during startup".into()),
                Read::Timeout => return Err("startup timed out".into()),
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.io.write_all(bytes).await.map_err(|e| e.to_string())?;
        self.io.flush().await.map_err(|e| e.to_string())
    }

    /// The next backend message, or EOF, or nothing within `timeout`.
    pub async fn read(&mut self, timeout: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    self.buf.advance(5);
                    let body = self.buf.split_to(len - 4).freeze();
                    return Read::Msg(tag, body);
                }
            }
            self.buf.reserve(8192);
            match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf)).await {
                Err(_) => return Read::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Read::Eof,
                Ok(Ok(_)) => {}
            }
        }
    }
}

pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 5);
    m.push(tag);
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn put_cstr(b: &mut BytesMut, s: &[u8]) {
    b.extend_from_slice(s);
    b.put_u8(0);
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

pub fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Frontend messages.
pub mod fe {
    use super::{cstr, frame};

    pub fn query(sql: &str) -> Vec<u8> {
        frame(b'Q', &cstr(sql))
    }
    pub fn parse(name: &str, sql: &str) -> Vec<u8> {
        frame(b'P', &[cstr(name), cstr(sql), vec![0, 0]].concat())
    }
    /// Bind without parameters, results in text.
    pub fn bind(portal: &str, stmt: &str) -> Vec<u8> {
        frame(
            b'B',
            &[cstr(portal), cstr(stmt), vec![0, 0, 0, 0, 0, 0]].concat(),
        )
    }
    pub fn describe(kind: u8, name: &str) -> Vec<u8> {
        frame(b'D', &[vec![kind], cstr(name)].concat())
    }
    pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
        frame(
            b'E',
            &[cstr(portal), max_rows.to_be_bytes().to_vec()].concat(),
        )
    }
    pub fn close(kind: u8, name: &str) -> Vec<u8> {
        frame(b'C', &[vec![kind], cstr(name)].concat())
    }
    pub fn sync() -> Vec<u8> {
        frame(b'S', &[])
    }
    pub fn flush() -> Vec<u8> {
        frame(b'H', &[])
    }
    pub fn copy_data(data: &[u8]) -> Vec<u8> {
        frame(b'd', data)
    }
    pub fn copy_done() -> Vec<u8> {
        frame(b'c', &[])
    }
    pub fn copy_fail(why: &str) -> Vec<u8> {
        frame(b'f', &cstr(why))
    }
    pub fn terminate() -> Vec<u8> {
        frame(b'X', &[])
    }
    /// FunctionCall with text arguments and a text result.
    pub fn function_call(oid: u32, args: &[&str]) -> Vec<u8> {
        let mut b = oid.to_be_bytes().to_vec();
        b.extend_from_slice(&0i16.to_be_bytes()); // all arguments text
        b.extend_from_slice(&(args.len() as i16).to_be_bytes());
        for a in args {
            b.extend_from_slice(&(a.len() as i32).to_be_bytes());
            b.extend_from_slice(a.as_bytes());
        }
        b.extend_from_slice(&0i16.to_be_bytes()); // result text
        frame(b'F', &b)
    }
}

/// Fields of an ErrorResponse / NoticeResponse: (code, value).
pub fn fields(body: &[u8]) -> Vec<(u8, String)> {
    body.split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| (f[0], String::from_utf8_lossy(&f[1..]).into_owned()))
        .collect()
}

pub fn error_text(body: &[u8]) -> String {
    let f = fields(body);
    let get = |c: u8| {
        f.iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    format!("{} {}: {}", get(b'S'), get(b'C'), get(b'M'))
}

/// The columns of a DataRow, text format (NULL as None).
pub fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let mut b = body;
    let n = b.get_i16();
    (0..n)
        .map(|_| {
            let len = b.get_i32();
            if len < 0 {
                return None;
            }
            let v = String::from_utf8_lossy(&b[..len as usize]).into_owned();
            b.advance(len as usize);
            Some(v)
        })
        .collect()
}
