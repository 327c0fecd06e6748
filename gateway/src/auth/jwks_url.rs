//! The JWKS of clients registered with a JWKS URL (SMART App Launch 2.2 "Client
//! Authentication: Asymmetric"): fetched over https (plain http only from a loopback host, for
//! development), with timeouts and a size cap, no redirects followed; cached for
//! `[auth] jwks_cache_secs`, or less when the answer's `Cache-Control` says so (SMART: never
//! longer than the client's cache-control header indicates; `no-store`/`no-cache`: not at
//! all); fetched again early when an assertion names a `kid` the cached set lacks (a rotated
//! key), at most once per `[auth] jwks_refetch_secs` per URL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{Jwk, JwkSet};

use super::client_auth::select_key;
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
    /// Until when `jwks` may be used.
    expires_at: Instant,
    /// When a fetch was last tried (successful or not).
    attempted_at: Instant,
}

/// Keys fetched from JWKS URLs, by URL.
#[derive(Debug)]
pub(crate) struct JwksCache {
    http: http_client::Client,
    entries: Mutex<HashMap<String, Entry>>,
    ttl: Duration,
    refetch_interval: Duration,
}

impl JwksCache {
    pub(crate) fn new(ttl: Duration, refetch_interval: Duration) -> anyhow::Result<JwksCache> {
        // reqwest uses rustls on ring here (as the chain client does)
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = http_client::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(TIMEOUT)
            .redirect(http_client::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow::anyhow!("the HTTP client for JWKS URLs: {e}"))?;
        Ok(JwksCache {
            http,
            entries: Mutex::new(HashMap::new()),
            ttl,
            refetch_interval,
        })
    }

    /// The key `kid` for `alg` of the JWKS at `url`: see the module documentation.
    pub(crate) async fn key(
        &self,
        url: &str,
        kid: &str,
        alg: Algorithm,
    ) -> Result<Jwk, OAuthError> {
        let now = Instant::now();
        {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = entries.get_mut(url) {
                if let Some(jwks) = entry.jwks.as_ref().filter(|_| now < entry.expires_at) {
                    let found = select_key(jwks, kid, alg);
                    if found.is_ok()
                        || now.duration_since(entry.attempted_at) < self.refetch_interval
                    {
                        // a cached key, or an unknown one fetched for moments ago
                        return found;
                    }
                }
                entry.attempted_at = now;
            } else {
                entries.insert(
                    url.to_owned(),
                    Entry {
                        jwks: None,
                        expires_at: now,
                        attempted_at: now,
                    },
                );
            }
        }
        let fetched = self.fetch(url).await;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match fetched {
            Ok((jwks, max_age)) => {
                let found = select_key(&jwks, kid, alg);
                if let Some(entry) = entries.get_mut(url) {
                    entry.jwks = Some(jwks);
                    entry.expires_at = now + max_age.map_or(self.ttl, |age| age.min(self.ttl));
                }
                found
            }
            Err(reason) => {
                if let Some(entry) = entries.get_mut(url) {
                    entry.jwks = None;
                }
                tracing::warn!(reason = %reason, "a client's JWKS URL could not be fetched");
                Err(OAuthError::client(format!(
                    "the client's JWKS could not be fetched from its registered URL: {reason}"
                )))
            }
        }
    }

    /// The JWKS at `url`, and how long its `Cache-Control` lets it be kept.
    async fn fetch(&self, url: &str) -> Result<(JwkSet, Option<Duration>), String> {
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
        let max_age = response
            .headers()
            .get_all("cache-control")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(cache_lifetime)
            .min();
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
        let jwks = check_jwks(&text).map_err(|e| e.to_string())?;
        Ok((jwks, max_age))
    }
}

/// How long a `Cache-Control` header value lets a response be kept: zero for `no-store` or
/// `no-cache`, `max-age` when given; None when it does not say.
fn cache_lifetime(value: &str) -> Option<Duration> {
    let mut lifetime = None;
    for directive in value.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        if directive == "no-store" || directive == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(seconds) = directive.strip_prefix("max-age=") {
            // an unreadable max-age is taken as zero (RFC 9111 §4.2.1: stale)
            let seconds = seconds.trim_matches('"').parse::<u64>().unwrap_or(0);
            lifetime = Some(Duration::from_secs(seconds));
        }
    }
    lifetime
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_bounds_the_cache_lifetime() {
        assert_eq!(cache_lifetime("max-age=60"), Some(Duration::from_secs(60)));
        assert_eq!(
            cache_lifetime("public, max-age=3600"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(cache_lifetime("no-store"), Some(Duration::ZERO));
        assert_eq!(cache_lifetime("max-age=60, no-cache"), Some(Duration::ZERO));
        assert_eq!(cache_lifetime("max-age=soon"), Some(Duration::ZERO));
        assert_eq!(cache_lifetime("public"), None);
    }
}
