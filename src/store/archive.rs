//! The cloud requests object_store has no call for (issue 15). On S3: for offline
//! tiers (storage classes whose objects must be restored before they can be
//! read: Glacier Flexible Retrieval, Deep Archive) asking for a restore
//! (RestoreObject) and reading how it goes (the `x-amz-restore` header of
//! HEAD); and for tiers of one bucket prefix, changing an object's storage
//! class in place (CopyObject onto itself). On Azure: rehydrating a blob of
//! the Archive tier (Set Blob Tier) and reading how it goes. This sends them itself: the URL
//! of an object from object_store's own signer (a presigned HEAD, which also
//! serves the status check), the other requests signed with object_store's
//! public SigV4 authorizer and the credentials of the store's own client. No
//! signing code of ours.

use std::time::{Duration, SystemTime};

use object_store::aws::{AmazonS3, AwsAuthorizer};
use object_store::azure::{AzureAuthorizer, MicrosoftAzure};
use object_store::client::HttpRequestBody;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;

use super::StoreError;

/// Where an object of an offline tier stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreState {
    /// Readable without a restore (not in an offline class).
    Online,
    /// In the archive, no restore asked for (or the restored copy expired).
    Archived,
    /// A restore is under way.
    InProgress,
    /// Restored: readable until then (when the store says).
    Restored { until: Option<SystemTime> },
}

/// The S3 storage classes whose objects a read needs restored first, as HEAD
/// names them (the configuration checks store classes against its own list:
/// the store knows S3's answers, not the configuration).
const ARCHIVE_CLASSES: [&str; 2] = ["GLACIER", "DEEP_ARCHIVE"];

/// Largest object CopyObject copies in one request (5 GiB); a larger one is
/// rewritten through a streamed upload instead.
pub(super) const MAX_COPY_IN_PLACE: u64 = 5 * 1024 * 1024 * 1024;

/// The requests of one S3 store that object_store has no call for.
#[derive(Debug)]
pub(super) struct S3Archive {
    s3: AmazonS3,
    region: String,
    bucket: String,
    /// The prefix of the store's URL: object paths are under it.
    prefix: ObjectPath,
    http: reqwest::Client,
    days: u32,
    tier: String,
    /// A retrieval waiting for a restore is told to come back after this.
    pub(super) retry_after: Duration,
}

/// How long a request to the store may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The most of an answer's body read (an error document is a few hundred
/// bytes; a store answering more is not believed further).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The client the requests of both clouds are sent with.
fn http_client() -> Result<reqwest::Client, StoreError> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))
}

/// `path` under a store's URL prefix: the object's path in its bucket or container.
fn under_prefix(prefix: &ObjectPath, path: &ObjectPath) -> ObjectPath {
    if prefix.as_ref().is_empty() {
        path.clone()
    } else {
        prefix.parts().chain(path.parts()).collect()
    }
}

