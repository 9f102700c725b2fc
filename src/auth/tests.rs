//! The authenticator end to end: JWTs signed with a key made here (ES256, ring),
//! the JWKS from a file and from a loopback HTTP server that rotates its keys,
//! and API keys on SQLite and PostgreSQL.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use super::*;
use crate::config::JwtConfig;
use crate::index::IndexOptions;

const ISSUER: &str = "https://login.example.test/realms/hospital";
const AUDIENCE: &str = "kastell";

/// An ES256 key pair, and its public half as a JWK.
struct TestKey {
    kid: String,
    pkcs8: Vec<u8>,
    jwk: Value,
}

fn test_key(kid: &str) -> TestKey {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    // The uncompressed point: 0x04, then x and y (32 bytes each).
    let point = pair.public_key().as_ref();
    assert_eq!((point.len(), point[0]), (65, 4));
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    TestKey {
        kid: kid.into(),
        pkcs8: pkcs8.as_ref().to_vec(),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }),
    }
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims of a good token, to be modified by each test.
fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now(),
        "exp": now() + 600,
        "roles": ["kastell:default:read", "uma_authorization"],
        "scope": "openid kastell:*:write",
    })
}

fn sign_as(key: &TestKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&key.pkcs8)).unwrap()
}

fn sign(key: &TestKey, claims: &Value) -> String {
    sign_as(key, Some(&key.kid), claims)
}

fn sqlite_index() -> Index {
    let dir = tempfile::tempdir().unwrap().keep();
    Index::open(&format!("sqlite://{}/i.sqlite", dir.display()), options()).unwrap()
}

fn options() -> IndexOptions {
    IndexOptions {
        pool_size: 2,
        busy_timeout: Duration::from_secs(5),
        acquire_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(30),
        group_commit: true,
    }
}

fn tuning(min_refetch: Duration) -> Tuning {
    Tuning {
        api_key_cache: Duration::from_secs(30),
        jwks_min_refetch: min_refetch,
        jwks_fetch_timeout: Duration::from_secs(5),
    }
}

fn jwt_config(jwks_file: &str, jwks_url: &str) -> AuthConfig {
    AuthConfig {
        anonymous: vec![],
        api_key_cache_secs: 30,
        jwt: JwtConfig {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            jwks_file: jwks_file.into(),
            jwks_url: jwks_url.into(),
            ..JwtConfig::default()
        },
    }
}

/// An authenticator that trusts `keys` through a JWKS file.
fn file_authenticator(keys: &[&TestKey]) -> Authenticator {
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks(keys)).unwrap();
    Authenticator::with_tuning(
        &jwt_config(path.to_str().unwrap(), ""),
        sqlite_index(),
        tuning(Duration::ZERO),
    )
    .unwrap()
}

async fn bearer(auth: &Authenticator, token: &str) -> Result<Principal, AuthError> {
    auth.authenticate(Some(&format!("Bearer {token}"))).await
}

#[tokio::test]
async fn a_valid_token_carries_its_roles_and_scopes() {
    let key = test_key("k1");
    let auth = file_authenticator(&[&key]);
    let principal = bearer(&auth, &sign(&key, &claims())).await.unwrap();
    assert_eq!(principal.kind, PrincipalKind::Token);
    assert_eq!(principal.subject, "alice");
    let grants: Vec<String> = principal.grants.iter().map(|g| g.to_string()).collect();
    assert_eq!(grants, ["kastell:default:read", "kastell:*:write"]);
    assert!(principal.may("default", Action::Read));
    assert!(principal.may("default", Action::Write));
    assert!(principal.may("other", Action::Write));
    assert!(!principal.may("other", Action::Read));
    assert!(!principal.may("default", Action::Delete));
    assert!(!principal.may("default", Action::Admin));
    // The scheme is case-insensitive.
    let lower = auth
        .authenticate(Some(&format!("bearer {}", sign(&key, &claims()))))
        .await;
    assert!(lower.is_ok());
}

