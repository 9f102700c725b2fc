//! Unwrap latency of a tenant key per master key provider (issue 16): a key
//! file (AES-256-GCM in process), SoftHSM2 through PKCS#11 (the token does the
//! AES-GCM), and a Vault-Transit-compatible KMS on loopback (HTTP per call);
//! against them, the cost of a tenant key the key ring already holds (what
//! every request pays on a warm cache).
//!
//! `cargo bench --bench key_custody`; needs `tests/backends/start_softhsm.sh`
//! (it installs SoftHSM2 when missing) and pkcs11-tool. Figures are recorded in
//! `benches/README.md`.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use kastell::crypto::{
    CacheLimits, CryptoError, KeyId, KeyProvider, KeyRing, LocalMasterKey, MasterKeys, SecretKey,
    TenantKeyLoader, TenantKeyRecord, TenantKeyState,
};
use kastell::custody::{Pkcs11Master, SecretSource, TransitMaster, TransitSettings};

#[allow(dead_code)]
#[path = "../tests/common/transit.rs"]
mod transit;

const CONTEXT: &[u8] = b"kastell/tenant-key/bench/1";

/// A SoftHSM token with an AES-256 key `bench`, made for this run.
fn softhsm(dir: &std::path::Path) -> Pkcs11Master {
    let output = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/backends/start_softhsm.sh"
    ))
    .arg(dir)
    .output()
    .expect("start_softhsm.sh");
    assert!(output.status.success());
    let mut module = String::new();
    let mut pin_file = String::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some((name, value)) = line.strip_prefix("export ").and_then(|l| l.split_once('='))
        else {
            continue;
        };
        let value = value.trim_matches('\'').trim_matches('"').to_string();
        match name {
            "SOFTHSM2_CONF" => std::env::set_var("SOFTHSM2_CONF", &value),
            "KASTELL_TEST_PKCS11_MODULE" => module = value,
            "KASTELL_TEST_PKCS11_PIN_FILE" => pin_file = value,
            _ => {}
        }
    }
    let pin = std::fs::read_to_string(&pin_file).unwrap();
    let made = Command::new("pkcs11-tool")
        .args([
            "--module",
            &module,
            "--token-label",
            "kastell",
            "--login",
            "--pin",
            pin.trim(),
        ])
        .args([
            "--keygen",
            "--key-type",
            "AES:32",
            "--label",
            "bench",
            "--sensitive",
            "--private",
        ])
        .output()
        .unwrap();
    assert!(made.status.success());
    Pkcs11Master::open(
        "hsm",
        &format!("pkcs11:token=kastell;object=bench?module-path={module}"),
        &SecretSource::File(pin_file.into()),
    )
    .unwrap()
}

/// One tenant key, for the warm key ring.
struct OneKey(TenantKeyRecord);

impl TenantKeyLoader for OneKey {
    fn load(&self, _: &str) -> Result<Vec<TenantKeyRecord>, CryptoError> {
        Ok(vec![self.0.clone()])
    }
    fn add_active(&self, _: &TenantKeyRecord) -> Result<(), CryptoError> {
        Ok(())
    }
    fn retire(&self, _: &KeyId) -> Result<(), CryptoError> {
        Ok(())
    }
    fn shred(&self, _: &str) -> Result<(), CryptoError> {
        Ok(())
    }
}

fn unwrap_latency(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let file = LocalMasterKey::new(&SecretKey::generate().unwrap(), "bench");
    let hsm = softhsm(&dir.path().join("hsm"));
    let kms_server = transit::TransitServer::start("bench-token", &["kastell"]);
    std::env::set_var("KASTELL_BENCH_KMS_TOKEN", "bench-token");
    let kms = TransitMaster::open(
        "kms",
        &format!("transit+{}/keys/kastell", kms_server.url()),
        TransitSettings {
            token: SecretSource::Env("KASTELL_BENCH_KMS_TOKEN".into()),
            ca_file: None,
            client_identity_file: None,
            timeout: std::time::Duration::from_secs(5),
        },
    )
    .unwrap();
    let providers: Vec<(&str, &dyn KeyProvider)> = vec![
        ("file", &file),
        ("pkcs11_softhsm", &hsm),
        ("transit_loopback", &kms),
    ];
    let mut group = c.benchmark_group("unwrap_tenant_key");
    for (name, provider) in providers {
        let wrapped = provider.wrap_tenant_key(&key, CONTEXT).unwrap();
        assert_eq!(
            provider
                .unwrap_tenant_key(&wrapped, CONTEXT)
                .unwrap()
                .expose(),
            key.expose()
        );
        group.bench_function(name, |b| {
            b.iter(|| provider.unwrap_tenant_key(&wrapped, CONTEXT).unwrap())
        });
    }
    // The warm path: the key ring holds the unwrapped key (an HSM master
    // behind it), so a request asks no provider.
    let hsm: Arc<dyn KeyProvider> = Arc::new(hsm);
    let id = KeyId::parse("bench/1").unwrap();
    let record = TenantKeyRecord {
        wrapped: Some(hsm.wrap_tenant_key(&key, &id.wrapping_context()).unwrap()),
        id: id.clone(),
        state: TenantKeyState::Active,
        master: "hsm".into(),
    };
    let masters = MasterKeys::new(
        BTreeMap::from([("hsm".into(), hsm)]),
        "hsm",
        BTreeMap::new(),
    )
    .unwrap();
    let ring = KeyRing::new(
        Arc::new(masters),
        Arc::new(OneKey(record)),
        CacheLimits::default(),
    );
    ring.key(&id).unwrap();
    group.bench_function("key_ring_warm_hsm", |b| b.iter(|| ring.key(&id).unwrap()));
    group.finish();
}

criterion_group!(benches, unwrap_latency);
criterion_main!(benches);
