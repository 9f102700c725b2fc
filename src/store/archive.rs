//! The S3 requests object_store has no call for (issue 15): for offline
//! tiers (storage classes whose objects must be restored before they can be
//! read: Glacier Flexible Retrieval, Deep Archive) asking for a restore
//! (RestoreObject) and reading how it goes (the `x-amz-restore` header of
//! HEAD); and for tiers of one bucket prefix, changing an object's storage
//! class in place (CopyObject onto itself). This sends them itself: the URL
//! of an object from object_store's own signer (a presigned HEAD, which also
//! serves the status check), the other requests signed with object_store's
//! public SigV4 authorizer and the credentials of the store's own client. No
//! signing code of ours.

use std::time::{Duration, SystemTime};

use object_store::aws::{AmazonS3, AwsAuthorizer};
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

impl S3Archive {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        s3: AmazonS3,
        region: String,
        bucket: String,
        prefix: ObjectPath,
        days: u32,
        tier: &str,
        retry_after: Duration,
    ) -> Result<Self, StoreError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        Ok(Self {
            s3,
            region,
            bucket,
            prefix,
            http,
            days,
            tier: tier.to_string(),
            retry_after,
        })
    }

    fn full_path(&self, path: &ObjectPath) -> ObjectPath {
        if self.prefix.as_ref().is_empty() {
            path.clone()
        } else {
            self.prefix.parts().chain(path.parts()).collect()
        }
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
        if !crate::config::OFFLINE_S3_CLASSES.contains(&class.as_str()) {
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
        let text = response.text().await.unwrap_or_default();
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
        let text = response.text().await.unwrap_or_default();
        match status {
            // S3 may answer 200 and report an error in the body.
            200 if !text.contains("<Error>") => Ok(()),
            403 if text.contains("InvalidObjectState") => Err(StoreError::Archived),
            404 => Err(StoreError::NotFound),
            status => Err(failed("CopyObject", status, &text)),
        }
    }
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
        // An HTTP date (`Fri, 21 Dec 2012 00:00:00 GMT`); the weekday is not checked.
        .map(|date| date.split_once(", ").map_or(date, |(_, rest)| rest))
        .and_then(|date| {
            chrono::NaiveDateTime::parse_from_str(date.trim(), "%d %b %Y %H:%M:%S GMT").ok()
        })
        .and_then(|date| u64::try_from(date.and_utc().timestamp()).ok())
        .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
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
    let error = std::io::Error::other(format!("S3 {what} answered {status} {code}"));
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
