//! Authentication and authorization at the HTTP edge, against the real binary:
//! JWTs signed with a local test key (JWKS from a file), API keys, tenants.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::*;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

const ISSUER: &str = "https://login.test/realms/hospital";
const AUDIENCE: &str = "kastell";

struct SigningKey {
    pkcs8: Vec<u8>,
    jwks: String,
}

fn signing_key() -> SigningKey {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "test-1",
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    }]});
    SigningKey {
        pkcs8: pkcs8.as_ref().to_vec(),
        jwks: jwks.to_string(),
    }
}

fn token(key: &SigningKey, roles: &[&str], expires_in: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "dr-house",
        "iat": now, "exp": now + expires_in, "roles": roles,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("test-1".into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_der(&key.pkcs8),
    )
    .unwrap()
}

fn status(request: reqwest::blocking::RequestBuilder) -> u16 {
    request.send().unwrap().status().as_u16()
}

fn stow(server: &Server, path: &str, authorization: Option<&str>, file: &[u8]) -> u16 {
    let (content_type, body) = multipart(&[file.to_vec()]);
    let mut request = client()
        .post(format!("http://127.0.0.1:{}{path}", server.port))
        .header("Content-Type", content_type)
        .header("Accept", "application/dicom+json")
        .body(body);
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    status(request)
}

#[test]
fn tokens_and_api_keys_decide_who_may_do_what() {
    let key = signing_key();
    let dir = tempfile::tempdir().unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, &key.jwks).unwrap();
    let data = dir.path().join("data");
    let (ok, out) = cli(&["tenants", "add", "radiology"], &data);
    assert!(ok, "{out}");
    let jwks_path = jwks_file.display().to_string();
    let env = [
        ("KASTELL__AUTH__ANONYMOUS", "[]"),
        ("KASTELL__AUTH__API_KEY_CACHE_SECS", "0"),
        ("KASTELL__AUTH__JWT__ISSUER", ISSUER),
        ("KASTELL__AUTH__JWT__AUDIENCE", AUDIENCE),
        ("KASTELL__AUTH__JWT__JWKS_FILE", jwks_path.as_str()),
    ];
    let server = Server::spawn(&data, &env);
    let studies = format!("http://127.0.0.1:{}/dicomweb/studies", server.port);
    let file = dicom_file(&Spec::new("7.7", "7.7.1", "7.7.1.1"));

    // No credentials: 401 with a Bearer challenge; health checks stay open.
    let response = client().get(&studies).send().unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer realm=\"kastell\""),
        "{challenge}"
    );
    assert_eq!(
        status(client().get(format!("http://127.0.0.1:{}/healthz", server.port))),
        200
    );

    // A reader may search but not store; a writer may store.
    let reader = format!("Bearer {}", token(&key, &["kastell:default:read"], 600));
    let writer = format!("Bearer {}", token(&key, &["kastell:*:write"], 600));
    assert_eq!(
        status(client().get(&studies).header("Authorization", &reader)),
        204
    );
    assert_eq!(
        stow(&server, "/dicomweb/studies", Some(&reader), &file),
        403
    );
    assert_eq!(
        stow(&server, "/dicomweb/studies", Some(&writer), &file),
        200
    );
    assert_eq!(
        status(client().get(&studies).header("Authorization", &reader)),
        200
    );
    assert_eq!(
        status(
            client()
                .delete(format!("{studies}/7.7"))
                .header("Authorization", &writer)
        ),
        403,
        "write does not imply delete"
    );

    // Grants are per tenant.
    let radiology = format!(
        "http://127.0.0.1:{}/tenants/radiology/dicomweb/studies",
        server.port
    );
    assert_eq!(
        status(client().get(&radiology).header("Authorization", &reader)),
        403
    );
    let radiologist = format!("Bearer {}", token(&key, &["kastell:radiology:read"], 600));
    assert_eq!(
        status(
            client()
                .get(&radiology)
                .header("Authorization", &radiologist)
        ),
        204
    );
    assert_eq!(
        status(client().get(&studies).header("Authorization", &radiologist)),
        403
    );

    // Expired, forged and garbage tokens are refused with invalid_token.
    let expired = format!("Bearer {}", token(&key, &["kastell:*:*"], -3600));
    let response = client()
        .get(&studies)
        .header("Authorization", &expired)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));
    let other = signing_key();
    let forged = format!("Bearer {}", token(&other, &["kastell:*:*"], 600));
    assert_eq!(
        status(client().get(&studies).header("Authorization", &forged)),
        401
    );
    assert_eq!(
        status(
            client()
                .get(&studies)
                .header("Authorization", "Bearer not.a.jwt")
        ),
        401
    );

    // An API key for a modality: store only, on one tenant; revoked keys stop.
    let (ok, out) = cli(
        &[
            "apikeys",
            "add",
            "--tenant",
            "default",
            "--name",
            "CT-1",
            "--permissions",
            "write",
        ],
        &data,
    );
    assert!(ok, "{out}");
    let api_key = out
        .split_whitespace()
        .find(|w| w.starts_with("kst_"))
        .unwrap()
        .to_string();
    let modality = format!("ApiKey {api_key}");
    let second = dicom_file(&Spec::new("7.7", "7.7.1", "7.7.1.2"));
    assert_eq!(
        stow(&server, "/dicomweb/studies", Some(&modality), &second),
        200
    );
    assert_eq!(
        status(client().get(&studies).header("Authorization", &modality)),
        403
    );
    assert_eq!(
        stow(
            &server,
            "/tenants/radiology/dicomweb/studies",
            Some(&modality),
            &second
        ),
        403
    );
    let (ok, out) = cli(&["apikeys", "list"], &data);
    assert!(
        ok && out.contains("CT-1") && !out.contains(&api_key),
        "{out}"
    );
    let id = out.split_whitespace().next().unwrap().to_string();
    let (ok, out) = cli(&["apikeys", "revoke", &id], &data);
    assert!(ok, "{out}");
    let third = dicom_file(&Spec::new("7.7", "7.7.1", "7.7.1.3"));
    assert_eq!(
        stow(&server, "/dicomweb/studies", Some(&modality), &third),
        401
    );
}
