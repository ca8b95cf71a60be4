//! Short-lived connections the proxy itself makes to PostgreSQL for control data
//! (`tenant_query`, `auth_query`), through tokio-postgres.

use std::future::Future;
use std::time::Duration;

/// Connect to `url` (within 10 s), run `f` with the client, and close the connection.
pub async fn with_client<T, F, Fut>(url: &str, what: &str, f: F) -> Result<T, String>
where
    F: FnOnce(tokio_postgres::Client) -> Fut,
    Fut: Future<Output = Result<T, tokio_postgres::Error>>,
{
    let (client, conn) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .map_err(|_| format!("connecting for {what} timed out"))?
    .map_err(|e| format!("connecting for {what}: {e}"))?;
    let task = tokio::spawn(conn);
    let r = f(client).await.map_err(|e| format!("running {what}: {e}"));
    let _ = task.await;
    r
}
