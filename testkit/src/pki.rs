//! A certificate authority made per test run, and server certificates it signs.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose, SanType};

#[allow(clippy::needless_pass_by_value)] // used as `map_err(err)`
fn err(e: rcgen::Error) -> io::Error {
    io::Error::other(format!("certificate generation: {e}"))
}

/// A throwaway CA.
pub struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate with its private key, both PEM.
#[derive(Clone)]
pub struct CertPair {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM).
    pub key_pem: String,
    /// The certificate (DER).
    pub cert_der: Vec<u8>,
}

impl Pki {
    /// Makes a new CA.
    ///
    /// # Errors
    /// When key or certificate generation fails.
    pub fn new() -> io::Result<Pki> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.distinguished_name.push(rcgen::DnType::CommonName, "kiln test CA");
        let key = KeyPair::generate().map_err(err)?;
        Ok(Pki { issuer: CertifiedIssuer::self_signed(params, key).map_err(err)? })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for loopback (`127.0.0.1`, `::1`, `localhost`).
    ///
    /// # Errors
    /// When generation fails.
    pub fn loopback_server(&self) -> io::Result<CertPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.subject_alt_names = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            SanType::DnsName("localhost".try_into().map_err(err)?),
        ];
        params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem(), cert_der: cert.der().to_vec() })
    }
}

/// A self-signed certificate and key for signing tokens (the registry
/// trusts it through `rootcertbundle`).
///
/// # Errors
/// When generation fails.
pub fn token_signer() -> io::Result<CertPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "kiln token signer");
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem(), cert_der: cert.der().to_vec() })
}
