//! TLS for client connections: rustls (no OpenSSL), trusting either the
//! public web PKI roots or an operator's own CA certificate.

use crate::error::{ClientError, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use tokio_rustls::rustls::{ClientConfig as RustlsConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// How a client speaks TLS to the server: whom to trust and which name the
/// server's certificate must carry. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    pub(crate) connector: TlsConnector,
    pub(crate) server_name: ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// TLS to a server whose certificate names `server_name` (a DNS name or
    /// an IP address), signed by a public CA (the Mozilla root set).
    ///
    /// # Errors
    /// [`ClientError::Tls`] for an invalid server name.
    pub fn public_roots(server_name: &str) -> Result<Self> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Self::with_roots(server_name, roots)
    }

    /// TLS to a server whose certificate names `server_name`, signed by one
    /// of the CA certificates in `ca_pem` (PEM text, e.g. a private CA's
    /// `ca.pem`, or the server's self-signed certificate).
    ///
    /// # Errors
    /// [`ClientError::Tls`] for an invalid server name, unreadable PEM or no
    /// certificate in it.
    pub fn with_ca_pem(server_name: &str, ca_pem: &[u8]) -> Result<Self> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| ClientError::Tls(format!("CA certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Tls(format!("CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ClientError::Tls("no certificate in the CA file".into()));
        }
        Self::with_roots(server_name, roots)
    }

    /// TLS for the server at `addr` (`host:port`), checking its certificate
    /// against the host part: signed by a CA of `ca_pem` when given, else by
    /// a public CA. What the CLIs use for `--tls` / `--ca-cert`.
    ///
    /// # Errors
    /// As [`ClientTls::with_ca_pem`] and [`ClientTls::public_roots`].
    pub fn for_addr(addr: &str, ca_pem: Option<&[u8]>) -> Result<Self> {
        // A cluster's list: the nodes share one certificate name, the first's.
        let addr = addr.split(',').next().unwrap_or(addr).trim();
        let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match ca_pem {
            Some(pem) => Self::with_ca_pem(host, pem),
            None => Self::public_roots(host),
        }
    }

    fn with_roots(server_name: &str, roots: RootCertStore) -> Result<Self> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| ClientError::Tls(format!("server name {server_name:?}: {e}")))?;
        let config = RustlsConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_part_of_the_address() {
        let tls = ClientTls::for_addr("shop.example.com:7878", None).expect("tls");
        assert_eq!(
            format!("{:?}", tls.server_name),
            format!(
                "{:?}",
                ServerName::try_from("shop.example.com").expect("name")
            )
        );
        let tls = ClientTls::for_addr("127.0.0.1:7878", None).expect("tls");
        assert!(matches!(tls.server_name, ServerName::IpAddress(_)));
        let tls = ClientTls::for_addr("[::1]:7878", None).expect("tls");
        assert!(matches!(tls.server_name, ServerName::IpAddress(_)));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        assert!(matches!(
            ClientTls::with_ca_pem("localhost", b"not a pem file"),
            Err(ClientError::Tls(_))
        ));
    }
}