/// The start of an answer's body as text, at most [`MAX_ANSWER_BYTES`].
async fn answer_text(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ANSWER_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_ANSWER_BYTES {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

impl S3Archive {
    pub(super) fn new(
        s3: AmazonS3,
        region: String,
        bucket: String,
        prefix: ObjectPath,
        tier: &super::OfflineTier,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            s3,
            region,
            bucket,
            prefix,
            http: http_client()?,
            days: tier.restore_days,
            tier: tier.restore_tier.clone(),
            retry_after: tier.retry_after,
        })
    }

    fn full_path(&self, path: &ObjectPath) -> ObjectPath {
        under_prefix(&self.prefix, path)
    }

    /// A presigned URL of the object for `method`.
    async fn url(
        &self,
        method: reqwest::Method,
        path: &ObjectPath,
    ) -> Result<url::Url, StoreError> {
        Ok(self
            .s3
            .signed_url(method, &self.full_path(path), Duration::from_secs(300))
            .await?)
    }

    /// Where the object stands (a HEAD).
    pub(super) async fn state(&self, path: &ObjectPath) -> Result<RestoreState, StoreError> {
        let url = self.url(reqwest::Method::HEAD, path).await?;
        let response = self.http.head(url).send().await.map_err(unavailable)?;
        match response.status().as_u16() {
            200 => {}
            404 => return Err(StoreError::NotFound),
            status => return Err(failed("HEAD", status, "")),
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let class = header("x-amz-storage-class").unwrap_or_else(|| "STANDARD".into());
        if !ARCHIVE_CLASSES.contains(&class.as_str()) {
            return Ok(RestoreState::Online);
        }
        Ok(parse_restore_header(header("x-amz-restore").as_deref()))
    }

    /// Asks for the object's restore; says where it stands afterwards.
    pub(super) async fn request(&self, path: &ObjectPath) -> Result<RestoreState, StoreError> {
        let mut url = self.url(reqwest::Method::HEAD, path).await?;
        url.set_query(Some("restore"));
        let body = format!(
            "<RestoreRequest xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Days>{}</Days>\
             <GlacierJobParameters><Tier>{}</Tier></GlacierJobParameters></RestoreRequest>",
            self.days, self.tier
        );
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(url.as_str())
            .header("content-type", "application/xml")
            .body(HttpRequestBody::from(body.clone()))
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        let credential = self.s3.credentials().get_credential().await?;
        AwsAuthorizer::new(&credential, "s3", &self.region).authorize(&mut request, None);
        let response = self
            .http
            .post(url)
            .headers(request.headers().clone())
            .body(body)
            .send()
            .await
            .map_err(unavailable)?;
        let status = response.status().as_u16();
        let text = answer_text(response).await;
        match status {
            // Started.
            202 => Ok(RestoreState::InProgress),
            // Restored already (the call extended its days).
            200 => Ok(RestoreState::Restored { until: None }),
            409 if text.contains("RestoreAlreadyInProgress") => Ok(RestoreState::InProgress),
            // Not in an archive class: nothing to restore.
            403 if text.contains("InvalidObjectState") => Ok(RestoreState::Online),
            404 => Err(StoreError::NotFound),
            status => Err(failed("RestoreObject", status, &text)),
        }
    }
}

impl S3Archive {
    /// Sets the storage class of the object at `path` to `class`, in place:
    /// S3 copies it onto itself (CopyObject, metadata kept), the bytes
    /// unchanged. At most [`MAX_COPY_IN_PLACE`] bytes.
    pub(super) async fn copy_in_place(
        &self,
        path: &ObjectPath,
        class: &str,
    ) -> Result<(), StoreError> {
        let mut url = self.url(reqwest::Method::HEAD, path).await?;
        url.set_query(None);
        let source = format!("{}/{}", self.bucket, self.full_path(path));
        let mut request = http::Request::builder()
            .method(http::Method::PUT)
            .uri(url.as_str())
            .header("x-amz-copy-source", source)
            .header("x-amz-storage-class", class)
            .header("x-amz-metadata-directive", "COPY")
            .body(HttpRequestBody::empty())
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        let credential = self.s3.credentials().get_credential().await?;
        AwsAuthorizer::new(&credential, "s3", &self.region).authorize(&mut request, None);
        let response = self
            .http
            .put(url)
            .headers(request.headers().clone())
            .send()
            .await
            .map_err(unavailable)?;
        let status = response.status().as_u16();
        let text = answer_text(response).await;
        match status {
            // S3 may answer 200 and report an error in the body.
            200 if !text.contains("<Error>") => Ok(()),
            // The source is in an archive class and not restored.
            403 if text.contains("InvalidObjectState")
                || text.contains("ObjectNotInActiveTierError") =>
            {
                Err(StoreError::Archived)
            }
            404 => Err(StoreError::NotFound),
            status => Err(failed("CopyObject", status, &text)),
        }
    }
}

/// An offline tier of either cloud: where its object stands, asking for its
/// restore, and putting it back in the archive once its time is up.
#[derive(Debug, Clone, Copy)]
pub(super) enum Archive<'a> {
    S3(&'a S3Archive),
    Azure(&'a AzureArchive),
}

impl Archive<'_> {
    pub(super) async fn state(&self, path: &ObjectPath) -> Result<RestoreState, StoreError> {
        match self {
            Archive::S3(s3) => s3.state(path).await,
            Archive::Azure(azure) => azure.state(path).await,
        }
    }

    pub(super) async fn request(&self, path: &ObjectPath) -> Result<RestoreState, StoreError> {
        match self {
            Archive::S3(s3) => s3.request(path).await,
            Archive::Azure(azure) => azure.request(path).await,
        }
    }

    /// Puts a restored object back in the archive: S3 does it itself when
    /// the restored copy expires; an Azure blob rehydrated to Hot stays there
    /// until its tier is set to Archive again.
    pub(super) async fn rearchive(&self, path: &ObjectPath) -> Result<(), StoreError> {
        match self {
            Archive::S3(_) => Ok(()),
            Archive::Azure(azure) => azure.set_tier(path, "Archive", None).await.map(|_| ()),
        }
    }

    pub(super) fn retry_after(&self) -> Duration {
        match self {
            Archive::S3(s3) => s3.retry_after,
            Archive::Azure(azure) => azure.retry_after,
        }
    }
}

/// An Azure store in the Archive tier: a blob is rehydrated to Hot by setting
/// its tier (Set Blob Tier, with a rehydrate priority), its state read from
/// the `x-ms-access-tier` and `x-ms-archive-status` headers of HEAD. Requests
/// signed with object_store's public Shared Key authorizer and the store's
/// own credentials; the URL of a blob from its signer.
#[derive(Debug)]
pub(super) struct AzureArchive {
    azure: MicrosoftAzure,
    /// The storage account (as Shared Key signs it).
    account: String,
    prefix: ObjectPath,
    http: reqwest::Client,
    /// Days a rehydrated blob stays Hot before it is archived again.
    days: u32,
    /// `Standard` or `High`.
    priority: String,
    pub(super) retry_after: Duration,
}

impl AzureArchive {
    pub(super) fn new(
        azure: MicrosoftAzure,
        account: String,
        prefix: ObjectPath,
        tier: &super::OfflineTier,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            azure,
            account,
            prefix,
            http: http_client()?,
            days: tier.restore_days,
            priority: tier.restore_tier.clone(),
            retry_after: tier.retry_after,
        })
    }

    /// The blob's URL, without a signature.
    async fn url(&self, path: &ObjectPath) -> Result<url::Url, StoreError> {
        let mut url = self
            .azure
            .signed_url(
                reqwest::Method::HEAD,
                &under_prefix(&self.prefix, path),
                Duration::from_secs(300),
            )
            .await?;
        url.set_query(None);
        Ok(url)
    }

    /// Sends `method` to the blob (with `query`), signed; returns the status,
    /// the headers and the body.
    async fn send(
        &self,
        method: http::Method,
        path: &ObjectPath,
        query: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, http::HeaderMap, String), StoreError> {
        let mut url = self.url(path).await?;
        url.set_query(query);
        let mut builder = http::Request::builder()
            .method(method.clone())
            .uri(url.as_str());
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let mut request = builder
            .body(HttpRequestBody::empty())
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        let credential = self.azure.credentials().get_credential().await?;
        AzureAuthorizer::new(&credential, &self.account).authorize(&mut request);
        // A SAS credential signs by query pairs: the request's own URI.
        let response = self
            .http
            .request(method, request.uri().to_string())
            .headers(request.headers().clone())
            .send()
            .await
            .map_err(unavailable)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = answer_text(response).await;
        Ok((status, headers, text))
    }

    /// Where the blob stands (a HEAD).
    async fn state(&self, path: &ObjectPath) -> Result<RestoreState, StoreError> {
        let (status, headers, _) = self.send(http::Method::HEAD, path, None, &[]).await?;
        match status {
            200 => {}
            404 => return Err(StoreError::NotFound),
            status => return Err(failed("HEAD", status, "")),
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let tier = header("x-ms-access-tier").unwrap_or("Hot");
        if tier.eq_ignore_ascii_case("archive") {
            let pending =
                header("x-ms-archive-status").is_some_and(|s| s.starts_with("rehydrate-pending"));
            return Ok(if pending {
                RestoreState::InProgress
            } else {
                RestoreState::Archived
            });
        }
        // Rehydrated: readable until it is archived again, `days` after the
        // change of tier.
        let until = header("x-ms-access-tier-change-time")
            .and_then(http_date)
            .map(|changed| changed + Duration::from_secs(u64::from(self.days) * 86_400));
        Ok(RestoreState::Restored { until })
    }

    /// Asks for the blob's rehydration to Hot.
    async fn request(&self, path: &ObjectPath) -> Result<RestoreState, StoreError> {
        let priority = self.priority.clone();
        let (status, text) = self.set_tier(path, "Hot", Some(&priority)).await?;
        match status {
            202 => Ok(RestoreState::InProgress),
            // Done at once (or it was not archived): readable now.
            200 => self.state(path).await,
            409 if text.contains("BlobBeingRehydrated") => Ok(RestoreState::InProgress),
            status => Err(failed("Set Blob Tier", status, &text)),
        }
    }

    /// Sets the blob's access tier (Set Blob Tier); returns the status and body.
    async fn set_tier(
        &self,
        path: &ObjectPath,
        tier: &str,
        priority: Option<&str>,
    ) -> Result<(u16, String), StoreError> {
        let mut headers = vec![("x-ms-access-tier", tier)];
        if let Some(priority) = priority {
            headers.push(("x-ms-rehydrate-priority", priority));
        }
        let (status, _, text) = self
            .send(http::Method::PUT, path, Some("comp=tier"), &headers)
            .await?;
        match status {
            200 | 202 | 409 => Ok((status, text)),
            404 => Err(StoreError::NotFound),
            status => Err(failed("Set Blob Tier", status, &text)),
        }
    }
}

