//! Seal/open throughput of the encrypted blob format against raw `ring`
//! AES-256-GCM over the same buffer (one call, in place): the format's overhead
//! (segmenting, copies, per-segment tags) is the gap between the two.
//!
//! `cargo bench --bench crypto`; figures are recorded in `benches/README.md`.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kastell::crypto::format::{Layout, Opener, Sealer, SEGMENT_SIZE};
use kastell::crypto::SecretKey;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

const SIZE: usize = 16 * 1024 * 1024;

fn raw_key() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[0x11; 32]).unwrap())
}

fn seal(c: &mut Criterion) {
    let data = vec![0x5Au8; SIZE];
    let mut group = c.benchmark_group("seal");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.bench_function(BenchmarkId::new("ring_aes_256_gcm_in_place", SIZE), |b| {
        let key = raw_key();
        let mut buffer = data.clone();
        b.iter(|| {
            key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::empty(),
                &mut buffer,
            )
            .unwrap()
        })
    });
    group.bench_function(BenchmarkId::new("kastell_sealer_1mib_chunks", SIZE), |b| {
        let key = SecretKey::from_bytes(&[0x11; 32]).unwrap();
        b.iter_batched(
            || {
                data.chunks(1024 * 1024)
                    .map(BytesMut::from)
                    .collect::<Vec<_>>()
            },
            |chunks| {
                let mut sealer = Sealer::new(&key, [0x22; 16], SEGMENT_SIZE);
                let mut total = 0;
                for chunk in chunks {
                    for piece in sealer.push_owned(chunk) {
                        total += piece.len();
                    }
                }
                total + sealer.finish().iter().map(|p| p.len()).sum::<usize>()
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn open(c: &mut Criterion) {
    let data = vec![0x5Au8; SIZE];
    let key = SecretKey::from_bytes(&[0x11; 32]).unwrap();
    let mut sealer = Sealer::new(&key, [0x22; 16], SEGMENT_SIZE);
    let mut body = Vec::new();
    for piece in sealer.push(&data).into_iter().chain(sealer.finish()) {
        body.extend_from_slice(&piece);
    }
    let layout = Layout::from_ciphertext_len(0, SEGMENT_SIZE, body.len() as u64).unwrap();
    let mut group = c.benchmark_group("open");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.bench_function(BenchmarkId::new("ring_aes_256_gcm_in_place", SIZE), |b| {
        let raw = raw_key();
        let mut sealed = data.clone();
        let tag = raw
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::empty(),
                &mut sealed,
            )
            .unwrap();
        sealed.extend_from_slice(tag.as_ref());
        b.iter_batched_ref(
            || sealed.clone(),
            |buffer| {
                raw.open_in_place(Nonce::assume_unique_for_key([0; 12]), Aad::empty(), buffer)
                    .unwrap()
                    .len()
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.bench_function(
        BenchmarkId::new("kastell_opener_segments_in_place", SIZE),
        |b| {
            let opener = Opener::new(&key, [0x22; 16], layout);
            let sealed_len = (SEGMENT_SIZE + 16) as usize;
            b.iter_batched_ref(
                || BytesMut::from(&body[..]),
                |buffer| {
                    let mut index = 0;
                    let mut total = 0;
                    while !buffer.is_empty() {
                        let mut segment = buffer.split_to(sealed_len.min(buffer.len()));
                        opener.open_in_place(index, &mut segment).unwrap();
                        total += segment.len();
                        index += 1;
                    }
                    total
                },
                criterion::BatchSize::LargeInput,
            )
        },
    );
    group.finish();
}

criterion_group!(benches, seal, open);
criterion_main!(benches);
