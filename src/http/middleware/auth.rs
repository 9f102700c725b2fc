//! Authentication at the HTTP edge: reads `Authorization`, asks the
//! [`Authenticator`] and turns the outcome into 401 (with `WWW-Authenticate`),
//! 403 or 503. Takes a header map, so that a middleware (`ServiceRequest`) and a
//! handler (`HttpRequest`) can both use it.

use actix_web::http::header::{self, HeaderMap};

use crate::auth::{Action, AuthError, Authenticator, Principal};
use crate::http::error::ApiError;

/// Who is calling, or the 401 / 503 to answer with.
pub async fn authenticate(
    authenticator: &Authenticator,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    let authorization = match headers.get(header::AUTHORIZATION).map(|v| v.to_str()) {
        None => None,
        Some(Ok(value)) => Some(value),
        Some(Err(_)) => {
            return Err(unauthorized(
                authenticator,
                AuthError::Malformed("the Authorization header is not ASCII text"),
            ))
        }
    };
    authenticator
        .authenticate(authorization)
        .await
        .map_err(|error| unauthorized(authenticator, error))
}

/// Authenticates and checks that the caller may do `action` in `tenant`.
pub async fn authorize(
    authenticator: &Authenticator,
    headers: &HeaderMap,
    tenant: &str,
    action: Action,
) -> Result<Principal, ApiError> {
    let principal = authenticate(authenticator, headers).await?;
    if principal.may(tenant, action) {
        Ok(principal)
    } else {
        Err(forbidden(&principal, tenant, action))
    }
}

/// The answer to a failed authentication.
pub fn unauthorized(authenticator: &Authenticator, error: AuthError) -> ApiError {
    if error.is_unavailable() {
        return ApiError::Unavailable(error.to_string());
    }
    ApiError::Unauthorized {
        challenge: authenticator.challenge(&error),
        message: error.to_string(),
    }
}

/// The answer to an authenticated caller without the permission.
pub fn forbidden(principal: &Principal, tenant: &str, action: Action) -> ApiError {
    tracing::info!(
        subject = %principal.subject,
        tenant,
        %action,
        "request refused: permission missing"
    );
    ApiError::Forbidden(format!(
        "these credentials do not grant {action} on tenant {tenant}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthConfig;
    use crate::index::{Index, IndexOptions};
    use actix_web::http::header::HeaderValue;
    use actix_web::http::StatusCode;
    use actix_web::ResponseError;
    use std::time::Duration;

    fn authenticator(anonymous: &[&str]) -> Authenticator {
        let dir = tempfile::tempdir().unwrap().keep();
        let index = Index::open(
            &format!("sqlite://{}/i.sqlite", dir.display()),
            IndexOptions {
                pool_size: 1,
                busy_timeout: Duration::from_secs(5),
                acquire_timeout: Duration::from_secs(5),
                statement_timeout: Duration::from_secs(5),
                group_commit: true,
            },
        )
        .unwrap();
        let config = AuthConfig {
            anonymous: anonymous.iter().map(|s| s.to_string()).collect(),
            ..AuthConfig::default()
        };
        Authenticator::new(&config, index).unwrap()
    }

    #[tokio::test]
    async fn missing_credentials_answer_401_with_a_challenge() {
        let auth = authenticator(&[]);
        let error = authorize(&auth, &HeaderMap::new(), "default", Action::Read)
            .await
            .unwrap_err();
        let response = error.error_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers().get(header::WWW_AUTHENTICATE).unwrap(),
            "Bearer realm=\"kastell\""
        );

        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("ApiKey kst_AAAA"),
        );
        let response = authorize(&auth, &headers, "default", Action::Read)
            .await
            .unwrap_err()
            .error_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers().get(header::WWW_AUTHENTICATE).unwrap();
        assert!(challenge
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\""));
    }

    #[tokio::test]
    async fn a_missing_permission_answers_403() {
        let auth = authenticator(&["read"]);
        let principal = authorize(&auth, &HeaderMap::new(), "default", Action::Read)
            .await
            .unwrap();
        assert_eq!(principal.subject, "anonymous");
        let error = authorize(&auth, &HeaderMap::new(), "default", Action::Delete)
            .await
            .unwrap_err();
        assert!(matches!(error, ApiError::Forbidden(_)));
        let response = error.error_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
    }

    #[tokio::test]
    async fn an_unreachable_provider_answers_503_without_details() {
        let auth = authenticator(&[]);
        let error = unauthorized(&auth, AuthError::Unavailable("db at 10.0.0.5 down".into()));
        let response = error.error_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = actix_web::body::to_bytes(response.into_body())
            .await
            .unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("10.0.0.5"));
    }
}