/// An HTTP date (`Fri, 21 Dec 2012 00:00:00 GMT`) as a time; the weekday is
/// not checked.
fn http_date(date: &str) -> Option<SystemTime> {
    let date = date.split_once(", ").map_or(date, |(_, rest)| rest);
    let time = chrono::NaiveDateTime::parse_from_str(date.trim(), "%d %b %Y %H:%M:%S GMT").ok()?;
    let secs = u64::try_from(time.and_utc().timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// The state an `x-amz-restore` header says, for an object in an archive class.
pub(super) fn parse_restore_header(header: Option<&str>) -> RestoreState {
    let Some(header) = header else {
        return RestoreState::Archived;
    };
    if header.contains("ongoing-request=\"true\"") {
        return RestoreState::InProgress;
    }
    let until = header
        .split("expiry-date=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(http_date);
    match until {
        Some(until) if until <= SystemTime::now() => RestoreState::Archived,
        until => RestoreState::Restored { until },
    }
}

fn unavailable(error: reqwest::Error) -> StoreError {
    StoreError::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        error.without_url(),
    ))
}

fn failed(what: &str, status: u16, body: &str) -> StoreError {
    let code = body
        .split("<Code>")
        .nth(1)
        .and_then(|rest| rest.split("</Code>").next())
        .unwrap_or("");
    let error = std::io::Error::other(format!("{what} answered {status} {code}"));
    if status >= 500 {
        StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            error,
        ))
    } else {
        StoreError::Io(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restore_header_says_where_an_object_stands() {
        assert_eq!(parse_restore_header(None), RestoreState::Archived);
        assert_eq!(
            parse_restore_header(Some("ongoing-request=\"true\"")),
            RestoreState::InProgress
        );
        let ready = parse_restore_header(Some(
            "ongoing-request=\"false\", expiry-date=\"Fri, 21 Dec 2112 00:00:00 GMT\"",
        ));
        let RestoreState::Restored { until: Some(until) } = ready else {
            panic!("{ready:?}");
        };
        assert!(until > SystemTime::now());
        // A copy that expired is in the archive again.
        assert_eq!(
            parse_restore_header(Some(
                "ongoing-request=\"false\", expiry-date=\"Fri, 21 Dec 2012 00:00:00 GMT\""
            )),
            RestoreState::Archived
        );
    }
}
