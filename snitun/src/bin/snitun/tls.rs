//! TLS for the demo: a throw-away CA, a certificate it issues for the demo
//! host name, and rustls configurations for both ends.
//!
//! The caller verifies the endpoint's certificate against this CA only, so a
//! completed handshake proves the TLS session runs end to end between the
//! caller and the endpoint, with the snitun server and client peer relaying
//! bytes they cannot read.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::fail::{Context, Result};

/// The rustls crypto provider, chosen explicitly instead of relying on a
/// process-wide default.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A demo CA and one server certificate it issued.
pub struct DemoPki {
    /// The CA certificate (the caller's only trust anchor).
    pub ca: CertificateDer<'static>,
    /// The endpoint's certificate, for `hostname`.
    pub cert: CertificateDer<'static>,
    /// The endpoint's private key (PKCS#8).
    key: PrivatePkcs8KeyDer<'static>,
    /// The name in the certificate.
    pub hostname: String,
}

impl DemoPki {
    /// Make a fresh CA (ECDSA P-256) and a certificate for `hostname`.
    pub fn generate(hostname: &str) -> Result<DemoPki> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut ca_name = DistinguishedName::new();
        ca_name.push(DnType::CommonName, "snitun demo CA (throw-away)");
        ca_params.distinguished_name = ca_name;
        let ca_key = KeyPair::generate().context("generating the demo CA key")?;
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("signing the demo CA")?;

        let mut params =
            CertificateParams::new(vec![hostname.to_string()]).context("certificate parameters")?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, hostname);
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().context("generating the endpoint key")?;
        let cert = params
            .signed_by(&key, &ca)
            .context("issuing the endpoint certificate")?;

        Ok(DemoPki {
            ca: ca.der().clone(),
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            hostname: hostname.to_string(),
        })
    }

    /// The endpoint's TLS configuration (TLS 1.2 and 1.3, `http/1.1`).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert.clone(), self.ca.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .context("loading the endpoint certificate")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The caller's TLS configuration: trusts the demo CA and nothing else.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .context("adding the demo CA to the trust store")?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The name the caller asks for (SNI) and checks the certificate against.
    pub fn server_name(&self) -> Result<ServerName<'static>> {
        ServerName::try_from(self.hostname.clone()).context("demo host name")
    }
}
