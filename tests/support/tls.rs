//! TLS fixtures: certificates made with rcgen in a temp dir, a Redis with a TLS port, cachet in
//! this process with a TLS listener beside its plain one, and a TLS client that speaks raw RESP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{RawClient, RedisServer, free_port, resp};

/// A certificate authority whose files live in `dir`.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM).
    pub cert: PathBuf,
    dir: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Clone)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Identity {
    /// The certificate's DER bytes, to compare with what a server presents.
    pub fn der(&self) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_file(&self.cert)
            .expect("cert")
            .to_vec()
    }
}

impl Ca {
    /// A new CA named `name`, its files under `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, cert.pem()).expect("write CA");
        Ca {
            issuer: Issuer::new(params, key),
            cert: path,
            dir: dir.to_owned(),
        }
    }

    /// A server certificate for localhost and 127.0.0.1, written as `{file}.crt`/`.key`.
    pub fn server(&self, file: &str) -> Identity {
        self.issue(file, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate, written as `{file}.crt`/`.key`.
    pub fn client(&self, file: &str) -> Identity {
        self.issue(file, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, file: &str, usage: ExtendedKeyUsagePurpose) -> Identity {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, file);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let identity = Identity {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&identity.cert, cert.pem()).expect("write cert");
        std::fs::write(&identity.key, key.serialize_pem()).expect("write key");
        identity
    }
}

/// A Redis with a TLS port beside its plain one.
pub struct TlsRedis {
    pub server: RedisServer,
    pub tls_port: u16,
}

impl TlsRedis {
    /// Serves `identity` on a TLS port; with `auth_clients`, clients must show a certificate
    /// `ca` signed.
    pub fn start(ca: &Ca, identity: &Identity, auth_clients: bool) -> Self {
        let tls_port = free_port();
        let port = tls_port.to_string();
        let cert = identity.cert.display().to_string();
        let key = identity.key.display().to_string();
        let ca = ca.cert.display().to_string();
        let auth = if auth_clients { "yes" } else { "no" };
        let server = RedisServer::start_with(&[
            "--tls-port",
            &port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            auth,
        ]);
        TlsRedis { server, tls_port }
    }

    /// `rediss://` to its TLS port.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }
}

/// cachet in this process, with a plain and a TLS listener (and an admin one).
pub struct TlsProxy {
    pub addr: SocketAddr,
    pub tls_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TlsProxy {
    /// Starts cachet with `config` (which should have `[proxy.tls]`; its `listen` is
    /// ignored: the listener is bound here on a free port). Does not wait for Redis.
    pub async fn start(config: cachet::Config) -> Self {
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let (resp, tls, admin) = (
            bind().await.unwrap(),
            bind().await.unwrap(),
            bind().await.unwrap(),
        );
        let (addr, tls_addr, admin_addr) = (
            resp.local_addr().unwrap(),
            tls.local_addr().unwrap(),
            admin.local_addr().unwrap(),
        );
        let validated = cachet::app::validate(config).expect("valid config");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let listeners = cachet::app::Listeners {
            resp,
            tls: Some(tls),
            admin: Some(admin),
        };
        let task = tokio::spawn(cachet::app::run_validated(
            validated,
            listeners,
            async move {
                let _ = rx.await;
            },
        ));
        TlsProxy {
            addr,
            tls_addr,
            admin_addr,
            shutdown: Some(tx),
            task,
        }
    }

    /// Waits until a plain client gets PONG through cachet.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(!self.task.is_finished(), "cachet stopped while starting");
            if let Ok(mut c) = RawClient::connect(self.addr).await
                && let Ok(reply) = c.command(&["PING"]).await
                && reply.starts_with(b"+PONG")
            {
                return;
            }
            assert!(Instant::now() < deadline, "cachet did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// `[proxy.tls]` for `identity` (listen is a placeholder: `TlsProxy` binds its own).
pub fn proxy_tls(identity: &Identity, client_ca: Option<&Ca>) -> cachet::config::ProxyTlsConfig {
    let text = format!(
        "listen = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
        identity.cert, identity.key
    );
    let mut tls: cachet::config::ProxyTlsConfig = toml::from_str(&text).expect("[proxy.tls]");
    tls.client_ca = client_ca.map(|ca| ca.cert.clone());
    tls
}

/// A rustls client config trusting `ca`, showing `identity` if given.
pub fn client_config(ca: &Path, identity: Option<&Identity>) -> rustls::ClientConfig {
    let files = cachet::net::tls::ClientFiles {
        ca: Some(ca.to_owned()),
        identity: identity.map(|i| (i.cert.clone(), i.key.clone())),
        ..Default::default()
    };
    files.load().expect("client config")
}

/// A raw RESP client over TLS.
pub struct TlsClient {
    pub stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl TlsClient {
    /// Connects and completes the handshake (as the client sees it: with TLS 1.3 a server's
    /// refusal of the client's certificate arrives with the first read).
    pub async fn connect(addr: SocketAddr, config: rustls::ClientConfig) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let stream = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::other("handshake timed out"))??;
        Ok(TlsClient {
            stream,
            buf: Vec::new(),
        })
    }

    /// The certificate the server presented.
    pub fn peer_cert(&self) -> Vec<u8> {
        self.stream
            .get_ref()
            .1
            .peer_certificates()
            .expect("peer certificate")[0]
            .to_vec()
    }

    /// Sends a command, returns its reply's raw bytes (an error once the server closes).
    pub async fn command(&mut self, args: &[&str]) -> std::io::Result<Vec<u8>> {
        self.stream.write_all(&RawClient::encode(args)).await?;
        self.stream.flush().await?;
        self.read_frame().await
    }

    /// Reads one whole reply frame (10 s at most).
    pub async fn read_frame(&mut self) -> std::io::Result<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(len) = resp::frame_len(&self.buf).map_err(std::io::Error::other)? {
                return Ok(self.buf.drain(..len).collect());
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .map_err(|_| std::io::Error::other("no reply within 10 s"))??;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// [`TlsClient::command`] as text, panicking on an error.
    pub async fn text(&mut self, args: &[&str]) -> String {
        let reply = self
            .command(args)
            .await
            .unwrap_or_else(|e| panic!("{args:?}: no reply: {e}"));
        String::from_utf8_lossy(&reply).into_owned()
    }
}

/// A fred client over TLS to `addr`, trusting `ca`.
pub async fn fred_tls_client(
    addr: SocketAddr,
    ca: &Path,
    identity: Option<&Identity>,
    resp3: bool,
) -> fred::clients::Client {
    use fred::prelude::*;
    let mut config = Config::from_url(&format!("rediss://{addr}")).expect("url");
    config.tls = Some(fred::types::config::TlsConnector::from(client_config(ca, identity)).into());
    if resp3 {
        config.version = fred::types::RespVersion::RESP3;
    }
    let client = Builder::from_config(config)
        .with_connection_config(|c| c.connection_timeout = Duration::from_secs(5))
        .build()
        .expect("build fred client");
    client.init().await.expect("fred connects over TLS");
    client
}
