//! Who may have a review answered on the webhook port.
//!
//! Every pod can reach the port, and an answer says what the webhook knows of the review's
//! namespace: that no PDB selects these labels, which class its policy wants, which rules are
//! exempt there. So a review is answered only for the apiserver, known by one of:
//! - its client certificate (`--client-ca`): checked in the handshake, so every caller that got
//!   this far is the apiserver;
//! - the webhook token (`--cert-bootstrap`, or `--webhook-token-file`): a random path segment
//!   that the webhook configurations call (`/mutate/<token>`, `/validate/<token>`). Only who may
//!   read the webhook configurations or the Secret (cluster admins) knows it.
//!
//! Without either, anyone is answered, as before: `serve` on a laptop, and installs that opt
//! out. A refusal is a 403, logged and counted (`refused_total{reason="unauthenticated"}`).
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use arc_swap::ArcSwapOption;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use subtle::ConstantTimeEq as _;

use crate::metrics::{Metrics, ReasonLabels, Refusal};

/// Who sent a review, as far as the webhook can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Proven by its client certificate or the webhook token.
    Apiserver,
    /// Nothing is required of callers: anyone could have sent it.
    Anyone,
}

/// Why a review is not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "the webhook token is not known yet (the certificate bootstrap has not read its Secret)"
    )]
    TokenUnknown,
    #[error(
        "this path is not the webhook's: the apiserver calls the path its webhook configuration names"
    )]
    WrongToken,
}

/// What the webhook port requires of a review's caller.
pub struct Callers {
    /// `--client-ca`: the handshake let only the apiserver in.
    certificates: bool,
    /// `None`: no token required. `Some`: the tokens a path may carry (the current one, and
    /// while one is being replaced, the next), unknown (`None` inside) until read.
    tokens: Option<ArcSwapOption<Vec<String>>>,
}

impl Callers {
    /// No token: with `certificates`, every caller is the apiserver; without, anyone.
    pub fn without_token(certificates: bool) -> Self {
        Self {
            certificates,
            tokens: None,
        }
    }

    /// A token is required, and known once [`Callers::set_tokens`] is called.
    pub fn with_token(certificates: bool) -> Self {
        Self {
            certificates,
            tokens: Some(ArcSwapOption::empty()),
        }
    }

    /// The tokens the webhook configurations' paths may carry from now on (any other is
    /// refused).
    pub fn set_tokens(&self, tokens: &[String]) {
        if let Some(slot) = &self.tokens
            && slot.load().as_deref().map(Vec::as_slice) != Some(tokens)
        {
            if slot.load().is_some() {
                tracing::info!(
                    accepted = tokens.len(),
                    "the webhook tokens changed; any other is refused from now on"
                );
            }
            slot.store(Some(Arc::new(tokens.to_vec())));
        }
    }

    /// Who called `path` (`/mutate`, `/mutate/<token>`).
    pub fn caller(&self, path: &str) -> Result<Caller, Refused> {
        if self.certificates {
            return Ok(Caller::Apiserver);
        }
        let Some(slot) = &self.tokens else {
            return Ok(Caller::Anyone);
        };
        let Some(tokens) = slot.load_full() else {
            return Err(Refused::TokenUnknown);
        };
        let given = path
            .trim_start_matches('/')
            .split_once('/')
            .map_or("", |(_, rest)| rest);
        // Constant time, and every token compared: the answer's timing says nothing of how
        // much of a guess was right.
        let matched = tokens.iter().fold(subtle::Choice::from(0), |any, token| {
            any | given.as_bytes().ct_eq(token.as_bytes())
        });
        if bool::from(matched) {
            Ok(Caller::Apiserver)
        } else {
            Err(Refused::WrongToken)
        }
    }
}

/// The webhook routes' first layer: a review from a caller [`Callers`] refuses gets 403 before
/// its body is read (it takes no memory and no slot); one that is answered carries its
/// [`Caller`] as an extension.
pub async fn require(
    State((callers, metrics)): State<(Arc<Callers>, Arc<Metrics>)>,
    mut request: Request,
    next: Next,
) -> Response {
    match callers.caller(request.uri().path()) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refused) => {
            metrics
                .refused
                .get_or_create(&ReasonLabels {
                    reason: Refusal::Unauthenticated,
                })
                .inc();
            tracing::warn!(reason = Refusal::Unauthenticated.as_str(), message = %refused, "review refused before evaluation");
            // The error body every refusal on this port has.
            let body = axum::Json(serde_json::json!({ "error": refused.to_string() }));
            (StatusCode::FORBIDDEN, body).into_response()
        }
    }
}

/// At most this many tokens in `--webhook-token-file`.
const MAX_TOKENS: usize = 4;