#[tokio::test]
async fn a_token_signed_by_another_key_is_refused() {
    let trusted = test_key("k1");
    let impostor = test_key("k1");
    let auth = file_authenticator(&[&trusted]);
    let forged = sign(&impostor, &claims());
    assert_eq!(bearer(&auth, &forged).await, Err(AuthError::BadSignature));
    // A payload swapped under a genuine signature fails the same way.
    let genuine = sign(&trusted, &claims());
    let mut more = claims();
    more["roles"] = json!(["kastell:*:*"]);
    let other = sign(&trusted, &more);
    let parts: Vec<&str> = genuine.split('.').collect();
    let other_payload = other.split('.').nth(1).unwrap();
    let spliced = format!("{}.{}.{}", parts[0], other_payload, parts[2]);
    assert_eq!(bearer(&auth, &spliced).await, Err(AuthError::BadSignature));
}

#[tokio::test]
async fn time_issuer_and_audience_are_checked() {
    let key = test_key("k1");
    let auth = file_authenticator(&[&key]);
    let with = |name: &str, value: Value| {
        let mut c = claims();
        c[name] = value;
        sign(&key, &c)
    };
    // Leeway is 30 s by default.
    assert_eq!(
        bearer(&auth, &with("exp", json!(now() - 120))).await,
        Err(AuthError::Expired)
    );
    assert!(bearer(&auth, &with("exp", json!(now() - 10))).await.is_ok());
    assert_eq!(
        bearer(&auth, &with("nbf", json!(now() + 600))).await,
        Err(AuthError::NotYetValid)
    );
    assert!(bearer(&auth, &with("nbf", json!(now() + 10))).await.is_ok());
    assert_eq!(
        bearer(&auth, &with("iss", json!("https://evil.example.test"))).await,
        Err(AuthError::WrongIssuer)
    );
    assert_eq!(
        bearer(&auth, &with("aud", json!("another-app"))).await,
        Err(AuthError::WrongAudience)
    );
    assert!(
        bearer(&auth, &with("aud", json!(["another-app", AUDIENCE])))
            .await
            .is_ok()
    );
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert!(matches!(
        bearer(&auth, &sign(&key, &no_exp)).await,
        Err(AuthError::Malformed(_))
    ));
}

#[tokio::test]
async fn unknown_keys_and_foreign_algorithms_are_refused() {
    let key = test_key("k1");
    let auth = file_authenticator(&[&key]);
    let unknown = sign_as(&key, Some("k-unknown"), &claims());
    assert_eq!(bearer(&auth, &unknown).await, Err(AuthError::UnknownKey));
    // No kid: the only ES256 key is used.
    assert!(bearer(&auth, &sign_as(&key, None, &claims())).await.is_ok());
    // HS256 "signed" with anything: refused before any key is looked at.
    let hmac = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(b"public key bytes"),
    )
    .unwrap();
    assert!(matches!(
        bearer(&auth, &hmac).await,
        Err(AuthError::Malformed(_))
    ));
    // alg "none" is no algorithm we know of.
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&claims().to_string())
    );
    assert!(matches!(
        bearer(&auth, &none).await,
        Err(AuthError::Malformed(_))
    ));
    assert!(matches!(
        bearer(&auth, "not-a-jwt").await,
        Err(AuthError::Malformed(_))
    ));
}

#[tokio::test]
async fn credentials_missing_or_of_another_scheme() {
    let index = sqlite_index();
    let mut config = AuthConfig::default();
    let open = Authenticator::new(&config, index.clone()).unwrap();
    let anonymous = open.authenticate(None).await.unwrap();
    assert_eq!(anonymous.kind, PrincipalKind::Anonymous);
    assert!(anonymous.may("any-tenant", Action::Delete));
    assert!(!anonymous.may("any-tenant", Action::Admin));
    assert!(anonymous_warning(&config).unwrap().contains("ANONYMOUS"));
    // Bad credentials are refused even though anonymous access is on.
    assert_eq!(
        open.authenticate(Some("Basic dXNlcjpwYXNz")).await,
        Err(AuthError::UnsupportedScheme)
    );
    assert_eq!(
        open.authenticate(Some("Bearer eyJ.x.y")).await,
        Err(AuthError::TokensDisabled)
    );
    assert!(matches!(
        open.authenticate(Some("Bearer")).await,
        Err(AuthError::Malformed(_))
    ));

    config.anonymous = vec![];
    assert!(anonymous_warning(&config).is_none());
    let closed = Authenticator::new(&config, index).unwrap();
    assert!(!closed.anonymous_enabled());
    assert_eq!(
        closed.authenticate(None).await,
        Err(AuthError::MissingCredentials)
    );
    assert_eq!(
        closed.authenticate(Some("  ")).await,
        Err(AuthError::MissingCredentials)
    );
}

