//! Listings: a repository's tags (paged) and a registry's catalog.

use reqwest::Method;
use url::Url;

use super::{MAX_LISTED_TAGS, TagsPage, next_link, scope};
use crate::client::{Client, RegistryRoot};
use crate::error::{Error, ErrorKind, Result};
use crate::transport::Request;
use oci_image::Repository;

impl Client {
    /// One page of tags; `n` and `last` as the spec defines them.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for an unknown repository.
    pub async fn tags_page(&self, repo: &Repository, n: Option<usize>, last: Option<&str>) -> Result<TagsPage> {
        let mut url = self.url(repo, "tags/list").await?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(n) = n {
                q.append_pair("n", &n.to_string());
            }
            if let Some(l) = last {
                q.append_pair("last", l);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.tags_at(repo, url).await
    }

    async fn tags_at(&self, repo: &Repository, url: Url) -> Result<TagsPage> {
        #[derive(serde::Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let req = Request::new(Method::GET, url.clone(), vec![scope(repo, "pull")]);
        let doc = self.get_document(repo, &req, &format!("listing tags of {}", repo.path()), &[]).await?;
        let next = next_link(&doc.headers).map(|l| url.join(&l).map(|u| u.to_string())).transpose().ok().flatten();
        let tags: Tags = serde_json::from_slice(&doc.body)
            .map_err(|e| Error::new(ErrorKind::Protocol, format!("invalid tag list: {e}")))?;
        Ok(TagsPage { tags: tags.tags.unwrap_or_default(), next })
    }

    /// Every tag, following `Link` pagination. A registry that pages
    /// forever is cut off: a `Link` seen before, a page that adds no new tag,
    /// more than [`MAX_LISTED_TAGS`] tags or 10,000 pages end the listing
    /// with an error.
    ///
    /// # Errors
    /// [`ErrorKind::Protocol`] for a pagination loop or an endless listing; HTTP errors.
    pub async fn list_tags(&self, repo: &Repository) -> Result<Vec<String>> {
        let mut page = self.tags_page(repo, None, None).await?;
        let mut all = Vec::new();
        let mut seen_tags = std::collections::HashSet::new();
        let mut seen_urls = std::collections::BTreeSet::new();
        loop {
            let mut fresh = 0usize;
            for t in page.tags.drain(..) {
                if seen_tags.insert(t.clone()) {
                    all.push(t);
                    fresh += 1;
                }
            }
            if all.len() > MAX_LISTED_TAGS {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("tag listing of {} goes on past {MAX_LISTED_TAGS} tags", repo.path()),
                ));
            }
            let Some(next) = page.next.take() else { break };
            if fresh == 0 {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("tag pagination of {} loops: a page with a next link brought no new tag", repo.path()),
                ));
            }
            if !seen_urls.insert(next.clone()) || seen_urls.len() > 10_000 {
                return Err(Error::new(ErrorKind::Protocol, format!("tag pagination of {} loops", repo.path())));
            }
            let url = Url::parse(&next).map_err(|_| Error::new(ErrorKind::Protocol, "invalid Link URL"))?;
            let base = self.base_url(repo).await?;
            if url.origin() != base.origin() {
                return Err(Error::new(ErrorKind::Protocol, "tag pagination Link points at another host"));
            }
            page = self.tags_at(repo, url).await?;
        }
        Ok(all)
    }

    /// The repositories of a registry (`/v2/_catalog`, following `Link`;
    /// a `Link` seen before or more than [`MAX_LISTED_TAGS`] names end it
    /// with an error).
    ///
    /// # Errors
    /// HTTP errors; many registries refuse the catalog; [`ErrorKind::Protocol`]
    /// for a pagination loop.
    pub async fn catalog(&self, registry: &str) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Catalog {
            #[serde(default)]
            repositories: Vec<String>,
        }
        let repo = RegistryRoot(registry.to_owned());
        let mut url =
            self.base_url(&repo).await?.join("_catalog").map_err(|_| Error::new(ErrorKind::Invalid, "catalog URL"))?;
        let mut all = Vec::new();
        let mut seen_urls = std::collections::BTreeSet::new();
        for _ in 0..10_000 {
            if !seen_urls.insert(url.to_string()) || all.len() > MAX_LISTED_TAGS {
                break;
            }
            let req = Request::new(Method::GET, url.clone(), vec!["registry:catalog:*".to_owned()]);
            let doc = self.get_document(&repo, &req, "listing the catalog", &[]).await?;
            let next = next_link(&doc.headers);
            let mut c: Catalog = serde_json::from_slice(&doc.body)
                .map_err(|e| Error::new(ErrorKind::Protocol, format!("invalid catalog: {e}")))?;
            all.append(&mut c.repositories);
            match next {
                Some(n) => url = url.join(&n).map_err(|_| Error::new(ErrorKind::Protocol, "invalid Link URL"))?,
                None => return Ok(all),
            }
        }
        Err(Error::new(ErrorKind::Protocol, "catalog pagination loops"))
    }
}
