//! The `tls` module: certificates for `listen=tls:…` listeners (SIP over TLS,
//! and HTTPS for xhttp on the same listener). rustls with the ring provider.
//!
//! Parameters, Kamailio's names: `certificate` and `private_key` (PEM files,
//! required), `ca_list` (PEM file of CAs that client certificates are
//! checked against), `verify_certificate` / `require_certificate` (ask for /
//! insist on a client certificate; need `ca_list`), `tls_method` (accepted:
//! rustls negotiates TLS 1.2 and 1.3). `config` (Kamailio's tls.cfg profiles)
//! is refused with what to use instead.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use siphon_script::api::{Module, ModuleConfig};
use siphon_script::{ModuleDef, ParamSpec};
use std::sync::Arc;

/// The loaded module: what TLS listeners accept with.
pub struct TlsModule {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
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
        ],
        instantiate: Arc::new(|cfg| {
            let sc = server_config(cfg)?;
            Ok(Arc::new(TlsModule {
                acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(sc)),
            }) as Arc<dyn Module>)
        }),
    }
}