#[test]
fn challenges_follow_rfc_6750() {
    let auth = Authenticator::new(
        &AuthConfig {
            anonymous: vec![],
            ..AuthConfig::default()
        },
        sqlite_index(),
    )
    .unwrap();
    assert_eq!(
        auth.challenge(&AuthError::MissingCredentials),
        r#"Bearer realm="kastell""#
    );
    assert_eq!(
        auth.challenge(&AuthError::Expired),
        r#"Bearer realm="kastell", error="invalid_token", error_description="the token has expired""#
    );
    assert_eq!(
        auth.challenge(&AuthError::UnsupportedScheme),
        r#"Bearer realm="kastell", error="invalid_request", error_description="unsupported authorization scheme: use Bearer or ApiKey""#
    );
    assert!(auth
        .challenge(&AuthError::RevokedApiKey)
        .contains(r#"error="invalid_token""#));
    assert_eq!(quoted_text("say \"hi\" \\o/ é"), "say  hi   o/  ");
}

/// A loopback HTTP server answering every request with the current JWKS.
struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

fn serve_jwks(initial: String) -> JwksServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/certs", listener.local_addr().unwrap());
    let body = Arc::new(Mutex::new(initial));
    let hits = Arc::new(AtomicUsize::new(0));
    let (served, counted) = (body.clone(), hits.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            counted.fetch_add(1, Ordering::SeqCst);
            let body = served.lock().unwrap().clone();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                body.len(),
                body
            );
        }
    });
    JwksServer { url, body, hits }
}

#[tokio::test]
async fn a_jwks_url_is_fetched_and_a_rotated_key_is_picked_up() {
    let first = test_key("2026-a");
    let second = test_key("2026-b");
    let server = serve_jwks(jwks(&[&first]));
    let auth = Authenticator::with_tuning(
        &jwt_config("", &server.url),
        sqlite_index(),
        tuning(Duration::ZERO),
    )
    .unwrap();
    // Nothing is fetched before it is needed (or warm_up is called).
    assert_eq!(server.hits.load(Ordering::SeqCst), 0);
    assert!(bearer(&auth, &sign(&first, &claims())).await.is_ok());
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    // Cached: a second token costs no fetch.
    assert!(bearer(&auth, &sign(&first, &claims())).await.is_ok());
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    // The provider rotates: the new kid is unknown, so the set is fetched again.
    *server.body.lock().unwrap() = jwks(&[&second]);
    let principal = bearer(&auth, &sign(&second, &claims())).await.unwrap();
    assert_eq!(principal.subject, "alice");
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    // The retired key is gone from the new set.
    assert_eq!(
        bearer(&auth, &sign(&first, &claims())).await,
        Err(AuthError::UnknownKey)
    );
}

#[tokio::test]
async fn unknown_kids_refetch_at_most_once_per_interval() {
    let key = test_key("k1");
    let server = serve_jwks(jwks(&[&key]));
    let auth = Authenticator::with_tuning(
        &jwt_config("", &server.url),
        sqlite_index(),
        tuning(Duration::from_secs(600)),
    )
    .unwrap();
    auth.warm_up().await.unwrap();
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    for i in 0..5 {
        let made_up = sign_as(&key, Some(&format!("made-up-{i}")), &claims());
        assert_eq!(bearer(&auth, &made_up).await, Err(AuthError::UnknownKey));
    }
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        1,
        "made-up key ids did not cause fetches"
    );
    assert!(bearer(&auth, &sign(&key, &claims())).await.is_ok());
}

