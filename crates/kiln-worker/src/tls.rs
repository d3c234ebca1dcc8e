//! TLS for `wss://` masters: the system's root certificates plus, optionally,
//! a CA file of the farm's own (a self-signed master certificate, say).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::{self, PemObject as _};

/// Why no TLS client could be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file cannot be opened.
    #[error("cannot read the CA file {}", path.display())]
    ReadCaFile {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    /// The CA file is not PEM (or reading it failed half-way).
    #[error("{} is not a PEM certificate file", path.display())]
    NotPem {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    /// The CA file is PEM but holds no certificate.
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    /// A certificate of the CA file cannot be a trust anchor.
    #[error("a certificate in {} is not usable as a CA", path.display())]
    UnusableCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// Nothing to trust: no system roots and no CA file.
    #[error("no trusted CA certificates: the system has none and no --ca-file was given")]
    NoRoots,
    /// rustls refused the protocol versions.
    #[error("TLS setup failed")]
    Setup(#[source] rustls::Error),
}

/// A client configuration trusting the system roots and `ca_file`'s certificates.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A malformed system certificate is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let path_buf = || path.to_owned();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|source| TlsError::ReadCaFile {
                path: path_buf(),
                source,
            })?
            .collect::<Result<_, _>>()
            .map_err(|source| TlsError::NotPem {
                path: path_buf(),
                source,
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate { path: path_buf() });
        }
        for cert in certs {
            roots.add(cert).map_err(|source| TlsError::UnusableCa {
                path: path_buf(),
                source,
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_problem_says_which_and_keeps_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = client_config(Some(&missing)).unwrap_err();
        let TlsError::ReadCaFile { path, source } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(path, &missing);
        assert!(matches!(source, pem::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound));
        assert!(
            kiln_proto::error_chain(&e)
                .starts_with(&format!("cannot read the CA file {}: ", missing.display())),
            "{e}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Some(&empty)).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e:?}");
    }
}
