//! One TLS client configuration for the whole process.
//!
//! Every HTTP client talon builds (the model providers, the credential
//! proxy, the token manager, web fetches, Slack's and Discord's REST calls)
//! verifies servers against the same root store, parsed once and shared:
//! each client holds an `Arc` to it instead of a copy of its own. rustls
//! is compiled with one crypto provider (ring), named here.

use std::sync::{Arc, OnceLock};

/// The process-wide client configuration: ring, the webpki roots, TLS 1.2
/// and 1.3, HTTP/1.1 offered by ALPN (no client here speaks h2).
pub fn client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        install_crypto_provider();
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|builder| {
            builder
                .with_root_certificates(roots.clone())
                .with_no_client_auth()
        })
        // ring supports the default versions; this arm is never taken but
        // keeps a library call from becoming a panic.
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth()
        });
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }))
}

/// A `reqwest` client builder on [`client_config`]; callers add their own
/// timeouts and redirect policy.
pub fn http_client() -> reqwest::ClientBuilder {
    // reqwest takes the configuration by value; the clone shares the
    // verifier (and so the root store) behind its `Arc`.
    reqwest::Client::builder().use_preconfigured_tls(rustls::ClientConfig::clone(&client_config()))
}

/// Makes sure rustls has a process-wide crypto provider: the Slack
/// websocket builds its own configuration and asks for the default one.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_configuration_is_shared() {
        let a = client_config();
        let b = client_config();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn clients_build_on_it() {
        assert!(http_client().build().is_ok());
    }
}