#[tokio::test]
async fn an_unreachable_jwks_is_unavailable_not_unauthorized() {
    // A port nobody listens on (bound, then released).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let key = test_key("k1");
    let auth = Authenticator::with_tuning(
        &jwt_config("", &format!("http://127.0.0.1:{port}/certs")),
        sqlite_index(),
        tuning(Duration::ZERO),
    )
    .unwrap();
    let error = bearer(&auth, &sign(&key, &claims())).await.unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
}

/// Add → authenticate → revoke → refused once the cache has let go, on each
/// database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_authenticate_until_revoked_on_both_databases() {
    for (index, _db) in crate::index::tests::test_indexes() {
        let dialect = format!("{:?}", index.dialect());
        let config = AuthConfig {
            anonymous: vec![],
            ..AuthConfig::default()
        };
        let ttl = Duration::from_secs(1);
        let cached = Authenticator::with_tuning(
            &config,
            index.clone(),
            Tuning {
                api_key_cache: ttl,
                ..tuning(Duration::ZERO)
            },
        )
        .unwrap();
        let uncached = Authenticator::with_tuning(
            &config,
            index.clone(),
            Tuning {
                api_key_cache: Duration::ZERO,
                ..tuning(Duration::ZERO)
            },
        )
        .unwrap();

        let made = create_api_key(&index, "CT_SCANNER_1", "default", "read,write").unwrap();
        let header = format!("ApiKey {}", made.key.as_str());
        // The cache entry is made between these two instants.
        let before_lookup = Instant::now();
        let principal = cached.authenticate(Some(&header)).await.unwrap();
        let after_lookup = Instant::now();
        assert_eq!(principal.kind, PrincipalKind::ApiKey, "{dialect}");
        assert_eq!(
            principal.subject,
            format!("apikey:{}:CT_SCANNER_1", made.id)
        );
        assert!(principal.may("default", Action::Read));
        assert!(principal.may("default", Action::Write));
        assert!(!principal.may("default", Action::Delete));
        assert!(!principal.may("other", Action::Read));
        let as_bearer = format!("Bearer {}", made.key.as_str());
        assert_eq!(
            uncached.authenticate(Some(&as_bearer)).await.unwrap(),
            principal
        );

        // A well-formed key that was never issued.
        let never = format!("ApiKey kst_{}", "A".repeat(43));
        assert_eq!(
            uncached.authenticate(Some(&never)).await,
            Err(AuthError::UnknownApiKey)
        );
        assert!(matches!(
            uncached.authenticate(Some("ApiKey kst_short")).await,
            Err(AuthError::Malformed(_))
        ));

        // Listing shows the key without its text or hash.
        let listed = list_api_keys(&index).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].permissions, "read,write");

        assert!(revoke_api_key(&index, made.id).unwrap());
        assert_eq!(
            uncached.authenticate(Some(&header)).await,
            Err(AuthError::RevokedApiKey),
            "{dialect}"
        );
        // The cached lookup may still admit the key, but only within the TTL.
        let during = cached.authenticate(Some(&header)).await;
        if before_lookup.elapsed() < ttl {
            assert!(during.is_ok(), "{dialect}: cached within the TTL");
        }
        tokio::time::sleep(ttl.saturating_sub(after_lookup.elapsed()) + Duration::from_millis(50))
            .await;
        assert_eq!(
            cached.authenticate(Some(&header)).await,
            Err(AuthError::RevokedApiKey),
            "{dialect}: refused once the cache expired"
        );
    }
}

#[test]
fn api_key_creation_checks_its_input() {
    let index = sqlite_index();
    assert!(matches!(
        create_api_key(&index, "x", "bad/tenant", "read"),
        Err(ApiKeyError::Invalid(_))
    ));
    assert!(matches!(
        create_api_key(&index, "x", "default", "read,fly"),
        Err(ApiKeyError::Invalid(_))
    ));
    assert!(matches!(
        create_api_key(&index, " ", "default", "read"),
        Err(ApiKeyError::Invalid(_))
    ));
    let all = create_api_key(&index, "backup", "*", "*").unwrap();
    assert_eq!(list_api_keys(&index).unwrap()[0].tenant, "*");
    assert!(all.key.starts_with("kst_"));
}
