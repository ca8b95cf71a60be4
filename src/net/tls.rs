//! TLS with rustls (ring provider): the client-facing acceptor and the server-facing
//! connector that follows libpq's `sslmode` semantics.
//!
//! sslmode: `disable` plain; `prefer` TLS if the server agrees, no verification; `require`
//! TLS, no verification (libpq's meaning); `verify-ca` chain checked against `sslrootcert`;
//! `verify-full` chain and host name checked.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Stream;
use crate::config::{SslMode, TlsSettings, Upstream};
use crate::server::ServerError;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client-facing TLS configuration and the certificate's `tls-server-end-point` channel
/// binding data (SHA-256 of the leaf certificate, RFC 5929; certificates signed with SHA-384
/// or SHA-512 would need that hash instead and are not supported for SCRAM-SHA-256-PLUS).
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub endpoint: Vec<u8>,
}

/// Build the client-facing TLS server configuration from PEM files.
pub fn server_config(t: &TlsSettings) -> Result<ServerTls, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .map_err(|e| format!("tls.cert {}: {e}", t.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert {}: {e}", t.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert {}: no certificate found",
            t.cert.display()
        ));
    }
    let leaf = certs[0].to_vec();
    let key = PrivateKeyDer::from_pem_file(&t.key)
        .map_err(|e| format!("tls.key {}: {e}", t.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &t.client_ca {
        Some(ca) => {
            let roots = load_roots(ca).map_err(|e| format!("tls.client_ca: {e}"))?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| format!("tls.client_ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls.cert/tls.key: {e}"))?;
    cfg.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(ServerTls {
        config: Arc::new(cfg),
        endpoint: <sha2::Sha256 as sha2::Digest>::digest(&leaf).to_vec(),
    })
}

fn load_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))? {
        let c = c.map_err(|e| format!("{}: {e}", path.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Negotiate TLS with the server as `sslmode` asks (SSLRequest first).
/// TLS per the upstream's `sslmode` on a connection to its host `host` (the name checked
/// against the certificate with `verify-full`).
pub async fn connect_upstream(
    mut tcp: TcpStream,
    up: &Upstream,
    host: &str,
) -> Result<Stream, ServerError> {
    if up.sslmode == SslMode::Disable {
        return Ok(Stream::Tcp(tcp));
    }
    let mut req = [0u8; 8];
    req[..4].copy_from_slice(&8u32.to_be_bytes());
    req[4..].copy_from_slice(&crate::protocol::SSL_REQUEST.to_be_bytes());
    tcp.write_all(&req).await?;
    let answer = tcp.read_u8().await?;
    match answer {
        b'S' => {}
        b'N' if up.sslmode == SslMode::Prefer => return Ok(Stream::Tcp(tcp)),
        b'N' => {
            return Err(ServerError::Tls(
                "server does not support TLS but sslmode requires it".into(),
            ))
        }
        _ => return Err(ServerError::Protocol("unexpected answer to SSLRequest")),
    }
    let cfg = client_config(up)?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| ServerError::Tls(format!("bad host name {host:?}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    Ok(Stream::ClientTls(Box::new(tls)))
}

fn client_config(up: &Upstream) -> Result<Arc<rustls::ClientConfig>, ServerError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let chain = match up.sslmode {
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let path = up
                .sslrootcert
                .as_ref()
                .ok_or_else(|| ServerError::Tls("verify-ca/verify-full need sslrootcert".into()))?;
            let roots = Arc::new(load_roots(path).map_err(ServerError::Tls)?);
            if up.sslmode == SslMode::VerifyFull {
                return Ok(Arc::new(
                    builder.with_root_certificates(roots).with_no_client_auth(),
                ));
            }
            Some(
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| ServerError::Tls(e.to_string()))?,
            )
        }
        _ => None,
    };
    let verifier = LibpqVerifier {
        chain,
        provider: provider(),
    };
    Ok(Arc::new(
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth(),
    ))
}

/// libpq's weaker modes: `prefer`/`require` encrypt without authenticating the server
/// (`chain: None`); `verify-ca` checks the chain against the root but not the host name.
/// Handshake signatures are always verified.
#[derive(Debug)]
struct LibpqVerifier {
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end: &CertificateDer<'_>,
        inter: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end, inter, name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
