//! The `tls` module: certificates for `listen=tls:…` listeners (SIP over TLS,
//! and HTTPS for xhttp on the same listener). rustls with the ring provider.
//!
//! Parameters, Kamailio's names: `certificate` and `private_key` (PEM files,
//! required), `ca_list` (PEM file of CAs that client certificates are
//! checked against), `verify_certificate` / `require_certificate` (ask for /
//! insist on a client certificate; need `ca_list`), `tls_method` (accepted:
//! rustls negotiates TLS 1.2 and 1.3). `config` (Kamailio's tls.cfg profiles)
//! is refused with what to use instead.
//!
//! The client side (requests siphon sends over TLS) has one profile, built
//! from the same parameters: the server's certificate is verified against
//! `ca_list`, for the target's host name when the sender knows it, else for
//! its IP address (an IP is never sent as SNI, RFC 6066 §3). Our
//! `certificate` is offered when a server asks for a client certificate.
//! `client_verify_certificate` (siphon's own; Kamailio puts this in tls.cfg's
//! `[client:default] verify_certificate`): 1, the default, verifies and needs
//! `ca_list` — without it every TLS send fails with a clear error while the
//! listeners keep working; 0 turns verification off explicitly (any
//! certificate is accepted: test setups only).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use siphon_script::api::{Module, ModuleConfig};
use siphon_script::{ModuleDef, ParamSpec};
use std::sync::Arc;

/// The loaded module: what TLS listeners accept with, and what TLS
/// connections siphon opens connect with.
pub struct TlsModule {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    /// The client profile, or why there is none (verification asked for
    /// without `ca_list`): the reason is what a TLS send fails with.
    pub(crate) connector: Result<tokio_rustls::TlsConnector, String>,
}

impl Module for TlsModule {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let v: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{path}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{path}: {e}"))?;
    if v.is_empty() {
        return Err(format!("{path}: no certificate in it"));
    }
    Ok(v)
}

fn server_config(cfg: &ModuleConfig) -> Result<rustls::ServerConfig, String> {
    if cfg.str("config").is_some_and(|s| !s.is_empty()) {
        return Err(
            "config (tls.cfg profiles) is not supported: give certificate, private_key and ca_list"
                .into(),
        );
    }
    let cert = cfg
        .str("certificate")
        .ok_or("certificate (a PEM file) is required")?;
    let key_path = cfg
        .str("private_key")
        .ok_or("private_key (a PEM file) is required")?;
    let chain = certs(&cert)?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| format!("{key_path}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verify = cfg.int("verify_certificate").unwrap_or(0) != 0;
    let require = cfg.int("require_certificate").unwrap_or(0) != 0;
    let builder = match cfg.str("ca_list").filter(|s| !s.is_empty()) {
        Some(ca) if verify || require => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(&ca)? {
                roots.add(c).map_err(|e| format!("{ca}: {e}"))?;
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let v = if require {
                v
            } else {
                v.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| e.to_string())?)
        }
        None if verify || require => {
            return Err("verify_certificate/require_certificate need ca_list".into());
        }
        _ => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{cert} with {key_path}: {e}"))
}

/// The client profile: verify servers against `ca_list` unless
/// `client_verify_certificate` is 0; offer our certificate to servers that ask.
fn client_config(cfg: &ModuleConfig) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verify = cfg.int("client_verify_certificate").unwrap_or(1) != 0;
    let builder = match cfg.str("ca_list").filter(|s| !s.is_empty()) {
        Some(ca) if verify => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(&ca)? {
                roots.add(c).map_err(|e| format!("{ca}: {e}"))?;
            }
            builder.with_root_certificates(roots)
        }
        None if verify => {
            return Err("TLS client: no ca_list to verify servers against; set \
                 modparam(\"tls\", \"ca_list\", …), or \
                 modparam(\"tls\", \"client_verify_certificate\", 0) to accept any certificate"
                .into());
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider))),
    };
    match (cfg.str("certificate"), cfg.str("private_key")) {
        (Some(cert), Some(key_path)) => {
            let key =
                PrivateKeyDer::from_pem_file(&key_path).map_err(|e| format!("{key_path}: {e}"))?;
            builder
                .with_client_auth_cert(certs(&cert)?, key)
                .map_err(|e| format!("{cert} with {key_path}: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// `client_verify_certificate=0`: any server certificate is accepted; the
/// handshake signatures are still checked, so the peer holds the key of the
/// certificate it sent.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The module definition.
pub(crate) fn def() -> ModuleDef {
    ModuleDef {
        name: "tls",
        params: vec![
            ParamSpec::str("certificate"),
            ParamSpec::str("private_key"),
            ParamSpec::str("ca_list"),
            ParamSpec::int("verify_certificate"),
            ParamSpec::int("require_certificate"),
            ParamSpec::str("tls_method").no_effect(),
            ParamSpec::str("config"),
            ParamSpec::int("client_verify_certificate"),
        ],
        instantiate: Arc::new(|cfg| {
            let sc = server_config(cfg)?;
            let connector = match client_config(cfg) {
                Ok(c) => Ok(tokio_rustls::TlsConnector::from(Arc::new(c))),
                // A bad ca_list file is the user's error either way; only a
                // missing one leaves the listeners usable.
                Err(e) if cfg.str("ca_list").is_some_and(|s| !s.is_empty()) => return Err(e),
                Err(e) => Err(e),
            };
            Ok(Arc::new(TlsModule {
                acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(sc)),
                connector,
            }) as Arc<dyn Module>)
        }),
    }
}
