//! TLS for client connections: rustls (no OpenSSL) with a certificate chain
//! and private key from PEM files.

use crate::error::ServerError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// The server's TLS identity. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The identity in PEM text: `cert_pem` holds the certificate chain
    /// (leaf first), `key_pem` its private key (PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    /// [`ServerError::Tls`] for unreadable PEM, no certificate, no key, or
    /// a key that does not match.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, ServerError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ServerError::Tls(format!("certificate: {e}")))?;
        if chain.is_empty() {
            return Err(ServerError::Tls(
                "no certificate in the certificate file".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| ServerError::Tls(format!("private key: {e}")))?;
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The identity from PEM files.
    ///
    /// # Errors
    /// [`ServerError::Tls`] when a file cannot be read, or as [`ServerTls::from_pem`].
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, ServerError> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|e| ServerError::Tls(format!("cannot read {}: {e}", path.display())))
        };
        Self::from_pem(&read(cert)?, &read(key)?)
    }

    /// The acceptor that runs the server side of the handshake.
    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}
