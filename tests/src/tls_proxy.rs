//! A TLS front for a plaintext server (the S3-compatible one): terminates TLS with a test
//! certificate and relays the bytes, so the farm can be tested against an `https://` object
//! store exactly as it would reach a private MinIO or AWS.

use std::sync::Arc;

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types};

use crate::pki::Issued;

/// Serves TLS on a free loopback port, relaying each connection to `upstream` (`host:port`);
/// its `https://127.0.0.1:<port>` URL. Call it inside a tokio runtime; it runs until the
/// runtime ends.
pub fn start(server: &Issued, upstream: String) -> Result<String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![pki_types::CertificateDer::from(server.cert_der.clone())],
            pki_types::PrivateKeyDer::Pkcs8(pki_types::PrivatePkcs8KeyDer::from(
                server.key_der.clone(),
            )),
        )?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let url = format!("https://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    Ok(url)
}
