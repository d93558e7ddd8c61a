//! TLS for the farm's gRPC, read once at start from PEM files: what a client or worker
//! trusts and presents when it dials an `https://` scheduler, and what a scheduler serves
//! with (its certificate, and the CA whose client certificates name workers).

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::Error;

/// Certificates and keys are small; a bigger file is a wrong path (a video, a disk image).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Reads a PEM file that must hold `label` (`CERTIFICATE`, `PRIVATE KEY`), naming `flag` and
/// the fix when it does not.
pub fn read_pem(path: &Path, flag: &str, label: &str) -> Result<String, Error> {
    let bad = |why: String| Error::InvalidArgument(format!("{flag}: {}: {why}", path.display()));
    let size = std::fs::metadata(path)
        .map_err(|error| bad(format!("cannot read: {error}")))?
        .len();
    if size > MAX_PEM_BYTES {
        return Err(bad(format!(
            "{size} bytes is not a PEM file (at most {MAX_PEM_BYTES})"
        )));
    }
    let text =
        std::fs::read_to_string(path).map_err(|error| bad(format!("cannot read: {error}")))?;
    let begins = text.lines().any(|line| {
        line.starts_with("-----BEGIN ") && line.trim_end().ends_with(&format!("{label}-----"))
    });
    if !begins {
        return Err(bad(format!(
            "no `-----BEGIN ...{label}-----` block; give a PEM file (openssl x509 -inform der -in X -out X.pem converts DER)"
        )));
    }
    Ok(text)
}

/// The first Common Name of a DER certificate's subject: a certified worker's id.
pub fn common_name(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    let name = certificate.subject().iter_common_name().next()?;
    name.as_str().ok().map(str::to_string)
}

/// A certificate and its key, both or neither (`None`), read as PEM and named by their flags
/// when one is missing.
pub fn read_pair(
    cert: Option<&Path>,
    key: Option<&Path>,
    cert_flag: &str,
    key_flag: &str,
) -> Result<Option<(String, String)>, Error> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some((
            read_pem(cert, cert_flag, "CERTIFICATE")?,
            read_pem(key, key_flag, "PRIVATE KEY")?,
        ))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(Error::InvalidArgument(format!(
            "{cert_flag} needs {key_flag} (the certificate's private key)"
        ))),
        (None, Some(_)) => Err(Error::InvalidArgument(format!(
            "{key_flag} needs {cert_flag} (the certificate it belongs to)"
        ))),
    }
}

/// What a client or worker trusts and presents on `https://` scheduler URLs: a CA (else the
/// system's roots) and, for a worker, its client certificate. Plain `http://` URLs are dialled
/// as before.
#[derive(Clone, Default)]
pub struct ClientTls {
    ca: Option<String>,
    identity: Option<(String, String)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl ClientTls {
    /// From `--tls-ca-file` and, for a worker, `--tls-cert-file` with `--tls-key-file`.
    pub fn load(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<Self, Error> {
        Self::load_as(
            [ca, cert, key],
            ["--tls-ca-file", "--tls-cert-file", "--tls-key-file"],
        )
    }

    /// The same from files that other flags name (`--etcd-ca-file`, ...): `[ca, cert, key]`.
    pub fn load_as(files: [Option<&Path>; 3], flags: [&str; 3]) -> Result<Self, Error> {
        let [ca, cert, key] = files;
        let ca = ca
            .map(|path| read_pem(path, flags[0], "CERTIFICATE"))
            .transpose()?;
        let identity = read_pair(cert, key, flags[1], flags[2])?;
        Ok(ClientTls { ca, identity })
    }

    /// Trusts `ca_pem` and presents nothing (tests, the embedded farm).
    pub fn trusting(ca_pem: &str) -> Self {
        ClientTls {
            ca: Some(ca_pem.to_string()),
            identity: None,
        }
    }

    /// The same trust, presenting this certificate and key.
    pub fn with_identity(mut self, cert_pem: &str, key_pem: &str) -> Self {
        self.identity = Some((cert_pem.to_string(), key_pem.to_string()));
        self
    }

    /// The worker id this client certificate names (its Common Name), if one is presented.
    pub fn identity_name(&self) -> Option<String> {
        let (cert, _) = self.identity.as_ref()?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).ok()?;
        common_name(&pem.contents)
    }

    /// Whether any TLS file was given.
    pub fn configured(&self) -> bool {
        self.ca.is_some() || self.identity.is_some()
    }

    /// Refuses TLS files next to a plaintext URL: the files would be silently unused.
    pub fn check_urls(&self, urls: &[String]) -> Result<(), Error> {
        if !self.configured() {
            return Ok(());
        }
        match urls.iter().find(|url| !url.starts_with("https://")) {
            Some(url) => Err(Error::InvalidArgument(format!(
                "scheduler: {url} is plaintext but TLS files are given; write https://"
            ))),
            None => Ok(()),
        }
    }

    /// The rustls settings: the CA (else the system's roots) and the identity, if any.
    pub fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }

