//! Listing every object of a kind one page at a time, as `check --cluster` and the background
//! audit read what a cluster runs: a cluster of any size is never one response, and each page
//! is bounded in time (kube's client retries an overloaded apiserver on its own meanwhile).
use std::fmt::Debug;
use std::time::Duration;

use kube::Resource;
use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;

/// How long one page may take.
pub const PAGE_BUDGET: Duration = Duration::from_secs(60);

/// Why a page could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("cannot list {what}: {source}")]
    List {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("listing {what}: no page within {PAGE_BUDGET:?}")]
    TimedOut { what: &'static str },
}

/// The pages of one list.
pub struct Pages<K> {
    api: Api<K>,
    what: &'static str,
    size: u32,
    token: Option<String>,
    done: bool,
}

impl<K> Pages<K>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    /// Pages of `size` objects of `api`; `what` names them in errors.
    pub fn new(api: Api<K>, what: &'static str, size: u32) -> Self {
        Self {
            api,
            what,
            size,
            token: None,
            done: false,
        }
    }

    /// The next page, or `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Vec<K>>, PageError> {
        if self.done {
            return Ok(None);
        }
        let mut params = ListParams::default().limit(self.size);
        if let Some(token) = &self.token {
            params = params.continue_token(token);
        }
        let what = self.what;
        let page = tokio::time::timeout(PAGE_BUDGET, self.api.list(&params))
            .await
            .map_err(|_| PageError::TimedOut { what })?
            .map_err(|source| PageError::List { what, source })?;
        self.token = page.metadata.continue_.filter(|t| !t.is_empty());
        self.done = self.token.is_none();
        Ok(Some(page.items))
    }
}
