//! TLS on both sides, with certificates made by the test (openssl), and real clients (psql).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A CA and a certificate for localhost / 127.0.0.1 signed by it, in a temp dir readable by
/// the postgres OS user (the key is owned by it when we are root).
fn make_certs() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pgward-tls-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=pgward test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        "ext.cnf",
    ]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["ca.crt", "server.crt"] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    if is_root() {
        let id = |flag: &str| -> u32 {
            let o = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
        };
        std::os::unix::fs::chown(dir.join("server.key"), Some(id("-u")), Some(id("-g"))).unwrap();
    }
    dir
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn psql_conn(bin: &Path, conninfo: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new(bin.join("psql"))
        .args([conninfo, "-X", "-A", "-t", "-c", sql])
        .env_remove("PGSSLMODE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_sides() {
    let certs = make_certs();
    let d = certs.display();
    let h = Harness::start(Opts {
        extra: format!(
            "\n[tls]\ncert = \"{d}/server.crt\"\nkey = \"{d}/server.key\"\nclient_tls = \"require\"\n"
        ),
        upstream_params: format!("sslmode=verify-full&sslrootcert={d}/ca.crt"),
        pg_conf: vec![
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), format!("{d}/server.crt")),
            ("ssl_key_file".into(), format!("{d}/server.key")),
        ],
        ..Opts::default()
    })
    .await;
    let bin = h.pg.bin_dir().to_path_buf();
    let port = h.port();
    let base = format!("host=127.0.0.1 port={port} user=app_user password={PASSWORD} dbname=app");
    tokio::task::block_in_place(|| {
        // encrypted client connection, server verified by the client
        let (ok, out, err) = psql_conn(
            &bin,
            &format!("{base} sslmode=verify-full sslrootcert={d}/ca.crt"),
            "SELECT 'tls ok'",
        );
        assert!(ok, "{err}");
        assert_eq!(out, "tls ok");
        // SCRAM-SHA-256-PLUS with channel binding
        let (ok, out, err) = psql_conn(
            &bin,
            &format!("{base} sslmode=require channel_binding=require"),
            "SELECT 'bound'",
        );
        assert!(ok, "{err}");
        assert_eq!(out, "bound");
        // plaintext refused with 28000 and a clear message
        let (ok, _, err) = psql_conn(&bin, &format!("{base} sslmode=disable"), "SELECT 1");
        assert!(!ok);
        assert!(err.contains("TLS is required"), "{err}");
        // wrong password still fails over TLS
        let (ok, _, err) = psql_conn(
            &bin,
            &format!(
                "host=127.0.0.1 port={port} user=app_user password=nope dbname=app sslmode=require"
            ),
            "SELECT 1",
        );
        assert!(
            !ok && err.contains("password authentication failed"),
            "{err}"
        );
    });
    // the server side is encrypted too: the backend serving a pgward client uses TLS
    tokio::task::block_in_place(|| {
        let (ok, out, err) = psql_conn(
            &bin,
            &format!("{base} sslmode=require"),
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        );
        assert!(ok, "{err}");
        assert_eq!(out, "t");
    });
    let _ = std::fs::remove_dir_all(&certs);
}