    /// `endpoint` with TLS when its URL is `https://`.
    pub fn apply(&self, endpoint: Endpoint) -> Result<Endpoint, Error> {
        if endpoint.uri().scheme_str() != Some("https") {
            return Ok(endpoint);
        }
        let config = self.config();
        endpoint
            .tls_config(config)
            .map_err(|error| Error::InvalidArgument(format!("TLS settings: {error}")))
    }
}

/// A scheduler's TLS: its certificate and key, and optionally the CA whose client
/// certificates prove workers (the certificate's Common Name is the worker id). Client
/// certificates stay optional on the connection: clients authenticate with tokens.
#[derive(Clone)]
pub struct ServerTls {
    pub config: ServerTlsConfig,
}

impl ServerTls {
    /// From `--tls-cert-file`, `--tls-key-file` and `--tls-client-ca-file`; `None` (plaintext)
    /// without a certificate.
    pub fn load(
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> Result<Option<Self>, Error> {
        let pair = read_pair(cert, key, "--tls-cert-file", "--tls-key-file")?;
        let client_ca = client_ca
            .map(|path| read_pem(path, "--tls-client-ca-file", "CERTIFICATE"))
            .transpose()?;
        match pair {
            Some((cert, key)) => Ok(Some(ServerTls::from_pem(&cert, &key, client_ca.as_deref()))),
            None if client_ca.is_some() => Err(Error::InvalidArgument(
                "--tls-client-ca-file needs --tls-cert-file and --tls-key-file (client certificates are asked for over TLS)".into(),
            )),
            None => Ok(None),
        }
    }

    pub fn from_pem(cert: &str, key: &str, client_ca: Option<&str>) -> Self {
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = client_ca {
            config = config
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(true);
        }
        ServerTls { config }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_files_are_checked_for_what_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(read_pem(&cert, "--tls-cert-file", "CERTIFICATE").is_ok());
        let error = read_pem(&cert, "--tls-key-file", "PRIVATE KEY")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--tls-key-file") && error.contains("PRIVATE KEY"),
            "{error}"
        );
        let missing = read_pem(&dir.path().join("nope"), "--tls-ca-file", "CERTIFICATE")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("--tls-ca-file") && missing.contains("cannot read"),
            "{missing}"
        );
    }

    #[test]
    fn tls_files_with_a_plaintext_url_are_refused_and_plain_urls_stay_plain() {
        let tls = ClientTls::trusting("-----BEGIN CERTIFICATE-----\n");
        assert!(tls.check_urls(&["https://a:1".into()]).is_ok());
        let error = tls
            .check_urls(&["https://a:1".into(), "http://b:1".into()])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("http://b:1") && error.contains("https://"),
            "{error}"
        );
        assert!(
            ClientTls::default()
                .check_urls(&["http://b:1".into()])
                .is_ok()
        );
        let plain = Endpoint::from_static("http://127.0.0.1:1");
        assert!(ClientTls::default().apply(plain).is_ok());
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let error = ClientTls::load(None, Some(&cert), None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--tls-key-file"), "{error}");
    }
}