/// Reads the webhook tokens from `path` (`--webhook-token-file`): one to four, separated by
/// whitespace, each 32 to 253 of `a-z 0-9` (each segment of a webhook's service path must be a
/// lowercase RFC 1123 subdomain, or the apiserver refuses the webhook configuration). More
/// than one while a token is replaced: the next is accepted before the paths name it.
pub fn read_tokens(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the webhook token {}", path.display()))?;
    let tokens: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
    if tokens.is_empty() || tokens.len() > MAX_TOKENS {
        bail!(
            "{} holds {} webhook tokens; it needs 1 to {MAX_TOKENS}",
            path.display(),
            tokens.len()
        );
    }
    for token in &tokens {
        if crate::certs::bootstrap::is_token(token) {
            bail!(
                "a webhook token in {} has the form of the bootstrap's own (`sg` and 64 hex digits), which a bootstrap still running would take the paths back from; make another (e.g. `openssl rand -hex 32`)",
                path.display()
            );
        }
        if !(32..=253).contains(&token.len()) {
            bail!(
                "a webhook token in {} has {} characters; it needs 32 to 253",
                path.display(),
                token.len()
            );
        }
        if let Some(c) = token
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        {
            bail!(
                "a webhook token in {} has {c:?}; only a-z and 0-9 go into a webhook's path (e.g. `openssl rand -hex 32`)",
                path.display()
            );
        }
    }
    Ok(tokens)
}

/// Re-reads `--webhook-token-file` every `interval`: new tokens are served from then on; a
/// broken file keeps the last good ones, loudly.
pub async fn watch_token_file(callers: Arc<Callers>, path: PathBuf, interval: Duration) {
    let mut last_error = None;
    loop {
        tokio::time::sleep(interval).await;
        match read_tokens(&path) {
            Ok(tokens) => {
                last_error = None;
                callers.set_tokens(&tokens);
            }
            Err(error) => {
                let error = format!("{error:#}");
                if last_error.as_ref() != Some(&error) {
                    tracing::error!(%error, "keeping the last good webhook token");
                }
                last_error = Some(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdefghij0123456789abcdefghij0123456789abcdef01234567";

    #[test]
    fn with_a_token_only_its_paths_are_the_apiserver() {
        let callers = Callers::with_token(false);
        assert_eq!(callers.caller("/mutate"), Err(Refused::TokenUnknown));
        callers.set_tokens(&[TOKEN.to_owned()]);
        for path in ["/mutate", "/validate", "/mutate/", "/mutate/wrong"] {
            assert_eq!(callers.caller(path), Err(Refused::WrongToken), "{path}");
        }
        // A guess of the right length with one character off.
        let off = format!("/mutate/{}x", &TOKEN[..TOKEN.len() - 1]);
        assert_eq!(callers.caller(&off), Err(Refused::WrongToken));
        assert_eq!(
            callers.caller(&format!("/mutate/{TOKEN}")),
            Ok(Caller::Apiserver)
        );
        assert_eq!(
            callers.caller(&format!("/validate/{TOKEN}")),
            Ok(Caller::Apiserver)
        );
        // A new token replaces the old one; while it is replaced, both are taken.
        callers.set_tokens(&["another".to_owned(), "next".to_owned()]);
        assert_eq!(callers.caller("/mutate/next"), Ok(Caller::Apiserver));
        callers.set_tokens(&["another".to_owned()]);
        assert_eq!(
            callers.caller(&format!("/mutate/{TOKEN}")),
            Err(Refused::WrongToken)
        );
        assert_eq!(callers.caller("/mutate/another"), Ok(Caller::Apiserver));
    }

    #[test]
    fn a_token_file_is_read_with_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let read = |content: &str| {
            std::fs::write(&file, content).unwrap();
            read_tokens(&file).map_err(|e| format!("{e:#}"))
        };
        let good = "0123456789abcdef".repeat(3);
        assert_eq!(read(&format!("{good}\n")), Ok(vec![good.clone()]));
        assert_eq!(
            read(&format!("{good} next{good}\n")),
            Ok(vec![good.clone(), format!("next{good}")])
        );
        for (content, says) in [
            ("", "1 to 4"),
            ("short", "32 to 253"),
            (&format!("{good}X") as &str, "only a-z and 0-9"),
            (
                &format!("sg{}", "0".repeat(64)) as &str,
                "the bootstrap's own",
            ),
            (
                &format!("{good} {good} {good} {good} {good}") as &str,
                "1 to 4",
            ),
        ] {
            let error = read(content).unwrap_err();
            assert!(error.contains(says), "{content}: {error}");
        }
    }

    #[test]
    fn without_a_token_anyone_unless_the_handshake_checked_certificates() {
        let open = Callers::without_token(false);
        assert_eq!(open.caller("/mutate"), Ok(Caller::Anyone));
        assert_eq!(open.caller("/mutate/stale-token"), Ok(Caller::Anyone));
        let certified = Callers::with_token(true);
        assert_eq!(certified.caller("/mutate"), Ok(Caller::Apiserver));
    }
}
