//! Bulk data through the proxy: COPY in and out, large results, large query texts.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_100k_rows() {
    let h = Harness::start(Opts::default()).await;
    let c = h.connect("app_user", "app").await;
    c.batch_execute("CREATE TABLE copy_t (id int, payload text)")
        .await
        .unwrap();
    let mut data = String::new();
    for i in 0..100_000 {
        data.push_str(&format!("{i}\tpayload-{i}\n"));
    }
    let sink = c.copy_in("COPY copy_t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in data.as_bytes().chunks(64 * 1024) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 100_000);
    let sum_server = scalar(
        &c,
        "SELECT md5(string_agg(id || E'\\t' || payload, E'\\n' ORDER BY id) || E'\\n') FROM copy_t",
    )
    .await;
    let stream = c
        .copy_out("COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(out, data.as_bytes());
    use md5::Digest;
    let local: String = md5::Md5::digest(&out)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sum_server, local);
    // COPY that fails mid-way leaves the connection usable
    let e = c
        .simple_query("COPY copy_t FROM STDIN WITH (FORMAT csv, HEADER nonsense)")
        .await;
    assert!(e.is_err());
    assert_eq!(scalar(&c, "SELECT count(*) FROM copy_t").await, "100000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabyte_result_and_one_megabyte_query() {
    let h = Harness::start(Opts::default()).await;
    let c = h.connect("app_user", "app").await;
    let rows = c
        .query(
            "SELECT repeat('x', 1000) FROM generate_series(1, 50000)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 50_000);
    assert!(rows.iter().all(|r| r.get::<_, &str>(0).len() == 1000));
    let text = "y".repeat(1 << 20);
    let q = format!("SELECT length('{text}')");
    assert_eq!(scalar(&c, &q).await, (1 << 20).to_string());
    let row = c
        .query_one("SELECT length($1::text)", &[&text])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1 << 20);
}
