//! rustls configs from PEM files, for both sides, and the client side's reload.
//!
//! Everything uses the ring provider explicitly (no process-wide default provider needed).
//!
//! The server config lives in a [`Reloadable`]: each accepted connection builds its acceptor
//! from the config current at that moment, so a reload changes what new connections see and
//! leaves open ones alone. [`Reloadable::watch`] reloads on SIGHUP and when one of the files
//! changes (modification time or length, checked every `check` interval). A reload that fails
//! keeps the config in use and logs one ERROR per failing version of the files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_util::sync::CancellationToken;

/// The crypto provider cachet uses on both sides: ring, which builds without a C toolchain
/// beyond cc (aws-lc would need cmake). rustls 0.23.48 deprecates it for lacking
/// post-quantum key exchange; the TLS 1.3 and 1.2 suites and groups it has are unchanged.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file; an error names the file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The CA certificates in a PEM file, as trust roots.
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The files a server config is built from.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must show a certificate signed by one of these CAs.
    pub client_ca: Option<PathBuf>,
    /// Refuse TLS 1.2.
    pub tls13_only: bool,
}

impl ServerFiles {
    /// Reads the files and builds the config; an error names the file and what is wrong.
    pub fn load(&self) -> Result<ServerConfig, String> {
        let provider = provider();
        let versions: &[&rustls::SupportedProtocolVersion] = if self.tls13_only {
            &[&rustls::version::TLS13]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(load_roots(ca)?),
                    provider,
                )
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let certs = load_certs(&self.cert)?;
        let key = load_key(&self.key)?;
        builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("{} and {}: {e}", self.cert.display(), self.key.display()))
    }

    /// Modification time and length of each file: a change of either is a new version.
    fn version(&self) -> Vec<Option<(SystemTime, u64)>> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|path| {
                let meta = std::fs::metadata(path).ok()?;
                Some((meta.modified().ok()?, meta.len()))
            })
            .collect()
    }
}

/// The server config new connections are accepted with, replaced by reloads.
pub struct Reloadable {
    files: ServerFiles,
    current: ArcSwap<ServerConfig>,
}

impl Reloadable {
    /// Loads the files once; cachet does not start with TLS it cannot serve.
    pub fn load(files: ServerFiles) -> Result<Self, String> {
        let config = files.load()?;
        Ok(Reloadable {
            files,
            current: ArcSwap::from_pointee(config),
        })
    }

    /// The config to accept the next connection with.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Reloads on SIGHUP, and every `check` (unless zero) when a file changed, until
    /// `shutdown`.
    pub async fn watch(self: Arc<Self>, check: Duration, shutdown: CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(if check.is_zero() {
            Duration::from_secs(3600)
        } else {
            check
        });
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut loaded = self.files.version();
        let mut failed = None;
        loop {
            let forced = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick(), if !check.is_zero() => false,
                _ = async { hangup.as_mut().expect("checked").recv().await }, if hangup.is_some() => true,
            };
            let version = self.files.version();
            if !forced && version == loaded {
                continue;
            }
            match self.files.load() {
                Ok(config) => {
                    self.current.store(Arc::new(config));
                    tracing::info!(
                        cert = %self.files.cert.display(),
                        on = if forced { "SIGHUP" } else { "file change" },
                        "TLS certificate reloaded"
                    );
                    failed = None;
                }
                Err(error) => {
                    if failed.as_ref() != Some(&version) {
                        tracing::error!(
                            %error,
                            "TLS reload failed: still serving the certificate loaded before"
                        );
                        failed = Some(version.clone());
                    }
                }
            }
            loaded = version;
        }
    }
}

/// The files and names a client config (towards Redis) is built from.
#[derive(Debug, Clone, Default)]
pub struct ClientFiles {
    /// CA certificates the server's must chain to; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// A certificate and key to show the server.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Accept any server certificate (its handshake signatures are still checked).
    pub insecure_skip_verify: bool,
    /// Check every server's certificate against this name, whatever name the connection
    /// was opened with: a client that picks the name itself (fred, towards the master the
    /// Sentinels name) still checks the configured one.
    pub verify_name: Option<ServerName<'static>>,
}

impl ClientFiles {
    pub fn load(&self) -> Result<ClientConfig, String> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        } else {
            let roots = match &self.ca {
                Some(ca) => load_roots(ca)?,
                None => system_roots()?,
            };
            match &self.verify_name {
                None => builder.with_root_certificates(roots),
                Some(name) => {
                    let inner = WebPkiServerVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider.clone(),
                    )
                    .build()
                    .map_err(|e| e.to_string())?;
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(FixedName {
                            inner,
                            name: name.clone(),
                        }))
                }
            }
        };
        match &self.identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display())),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// The operating system's trust roots.
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), ToString::to_string);
        return Err(format!(
            "no system CA certificates ({why}): set [upstream.tls] ca"
        ));
    }
    Ok(roots)
}

/// The name to send and verify, from a host name or an IP address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_owned()).map_err(|e| format!("server name {name:?}: {e}"))
}

/// The usual checks (chain, validity, name), always against `name`.
#[derive(Debug)]
struct FixedName {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for FixedName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecure_skip_verify`: any certificate passes; the handshake's signatures are checked
/// with the key it holds, as usual.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    use super::*;

    /// A CA and a server certificate for `redis.internal` only, as PEM files in `dir`:
    /// (ca, cert, key).
    fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "ca");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::new(vec!["redis.internal".to_owned()]).unwrap();
        leaf.use_authority_key_identifier_extension = true;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let paths = (dir.join("ca.pem"), dir.join("s.crt"), dir.join("s.key"));
        std::fs::write(&paths.0, ca_cert.pem()).unwrap();
        std::fs::write(&paths.1, cert.pem()).unwrap();
        std::fs::write(&paths.2, key.serialize_pem()).unwrap();
        paths
    }

    /// A handshake in memory, the client naming the server `name`.
    async fn handshake(
        client: ClientConfig,
        server: ServerConfig,
        name: &str,
    ) -> Result<(), String> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let accept = tokio::spawn(async move { acceptor.accept(b).await.map(drop) });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let result = connector
            .connect(server_name(name)?, a)
            .await
            .map(drop)
            .map_err(|e| e.to_string());
        accept.abort();
        result
    }

    /// `verify_name`: the certificate is checked against it, not against the name the
    /// connection was opened with (fred names the master by its address behind Sentinel).
    #[tokio::test]
    async fn verify_name_checks_the_configured_name_whatever_the_connection_says() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = certificates(dir.path());
        let server = || {
            ServerFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: None,
                tls13_only: false,
            }
            .load()
            .unwrap()
        };
        let client = |verify_name: Option<&str>| {
            ClientFiles {
                ca: Some(ca.clone()),
                verify_name: verify_name.map(|n| server_name(n).unwrap()),
                ..Default::default()
            }
            .load()
            .unwrap()
        };
        // Without it: the connection's own name is checked.
        handshake(client(None), server(), "redis.internal")
            .await
            .unwrap();
        let err = handshake(client(None), server(), "127.0.0.1")
            .await
            .unwrap_err();
        assert!(err.contains("not valid for name"), "{err}");
        // With it: the configured name, whatever the connection's.
        handshake(client(Some("redis.internal")), server(), "127.0.0.1")
            .await
            .unwrap();
        let err = handshake(client(Some("other.internal")), server(), "redis.internal")
            .await
            .unwrap_err();
        assert!(err.contains("not valid for name"), "{err}");
    }
}
