//! Who may call what. Two secrets: the API key (applications: upload, search, jobs, documents)
//! and the admin token (additionally: deleting documents). Both are read at start from files
//! (mounted Secrets) or environment variables. In cluster mode the API key is required; a
//! standalone node without keys is open, as a local tool should be. Probes, metrics and the
//! OpenAPI document never need a key.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// File holding the API key (surrounding whitespace ignored). `RAGNODE_API_KEY` may hold
    /// the key itself instead.
    pub api_key_file: Option<PathBuf>,
    /// File holding the admin token. `RAGNODE_ADMIN_TOKEN` may hold the token itself instead.
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    User,
    Admin,
}

/// The access a route needs.
pub fn required(method: &axum::http::Method, path: &str) -> Access {
    match path {
        "/livez" | "/readyz" | "/metrics" | "/api/v1/openapi.json" => Access::Public,
        p if method == axum::http::Method::DELETE && p.starts_with("/api/v1/documents/") => {
            Access::Admin
        }
        _ => Access::User,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No credentials, or wrong ones (401).
    Unauthenticated,
    /// A valid API key on an admin route (403).
    Forbidden,
}

#[derive(Clone, Default)]
pub struct Auth {
    api_key: Option<String>,
    admin_token: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

fn secret(
    file: Option<&PathBuf>,
    env: Option<String>,
    what: &str,
) -> anyhow::Result<Option<String>> {
    let raw = match file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("reading the {what} from {}: {e}", f.display()))?,
        ),
        None => env,
    };
    match raw.map(|s| s.trim().to_owned()) {
        Some(s) if s.len() < 16 => {
            anyhow::bail!("the {what} must be at least 16 characters long")
        }
        other => Ok(other),
    }
}

impl Auth {
    pub fn new(api_key: Option<String>, admin_token: Option<String>) -> Auth {
        Auth {
            api_key,
            admin_token,
        }
    }

    pub fn load(c: &AuthConfig, cluster_mode: bool) -> anyhow::Result<Auth> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Auth::load_from(
            c,
            cluster_mode,
            env("RAGNODE_API_KEY"),
            env("RAGNODE_ADMIN_TOKEN"),
        )
    }

    /// [`Auth::load`] with the environment's values passed in.
    pub fn load_from(
        c: &AuthConfig,
        cluster_mode: bool,
        env_api_key: Option<String>,
        env_admin_token: Option<String>,
    ) -> anyhow::Result<Auth> {
        let auth = Auth {
            api_key: secret(c.api_key_file.as_ref(), env_api_key, "API key")?,
            admin_token: secret(c.admin_token_file.as_ref(), env_admin_token, "admin token")?,
        };
        if cluster_mode && auth.api_key.is_none() {
            anyhow::bail!(
                "cluster mode requires an API key: --api-key-file FILE or RAGNODE_API_KEY \
                 (authentication is on by default in a cluster)"
            );
        }
        Ok(auth)
    }

    pub fn enabled(&self) -> bool {
        self.api_key.is_some() || self.admin_token.is_some()
    }

    /// Checks the presented credential (the bearer token or `X-Api-Key`) against what `access`
    /// needs.
    pub fn check(&self, access: Access, presented: Option<&str>) -> Result<(), Denied> {
        if access == Access::Public || !self.enabled() {
            return Ok(());
        }
        let is = |s: &Option<String>| match (s, presented) {
            (Some(s), Some(p)) => constant_time_eq(s.as_bytes(), p.as_bytes()),
            _ => false,
        };
        let admin = is(&self.admin_token);
        let user = admin || is(&self.api_key);
        match access {
            Access::Admin if admin => Ok(()),
            // Without an admin token configured, admin routes take the API key.
            Access::Admin if self.admin_token.is_none() && user => Ok(()),
            Access::Admin if user => Err(Denied::Forbidden),
            Access::User if user => Ok(()),
            _ => Err(Denied::Unauthenticated),
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` header. The scheme is matched without regard
/// to case (RFC 7235 §2.1: `bearer`, `BEARER` and `Bearer` are the same scheme).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Comparison whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    const KEY: &str = "application-key-0123";
    const ADMIN: &str = "administrator-token-0123";

    #[test]
    fn routes_need_the_right_credential() {
        let auth = Auth::new(Some(KEY.into()), Some(ADMIN.into()));
        let search = required(&Method::POST, "/api/v1/search");
        let delete = required(&Method::DELETE, "/api/v1/documents/d1");
        assert_eq!(required(&Method::GET, "/readyz"), Access::Public);
        assert_eq!(required(&Method::GET, "/api/v1/documents/d1"), Access::User);
        assert_eq!(delete, Access::Admin);
        assert_eq!(auth.check(Access::Public, None), Ok(()));
        assert_eq!(auth.check(search, None), Err(Denied::Unauthenticated));
        assert_eq!(
            auth.check(search, Some("wrong")),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(auth.check(search, Some(KEY)), Ok(()));
        assert_eq!(auth.check(search, Some(ADMIN)), Ok(()));
        assert_eq!(auth.check(delete, Some(KEY)), Err(Denied::Forbidden));
        assert_eq!(auth.check(delete, Some(ADMIN)), Ok(()));
        // Without an admin token, the API key may do everything.
        let key_only = Auth::new(Some(KEY.into()), None);
        assert_eq!(key_only.check(delete, Some(KEY)), Ok(()));
        // No keys at all: open (standalone default).
        assert_eq!(Auth::default().check(delete, None), Ok(()));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for h in ["Bearer k-1", "bearer k-1", "BEARER   k-1 ", "beArEr\tk-1"] {
            assert_eq!(bearer_token(h), Some("k-1"), "{h:?}");
        }
        for h in ["Basic k-1", "Bearer", "Bearer  ", "Bearerk-1", ""] {
            assert_eq!(bearer_token(h), None, "{h:?}");
        }
    }

    #[test]
    fn cluster_mode_refuses_to_run_without_a_key_and_short_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let none = AuthConfig::default();
        assert!(Auth::load_from(&none, true, None, None).is_err());
        assert!(Auth::load_from(&none, false, None, None).is_ok());
        assert!(Auth::load_from(&none, true, Some(KEY.into()), None).is_ok());
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let c = AuthConfig {
            api_key_file: Some(short),
            admin_token_file: None,
        };
        assert!(Auth::load_from(&c, true, None, None).is_err());
        let good = dir.path().join("good");
        std::fs::write(&good, format!("{KEY}\n")).unwrap();
        let c = AuthConfig {
            api_key_file: Some(good),
            admin_token_file: None,
        };
        let auth = Auth::load_from(&c, true, None, None).unwrap();
        assert_eq!(auth.check(Access::User, Some(KEY)), Ok(()));
    }
}
