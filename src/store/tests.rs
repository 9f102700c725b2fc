//! Tests of the store over the in-memory and filesystem backends.

use super::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::GetOptions;

use crate::crypto::format::{Header, MAX_HEADER_LEN};

use async_trait_free::CountingStore;

fn options() -> WriteOptions {
    WriteOptions {
        part_bytes: 5 * 1024 * 1024,
        concurrency: 2,
    }
}

fn retries() -> Retries {
    Retries {
        max_retries: 1,
        timeout: Duration::from_secs(1),
    }
}

fn keyring() -> Arc<KeyRing> {
    let ring = crate::crypto::keyring::tests::ring();
    ring.ensure_tenant("default").unwrap();
    Arc::new(ring)
}

fn memory_store() -> (BlobStore, Arc<CountingStore>) {
    let counting = Arc::new(CountingStore {
        inner: Arc::new(InMemory::new()),
        fetched: AtomicU64::new(0),
        requests: AtomicU64::new(0),
    });
    let store =
        BlobStore::with_backend(counting.clone(), options(), "memory", keyring(), "default");
    (store, counting)
}

async fn put(store: &BlobStore, data: &[u8]) -> BlobKey {
    let key = BlobKey::new(BlobKind::Instance);
    let mut writer = store.writer(key.clone()).await.unwrap();
    for chunk in data.chunks(1_000_003) {
        writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(writer.finish().await.unwrap(), data.len() as u64);
    key
}

async fn raw(counting: &CountingStore, key: &BlobKey) -> Vec<u8> {
    counting
        .inner
        .get(&key.path())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn write_then_read_whole_and_ranges() {
    let (store, _) = memory_store();
    let data: Vec<u8> = (0..12_000_000u32).map(|i| (i % 251) as u8).collect();
    let key = put(&store, &data).await;
    assert_eq!(store.read_all(&key).await.unwrap(), data);
    assert_eq!(store.size(&key).await.unwrap(), data.len() as u64);
    let range = store.read_range(&key, 5_000_000..5_000_100).await.unwrap();
    assert_eq!(&range[..], &data[5_000_000..5_000_100]);
    assert!(matches!(
        store.read_range(&key, 0..12_000_001).await,
        Err(StoreError::OutOfRange { .. })
    ));
    store.delete(&key).await.unwrap();
    assert!(matches!(
        store.read_all(&key).await,
        Err(StoreError::NotFound)
    ));
}

#[tokio::test]
async fn the_backend_only_ever_sees_ciphertext() {
    let (store, counting) = memory_store();
    let secret = b"DICM Doe^John 1.2.840.113619.2.55.3.604688119";
    let mut data = vec![0u8; 300_000];
    data[..secret.len()].copy_from_slice(secret);
    data[200_000..200_000 + secret.len()].copy_from_slice(secret);
    let key = put(&store, &data).await;
    let stored = raw(&counting, &key).await;
    for needle in [&b"DICM"[..], b"Doe^John", b"1.2.840.113619"] {
        assert!(
            !stored.windows(needle.len()).any(|w| w == needle),
            "plaintext {needle:?} in the blob"
        );
    }
}

#[tokio::test]
async fn a_range_fetches_only_its_segments() {
    let (store, counting) = memory_store();
    let data = vec![7u8; 50 * 1024 * 1024];
    let key = put(&store, &data).await;
    counting.fetched.store(0, Ordering::SeqCst);
    // A 100 KiB "frame" in the middle of a 50 MiB object.
    let frame = store
        .read_range(&key, 30_000_000..30_102_400)
        .await
        .unwrap();
    assert_eq!(frame.len(), 102_400);
    let fetched = counting.fetched.load(Ordering::SeqCst);
    // The header read plus at most three 64 KiB segments.
    assert!(
        fetched <= MAX_HEADER_LEN as u64 + 3 * (64 * 1024 + 16),
        "fetched {fetched} bytes"
    );
}

#[tokio::test]
async fn tampering_and_swapping_are_detected() {
    let (store, counting) = memory_store();
    let data = vec![1u8; 200_000];
    let a = put(&store, &data).await;
    let b = put(&store, &data).await;
    let original = raw(&counting, &a).await;
    for position in [10usize, 40, 120, 100_000, original.len() - 1] {
        let mut tampered = original.clone();
        tampered[position] ^= 0x01;
        counting
            .inner
            .put(&a.path(), tampered.into())
            .await
            .unwrap();
        let whole = store.read_all(&a).await;
        assert!(
            matches!(whole, Err(StoreError::Integrity(_))),
            "flip at {position}: {whole:?}"
        );
    }
    // Truncated by one segment.
    counting
        .inner
        .put(&a.path(), original[..original.len() - 1000].to_vec().into())
        .await
        .unwrap();
    assert!(matches!(
        store.read_all(&a).await,
        Err(StoreError::Integrity(_))
    ));
    // B's valid object under A's name.
    let other = raw(&counting, &b).await;
    counting.inner.put(&a.path(), other.into()).await.unwrap();
    assert!(matches!(
        store.read_all(&a).await,
        Err(StoreError::Integrity(_))
    ));
    assert!(matches!(
        store.read_range(&a, 0..10).await,
        Err(StoreError::Integrity(_))
    ));
}

#[tokio::test]
async fn rotation_rewraps_and_shredding_makes_blobs_unreadable() {
    let (store, counting) = memory_store();
    let data = vec![9u8; 100_000];
    let key = put(&store, &data).await;
    let before = raw(&counting, &key).await;
    store.keys.rotate("default").unwrap();
    assert!(store.rewrap(&key).await.unwrap());
    assert!(
        !store.rewrap(&key).await.unwrap(),
        "already under the active key"
    );
    let after = raw(&counting, &key).await;
    let header = Header::decode(&after).unwrap().unwrap();
    assert_eq!(header.key_id, "default/2");
    // Same segments: nothing was re-encrypted.
    let old_header_len = Header::decode(&before).unwrap().unwrap().len();
    assert_eq!(&after[header.len()..], &before[old_header_len..]);
    assert_eq!(store.read_all(&key).await.unwrap(), data);
    store.keys.shred("default").unwrap();
    assert!(matches!(
        store.read_all(&key).await,
        Err(StoreError::Shredded)
    ));
    assert!(matches!(
        store.writer(BlobKey::new(BlobKind::Instance)).await.err(),
        Some(StoreError::Shredded)
    ));
}

#[tokio::test]
async fn filesystem_backend_aborted_upload_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let store = BlobStore::from_url(&url, &[], options(), retries(), keyring(), "default").unwrap();
    let key = BlobKey::new(BlobKind::Instance);
    let mut writer = store.writer(key.clone()).await.unwrap();
    writer
        .write(Bytes::from(vec![7u8; 6 * 1024 * 1024]))
        .await
        .unwrap();
    writer.abort().await;
    assert!(matches!(
        store.read_all(&key).await,
        Err(StoreError::NotFound)
    ));
    let left = store
        .keys_older_than(BlobKind::Instance, Duration::ZERO)
        .await
        .unwrap();
    assert!(left.is_empty(), "aborted upload left {left:?}");
}

#[tokio::test]
async fn uploads_cut_off_by_a_killed_process_are_swept_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let store = BlobStore::from_url(&url, &[], options(), retries(), keyring(), "default").unwrap();
    let done = BlobKey::new(BlobKind::Instance);
    let mut writer = store.writer(done.clone()).await.unwrap();
    writer.write(Bytes::from_static(b"kept")).await.unwrap();
    writer.finish().await.unwrap();
    // An upload with a part written, whose process died: no drop, no abort.
    let cut = BlobKey::new(BlobKind::Instance);
    let mut writer = store.writer(cut.clone()).await.unwrap();
    writer
        .write(Bytes::from(vec![7u8; 11 * 1024 * 1024]))
        .await
        .unwrap();
    std::mem::forget(writer);
    let instances = dir.path().join("instances");
    // The parts already handed to the backend are written by tasks that
    // outlive the forgotten writer; a file still being written is younger
    // than any cutoff, so wait until nothing changes it any more.
    let staging_file = std::fs::read_dir(&instances)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains('#'))
        .expect("the backend stages uploads in files");
    let mut last = None;
    loop {
        let meta = std::fs::metadata(&staging_file).unwrap();
        let now = Some((meta.len(), meta.modified().unwrap()));
        if now == last {
            break;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let staged = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains('#')
            })
            .count()
    };
    assert_eq!(staged(&instances), 1, "the backend stages uploads in files");
    std::fs::write(instances.join("notes#1"), b"not ours").unwrap();
    assert_eq!(
        store
            .remove_stale_uploads(Duration::from_secs(3600))
            .await
            .unwrap(),
        0,
        "younger than the grace"
    );
    assert_eq!(store.remove_stale_uploads(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(staged(&instances), 1, "only notes#1, which is not ours");
    assert_eq!(store.read_all(&done).await.unwrap(), &b"kept"[..]);
}

#[tokio::test]
async fn detached_deletions_are_finished_once_no_upload_is_left() {
    let store = BlobStore::with_backend(
        Arc::new(InMemory::new()),
        options(),
        "memory",
        keyring(),
        "default",
    );
    let key = BlobKey::new(BlobKind::Instance);
    let mut writer = store.writer(key.clone()).await.unwrap();
    writer.write(Bytes::from_static(b"x")).await.unwrap();
    writer.finish().await.unwrap();
    let guard = store.upload_guard();
    // A drop guard running where no runtime is left: nothing is spawned.
    let detached = store.clone();
    let deleted = key.clone();
    std::thread::spawn(move || detached.delete_detached(vec![deleted]))
        .join()
        .unwrap();
    assert!(store.read_all(&key).await.is_ok());
    // An upload still in progress may yet commit: nothing is deleted.
    assert_eq!(store.finish_detached(Duration::ZERO).await, 0);
    drop(guard);
    assert_eq!(store.finish_detached(Duration::ZERO).await, 1);
    assert!(matches!(
        store.read_all(&key).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.finish_detached(Duration::ZERO).await, 0);
}

#[test]
fn keys_are_opaque_and_validated() {
    let key = BlobKey::new(BlobKind::Instance);
    assert!(key.as_str().starts_with("instances/"));
    assert_eq!(BlobKey::parse(key.as_str()).unwrap(), key);
    assert!(BlobKey::parse("instances/../etc/passwd").is_err());
    assert!(BlobKey::parse("1.2.840.1/abc").is_err());
    // In a named store: the store routes, the path inside it is the same.
    let moved = key.in_store(Some("cold"));
    assert_eq!(moved.as_str(), format!("cold/{key}"));
    assert_eq!(BlobKey::parse(moved.as_str()).unwrap(), moved);
    assert_eq!(moved.store(), Some("cold"));
    assert_eq!(moved.path(), key.path());
    assert_eq!(moved.in_store(Some("primary")), key);
    assert_eq!(key.store_name(), "primary");
    for bad in [
        "Cold/instances/0123456789abcdef0123456789abcdef",
        "primary/instances/0123456789abcdef0123456789abcdef",
        "instances/instances/0123456789abcdef0123456789abcdef",
        "a/b/instances/0123456789abcdef0123456789abcdef",
    ] {
        assert!(BlobKey::parse(bad).is_err(), "{bad}");
    }
    assert!(matches!(
        backend_from_url("ftp://x/y", &[], retries()),
        Err(StoreError::UnsupportedUrl(_))
    ));
    assert!(matches!(
        backend_from_url("file://relative", &[], retries()),
        Err(StoreError::UnsupportedUrl(_))
    ));
    // The error names the URL without its secrets.
    let Err(error) = backend_from_url("ftp://me:hunter2@x/y?sig=s3cret", &[], retries()) else {
        panic!("an FTP URL is not a blob store");
    };
    let shown = error.to_string();
    assert!(
        !shown.contains("hunter2") && !shown.contains("s3cret"),
        "{shown}"
    );
}

/// An object store that counts the bytes reads return.
mod async_trait_free {
    use super::*;
    use futures_util::stream::BoxStream;
    use object_store::{
        GetResult, ListResult, MultipartUpload, ObjectMeta, PutMultipartOptions, PutOptions,
        PutPayload, PutResult,
    };

    #[derive(Debug)]
    pub struct CountingStore {
        pub inner: Arc<dyn ObjectStore>,
        pub fetched: AtomicU64,
        pub requests: AtomicU64,
    }

    impl std::fmt::Display for CountingStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "CountingStore")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for CountingStore {
        async fn put_opts(
            &self,
            location: &ObjectPath,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &ObjectPath,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &ObjectPath,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            let result = self.inner.get_opts(location, options).await?;
            self.fetched
                .fetch_add(result.range.end - result.range.start, Ordering::SeqCst);
            Ok(result)
        }
        async fn delete(&self, location: &ObjectPath) -> object_store::Result<()> {
            self.inner.delete(location).await
        }
        fn list(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy(&self, from: &ObjectPath, to: &ObjectPath) -> object_store::Result<()> {
            self.inner.copy(from, to).await
        }
        async fn copy_if_not_exists(
            &self,
            from: &ObjectPath,
            to: &ObjectPath,
        ) -> object_store::Result<()> {
            self.inner.copy_if_not_exists(from, to).await
        }
    }
}

#[tokio::test]
async fn records_are_sealed_bound_to_their_blob_and_rewrapped_on_rotation() {
    let (store, _) = memory_store();
    let blob = BlobKey::new(BlobKind::Instance);
    let other = BlobKey::new(BlobKind::Instance);
    let plaintext: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
    let sealed = store.seal_record(&blob, &plaintext).await.unwrap();
    assert!(
        !sealed.windows(64).any(|w| w == &plaintext[1000..1064]),
        "the plaintext does not show through"
    );
    assert_eq!(store.open_record(&blob, &sealed).await.unwrap(), plaintext);
    // Moved to another instance's row, it fails to open.
    assert!(matches!(
        store.open_record(&other, &sealed).await,
        Err(StoreError::Integrity(_))
    ));
    // Any changed byte fails, in the header or in a segment.
    for at in [8, 40, sealed.len() / 2, sealed.len() - 1] {
        let mut tampered = sealed.clone();
        tampered[at] ^= 1;
        assert!(
            store.open_record(&blob, &tampered).await.is_err(),
            "byte {at} changed"
        );
    }
    // Cut at a segment boundary: the last segment's final flag is missing.
    let header_len = Header::decode(&sealed).unwrap().unwrap().len();
    let first_segment = header_len + 64 * 1024 + 16;
    assert!(store
        .open_record(&blob, &sealed[..first_segment])
        .await
        .is_err());
    assert_eq!(
        BlobStore::record_key_id(&sealed).unwrap().to_string(),
        "default/1"
    );
    assert!(store.rewrap_record(&blob, &sealed).await.unwrap().is_none());
    store.keys.rotate("default").unwrap();
    let rewrapped = store.rewrap_record(&blob, &sealed).await.unwrap().unwrap();
    assert_eq!(
        BlobStore::record_key_id(&rewrapped).unwrap().to_string(),
        "default/2"
    );
    assert_eq!(
        store.open_record(&blob, &rewrapped).await.unwrap(),
        plaintext
    );
    store.keys.shred("default").unwrap();
    assert!(store.open_record(&blob, &rewrapped).await.is_err());
}

#[tokio::test]
async fn a_range_of_an_object_read_before_is_one_request_even_after_a_rewrap() {
    let (store, counting) = memory_store();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let (a, b) = (put(&store, &data).await, put(&store, &data).await);
    for key in [&a, &b] {
        assert_eq!(
            store.read_range(key, 1000..2000).await.unwrap(),
            &data[1000..2000]
        );
    }
    counting.requests.store(0, Ordering::SeqCst);
    assert_eq!(
        store.read_range(&a, 200_000..200_100).await.unwrap(),
        &data[200_000..200_100]
    );
    assert_eq!(
        counting.requests.load(Ordering::SeqCst),
        1,
        "the header came from the cache"
    );
    // A whole read is one request too, header first.
    counting.requests.store(0, Ordering::SeqCst);
    assert_eq!(store.read_all(&a).await.unwrap(), data);
    assert_eq!(counting.requests.load(Ordering::SeqCst), 1);
    // Another process re-wraps both under "default/10": each header grows by a
    // byte and this store's cached copies are stale.
    let other = BlobStore::with_backend(
        counting.clone(),
        options(),
        "memory",
        store.keys.clone(),
        "default",
    );
    for _ in 0..9 {
        store.keys.rotate("default").unwrap();
    }
    assert!(other.rewrap(&a).await.unwrap());
    assert!(other.rewrap(&b).await.unwrap());
    // The old key still opens the stale header, whose segments are one byte off.
    assert_eq!(
        store.read_range(&a, 200_000..200_100).await.unwrap(),
        &data[200_000..200_100]
    );
    // A stale header naming a retired key is not used either.
    store
        .keys
        .retire(&crate::crypto::KeyId::parse("default/1").unwrap())
        .unwrap();
    assert_eq!(
        store.read_range(&b, 200_000..200_100).await.unwrap(),
        &data[200_000..200_100]
    );
}

/// The objects synced after object_store's file backend wrote them are found
/// where that backend put them, in the primary store and in a named one, and
/// nothing is looked for on a store that is not a file one.
#[tokio::test]
async fn objects_of_file_stores_are_synced_where_they_lie() {
    let primary = tempfile::tempdir().unwrap();
    let cold = tempfile::tempdir().unwrap();
    let store = BlobStore::from_url(
        &format!("file://{}", primary.path().display()),
        &[],
        options(),
        retries(),
        keyring(),
        "default",
    )
    .unwrap()
    .with_named_store(
        "cold",
        &format!("file://{}", cold.path().display()),
        &[],
        None,
        None,
        retries(),
    )
    .unwrap();
    let key = BlobKey::new(BlobKind::Instance);
    let mut writer = store.writer(key.clone()).await.unwrap();
    writer.write(Bytes::from_static(b"kept")).await.unwrap();
    writer.finish().await.unwrap();
    let file = store.local_file(&key).unwrap();
    assert!(
        file.starts_with(primary.path()) && file.is_file(),
        "{file:?}"
    );
    let moved = key.in_store(Some("cold"));
    store.copy_object(&key, &moved).await.unwrap();
    let file = store.local_file(&moved).unwrap();
    assert!(file.starts_with(cold.path()) && file.is_file(), "{file:?}");
    store.sync_local(&moved).await.unwrap();
    assert!(store.rewrap(&key).await.is_ok());
    let (memory, _) = memory_store();
    assert_eq!(memory.local_file(&key), None);
    memory.sync_local(&key).await.unwrap();
}

/// Objects of a file store are read in large chunks by Kastell itself (not
/// object_store's 8 KiB reads): whole and in order at every size around the
/// chunk's, a missing file is NotFound, and a file cut short or modified after
/// it was written is an integrity error.
#[tokio::test]
async fn file_store_objects_read_in_chunks_whole_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let store = BlobStore::from_url(&url, &[], options(), retries(), keyring(), "default").unwrap();
    let segment = crate::crypto::format::SEGMENT_SIZE as usize;
    for size in [
        0,
        1,
        9_000,
        4 * segment - 1,
        4 * segment,
        4 * segment + 1,
        1_000_003,
    ] {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let key = put(&store, &data).await;
        let mut chunks = 0;
        let mut read = Vec::new();
        let mut stream = store.read_stream(&key).await.unwrap();
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
            read.extend_from_slice(&chunk.unwrap());
            chunks += 1;
        }
        assert!(read == data, "{size} bytes read back differ");
        assert_eq!(chunks, size.div_ceil(segment).max(1), "{size} bytes");
        assert_eq!(store.read_all(&key).await.unwrap().len(), size);
    }
    let data = vec![5u8; 600_000];
    let key = put(&store, &data).await;
    let file = store.local_file(&key).unwrap();
    let length = std::fs::metadata(&file).unwrap().len();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[length as usize - 100] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    assert!(matches!(
        store.read_all(&key).await,
        Err(StoreError::Integrity(_))
    ));
    bytes[length as usize - 100] ^= 1;
    std::fs::write(&file, &bytes[..length as usize - 10]).unwrap();
    assert!(matches!(
        store.read_all(&key).await,
        Err(StoreError::Integrity(_))
    ));
    std::fs::remove_file(&file).unwrap();
    assert!(matches!(
        store.read_stream(&key).await.err(),
        Some(StoreError::NotFound)
    ));
}

