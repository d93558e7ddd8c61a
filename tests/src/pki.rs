//! A throwaway certificate authority for TLS tests: the scheduler's and etcd's server
//! certificates and the workers' client certificates, written as PEM files the processes
//! are given exactly as an operator would give them.

use std::path::{Path, PathBuf};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate and its key, as PEM text and as the files holding them.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    /// The CA certificate's file (what clients trust and the scheduler checks workers by).
    pub cert: PathBuf,
    pub cert_pem: String,
}

impl TestCa {
    /// A CA named `name`, its certificate written to `dir/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("reelfarm test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let cert_pem = issuer.pem();
        let cert = dir.join(format!("{name}.pem"));
        std::fs::write(&cert, &cert_pem)?;
        Ok(TestCa {
            issuer,
            dir: dir.to_path_buf(),
            cert,
            cert_pem,
        })
    }

    /// A certificate with Common Name `cn`, valid for `names` (DNS names or IP addresses),
    /// for `usages`; written to `dir/<file>.pem` and `dir/<file>.key`.
    pub fn issue(
        &self,
        file: &str,
        cn: &str,
        names: &[&str],
        usages: &[ExtendedKeyUsagePurpose],
    ) -> Result<Issued> {
        let mut params = CertificateParams::new(
            names
                .iter()
                .map(|name| name.to_string())
                .collect::<Vec<_>>(),
        )?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages.to_vec();
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.issuer)?;
        let issued = Issued {
            cert_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
            cert_der: certificate.der().to_vec(),
            key_der: key.serialize_der(),
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&issued.cert, &issued.cert_pem)?;
        std::fs::write(&issued.key, &issued.key_pem)?;
        Ok(issued)
    }

    /// A server certificate for loopback (`localhost`, 127.0.0.1).
    pub fn loopback_server(&self, file: &str, also_client: bool) -> Result<Issued> {
        let mut usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if also_client {
            // etcd checks its own certificate as a client one too.
            usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        self.issue(file, file, &["localhost", "127.0.0.1"], &usages)
    }

    /// A client certificate whose Common Name is `cn` (a worker's id).
    pub fn client(&self, file: &str, cn: &str) -> Result<Issued> {
        self.issue(file, cn, &[], &[ExtendedKeyUsagePurpose::ClientAuth])
    }
}