/// auth_query: a user that is not in the configuration is looked up through a SECURITY
/// DEFINER function over pg_authid; pgward verifies the client's SCRAM proof against that
/// verifier and logs in to PostgreSQL (which requires scram-sha-256) as that user with the
/// recovered ClientKey, never knowing the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_with_scram_pass_through() {
    let h = Harness::start(Opts {
        extra: "\n[auth_query]\nupstream = \"postgres://nobody@127.0.0.1:1/none?sslmode=disable\"\nquery = \"SELECT rolname, rolpassword FROM public.pgward_lookup($1)\"\ncache_ttl = \"1s\"\n".into(),
        ..Opts::default()
    })
    .await;
    let pg = &h.pg;
    tokio::task::block_in_place(|| {
        pg.psql(
            "app",
            "CREATE ROLE passuser LOGIN PASSWORD 'pass-pw';\n\
             GRANT CONNECT ON DATABASE app TO passuser;\n\
             CREATE FUNCTION public.pgward_lookup(u text) RETURNS TABLE (rolname name, rolpassword text)\n\
               LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog\n\
               AS $$ SELECT rolname, rolpassword FROM pg_authid WHERE rolname = u $$;\n\
             REVOKE ALL ON FUNCTION public.pgward_lookup(text) FROM PUBLIC;\n\
             GRANT EXECUTE ON FUNCTION public.pgward_lookup(text) TO pgward;",
        )
        .unwrap();
    });
    let text = std::fs::read_to_string(&h.config_path).unwrap().replace(
        "postgres://nobody@127.0.0.1:1/none?sslmode=disable",
        &h.direct_url("app"),
    );
    std::fs::write(&h.config_path, text).unwrap();
    let (ok, _, err) = tokio::task::block_in_place(|| h.psql("admin", "pgward", &["-c", "RELOAD"]));
    assert!(ok, "{err}");
    let url = |pw: &str| {
        format!(
            "postgres://passuser:{pw}@127.0.0.1:{}/app?sslmode=disable",
            h.port()
        )
    };
    let c = connect(&url("pass-pw"))
        .await
        .expect("auth_query user logs in");
    assert_eq!(scalar(&c, "SELECT current_user").await, "passuser");
    let row = c.query_one("SELECT $1::int + 1", &[&1i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    assert_eq!(
        sqlstate(&connect(&url("wrong")).await.unwrap_err()),
        "28P01"
    );
    let ghost = format!(
        "postgres://ghost:x@127.0.0.1:{}/app?sslmode=disable",
        h.port()
    );
    assert_eq!(sqlstate(&connect(&ghost).await.unwrap_err()), "28P01");
    // configured users keep their own pool and server user
    let a = h.connect("app_user", "app").await;
    assert_eq!(scalar(&a, "SELECT current_user").await, "pgward");
}

/// Certificates are rotated by RELOAD (or SIGHUP) without dropping established connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_keeps_established_connections() {
    let certs = make_certs();
    let d = certs.display();
    let h = Harness::start(Opts {
        extra: format!("\n[tls]\ncert = \"{d}/server.crt\"\nkey = \"{d}/server.key\"\n"),
        ..Opts::default()
    })
    .await;
    let bin = h.pg.bin_dir().to_path_buf();
    let port = h.port();
    // a long-lived TLS client session (psql reading statements from stdin)
    let mut child = Command::new(bin.join("psql"))
        .arg(format!("host=127.0.0.1 port={port} user=app_user password={PASSWORD} dbname=app sslmode=verify-full sslrootcert={d}/ca.crt"))
        .args(["-X", "-A", "-t"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    use std::io::{BufRead, Write};
    writeln!(
        stdin,
        "SELECT 'before', ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid();"
    )
    .unwrap();
    let mut first = String::new();
    // the session is established (and answered) before the certificate changes
    tokio::task::block_in_place(|| stdout.read_line(&mut first).unwrap());
    assert!(first.starts_with("before|"), "{first}");
    // new CA and certificate, then reload
    let new = make_certs();
    for f in ["server.crt", "server.key", "ca.crt"] {
        std::fs::copy(new.join(f), certs.join(f)).unwrap();
    }
    let (ok, _, err) = tokio::task::block_in_place(|| h.psql("admin", "pgward", &["-c", "RELOAD"]));
    assert!(ok, "{err}");
    tokio::task::block_in_place(|| {
        // new connections verify against the new CA
        let (ok, out, err) = psql_conn(&bin, &format!("host=127.0.0.1 port={port} user=app_user password={PASSWORD} dbname=app sslmode=verify-full sslrootcert={d}/ca.crt"), "SELECT 'after'");
        assert!(ok, "{err}");
        assert_eq!(out, "after");
    });
    // the established session still works
    writeln!(stdin, "SELECT 'still here';").unwrap();
    drop(stdin);
    let mut rest = String::new();
    tokio::task::block_in_place(|| {
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        child.wait().unwrap()
    });
    assert!(rest.contains("still here"), "{rest}");
    let _ = std::fs::remove_dir_all(&certs);
    let _ = std::fs::remove_dir_all(&new);
}
