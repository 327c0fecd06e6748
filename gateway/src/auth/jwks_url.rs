//! The JWKS of clients registered with a JWKS URL (SMART App Launch 2.2 "Client
//! Authentication: Asymmetric"): fetched over https (plain http only from a loopback host, for
//! development), with timeouts and a size cap, no redirects followed; cached for
//! `[auth] jwks_cache_secs`; fetched again early when an assertion names a `kid` the cached
//! set lacks (a rotated key), at most once per `[auth] jwks_refetch_secs` per URL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};

use super::clients::{check_jwks, check_jwks_url};
use super::oauth::OAuthError;

/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 64 * 1024;

/// Time to connect to a JWKS URL, and to get its whole answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Entry {
    jwks: Option<JwkSet>,
    fetched_at: Option<Instant>,
    /// When a fetch was last tried (successful or not).
    attempted_at: Instant,
}

/// Keys fetched from JWKS URLs, by URL.
#[derive(Debug)]
pub(crate) struct JwksCache {
    http: jwks_http::Client,
    entries: Mutex<HashMap<String, Entry>>,
    ttl: Duration,
    refetch_interval: Duration,
}

impl JwksCache {
    pub(crate) fn new(ttl: Duration, refetch_interval: Duration) -> anyhow::Result<JwksCache> {
        // reqwest uses rustls on ring here (as the chain client does)
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = jwks_http::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(TIMEOUT)
            .redirect(jwks_http::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow::anyhow!("the HTTP client for JWKS URLs: {e}"))?;
        Ok(JwksCache {
            http,
            entries: Mutex::new(HashMap::new()),
            ttl,
            refetch_interval,
        })
    }

    /// The key `kid` of the JWKS at `url`: see the module documentation.
    pub(crate) async fn key(&self, url: &str, kid: &str) -> Result<Jwk, OAuthError> {
        let now = Instant::now();
        {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = entries.get_mut(url) {
                let cached = entry.jwks.as_ref().and_then(|jwks| jwks.find(kid));
                let fresh = entry
                    .fetched_at
                    .is_some_and(|at| now.duration_since(at) < self.ttl);
                if let (true, Some(jwk)) = (fresh, cached) {
                    return Ok(jwk.clone());
                }
                if now.duration_since(entry.attempted_at) < self.refetch_interval {
                    // fetched (or tried) moments ago: not again yet
                    return cached.cloned().ok_or_else(|| no_key(kid));
                }
                entry.attempted_at = now;
            } else {
                entries.insert(
                    url.to_owned(),
                    Entry {
                        jwks: None,
                        fetched_at: None,
                        attempted_at: now,
                    },
                );
            }
        }
        let fetched = self.fetch(url).await;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match fetched {
            Ok(jwks) => {
                let jwk = jwks.find(kid).cloned();
                if let Some(entry) = entries.get_mut(url) {
                    entry.jwks = Some(jwks);
                    entry.fetched_at = Some(now);
                }
                jwk.ok_or_else(|| no_key(kid))
            }
            Err(reason) => {
                tracing::warn!(reason = %reason, "a client's JWKS URL could not be fetched");
                Err(OAuthError::client(format!(
                    "the client's JWKS could not be fetched from its registered URL: {reason}"
                )))
            }
        }
    }

    async fn fetch(&self, url: &str) -> Result<JwkSet, String> {
        let url = check_jwks_url(url)?;
        let mut response = self
            .http
            .get(url)
            .header("accept", "application/json, application/jwk-set+json")
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "timed out".to_owned()
                } else {
                    "the request failed".to_owned()
                }
            })?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|length| length > MAX_JWKS_BYTES as u64)
        {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|_| "reading the answer failed".to_owned())?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(body).map_err(|_| "not UTF-8 text".to_owned())?;
        check_jwks(&text).map_err(|e| e.to_string())
    }
}

fn no_key(kid: &str) -> OAuthError {
    OAuthError::client(format!("the client has no key with kid {kid:?}"))
}
