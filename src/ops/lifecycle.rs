//! `bookworm crawls list|pause|resume|delete`: the crawl lifecycle, through the HTTP API
//! like `seed` and `status` (so the rules exist once, in [`crate::api`], and the calls need
//! `API_TOKEN`: `read` to list, `write` for the rest).
//!
//! `delete` is `DELETE /crawls/{id}?purge=true` (a plain `DELETE` cancels, as the contract
//! says): it removes a done or cancelled crawl's state at once, summary included; a crawl
//! with work ahead is refused unless `--force`, which cancels it first.

use reqwest::StatusCode;

use super::crawls::{ApiClient, CrawlsError, ErrorBody, state_name, unexpected};
use crate::crawl::store::{CrawlPage, CrawlState, CrawlStatus};

impl ApiClient {
    /// One page of crawls, newest first (`GET /crawls`).
    pub async fn list(
        &self,
        state: Option<CrawlState>,
        limit: Option<usize>,
        after: Option<&str>,
    ) -> Result<CrawlPage, CrawlsError> {
        let mut url = self.base.join("crawls")?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(state) = state {
                query.append_pair("state", state.as_str());
            }
            if let Some(limit) = limit {
                query.append_pair("limit", &limit.to_string());
            }
            if let Some(after) = after {
                query.append_pair("after", after);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let response = self.http.get(url).send().await?;
        match response.status() {
            StatusCode::OK => Ok(response.json().await?),
            StatusCode::BAD_REQUEST => Err(CrawlsError::Rejected {
                error: error_text(response).await,
                seed: None,
            }),
            status => Err(unexpected(status, response).await),
        }
    }

    /// Pauses the crawl (`POST /crawls/{id}/pause`).
    pub async fn pause(&self, crawl_id: &str) -> Result<CrawlStatus, CrawlsError> {
        self.act(crawl_id, "pause").await
    }

    /// Resumes the crawl (`POST /crawls/{id}/resume`).
    pub async fn resume(&self, crawl_id: &str) -> Result<CrawlStatus, CrawlsError> {
        self.act(crawl_id, "resume").await
    }

    async fn act(&self, crawl_id: &str, action: &str) -> Result<CrawlStatus, CrawlsError> {
        let url = self.crawl_url(crawl_id, Some(action))?;
        let response = self.http.post(url).send().await?;
        match response.status() {
            StatusCode::OK => Ok(response.json().await?),
            StatusCode::NOT_FOUND => Err(CrawlsError::NotFound(crawl_id.to_owned())),
            StatusCode::CONFLICT => Err(CrawlsError::Conflict(error_text(response).await)),
            status => Err(unexpected(status, response).await),
        }
    }

    /// Deletes a finished crawl's state (`DELETE /crawls/{id}?purge=true`); `force`
    /// cancels a crawl with work ahead first.
    pub async fn delete(&self, crawl_id: &str, force: bool) -> Result<(), CrawlsError> {
        let mut url = self.crawl_url(crawl_id, None)?;
        url.query_pairs_mut().append_pair("purge", "true");
        if force {
            url.query_pairs_mut().append_pair("force", "true");
        }
        let response = self.http.delete(url).send().await?;
        match response.status() {
            StatusCode::OK => Ok(()),
            StatusCode::NOT_FOUND => Err(CrawlsError::NotFound(crawl_id.to_owned())),
            StatusCode::CONFLICT => Err(CrawlsError::Conflict(format!(
                "{} (pass --force to cancel and delete it)",
                error_text(response).await
            ))),
            status => Err(unexpected(status, response).await),
        }
    }
}

async fn error_text(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap_or_default();
    serde_json::from_str::<ErrorBody>(&text)
        .map(|e| e.error)
        .unwrap_or(text)
}

/// One line per crawl for `bookworm crawls list`: id, state, fetched, in flight, created,
/// seeds.
pub fn render_list(page: &CrawlPage) -> String {
    let mut out = format!(
        "{:<38}{:<11}{:>9}{:>11}  {:<27}seeds\n",
        "crawl", "state", "fetched", "in flight", "created"
    );
    for c in &page.crawls {
        out.push_str(&format!(
            "{:<38}{:<11}{:>9}{:>11}  {:<27}{}\n",
            c.crawl_id,
            state_name(c.state),
            c.counters.fetched,
            c.counters.in_flight,
            c.created_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            c.seeds.join(", ")
        ));
    }
    if let Some(next) = &page.next {
        out.push_str(&format!("more: --after {next}\n"));
    }
    out
}