/// Several objects read together come back each whole and in its place: small
/// ones of a file store in one call, a larger one streamed, a missing one
/// NotFound where it stands; on another backend one request each.
#[tokio::test]
async fn small_objects_are_read_together_each_in_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let file_store =
        BlobStore::from_url(&url, &[], options(), retries(), keyring(), "default").unwrap();
    let (memory, _) = memory_store();
    for store in [file_store, memory] {
        let sizes = [9_000, 0, 700_000, 65_536, 12];
        let mut keys = Vec::new();
        let mut datas = Vec::new();
        for (n, size) in sizes.into_iter().enumerate() {
            let data: Vec<u8> = (0..size).map(|i| ((i + n) % 253) as u8).collect();
            keys.push(put(&store, &data).await);
            datas.push(data);
        }
        let missing = BlobKey::new(BlobKind::Instance);
        keys.insert(3, missing);
        let opened = store.read_small_objects(&keys).await;
        assert_eq!(opened.len(), keys.len());
        let mut datas = datas.into_iter();
        for (n, body) in opened.into_iter().enumerate() {
            if n == 3 {
                assert!(matches!(body, Err(StoreError::NotFound)), "object {n}");
                continue;
            }
            let mut read = Vec::new();
            let mut body = body.unwrap();
            while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
                read.extend_from_slice(&chunk.unwrap());
            }
            assert!(read == datas.next().unwrap(), "object {n} differs");
        }
    }
}
