//! The bodies of a multipart retrieval's instances, opened ahead of the one
//! being sent: small instances that go out as stored are read several at a
//! time (one blocking call for a batch on a file store, where a hand-off to the
//! blocking pool per instance cost more than decrypting it), the others one by
//! one; a few batches ahead at most, so what a retrieval holds stays bounded.

use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;

use super::{blob_key, instance_body, is_passthrough, ByteStream, Representation};
use crate::index::StoredInstance;
use crate::service::{ServiceError, Services};
use crate::store::SMALL_PLAINTEXT;

/// Batches (or single instances) opened ahead of the one being sent.
const OPEN_AHEAD: usize = 4;
/// The most plaintext bytes and instances read in one batch: with
/// [`OPEN_AHEAD`] batches, a retrieval holds at most 1 MiB of small instances
/// ahead of the one it sends.
const BATCH_BYTES: u64 = 256 * 1024;
const BATCH_INSTANCES: usize = 32;

/// An instance to send, as planned: what it is and how it goes out.
pub type Planned = (StoredInstance, Representation);

/// An instance with its body, ready to be sent.
pub type Opened = (StoredInstance, Representation, ByteStream);

/// Instances opened together: small ones sent as stored, read in one go
/// (`together`), or one instance alone.
struct Batch {
    together: bool,
    items: Vec<Planned>,
}

/// The bodies of `plan`'s instances, in order. When any is re-encoded, one at a
/// time: re-encoding holds a whole instance, and opening several ahead would
/// take the decoding budget from the very request that waits for them.
pub fn bodies_ahead(
    services: Services,
    plan: Vec<Planned>,
) -> BoxStream<'static, Result<Opened, ServiceError>> {
    let all_as_stored = plan.iter().all(|(i, r)| is_passthrough(i, *r));
    let ahead = if all_as_stored { OPEN_AHEAD } else { 1 };
    stream::iter(batches(&services, plan))
        .map(move |batch| open(services.clone(), batch))
        .buffered(ahead)
        .flat_map(stream::iter)
        .boxed()
}

/// Consecutive small instances sent as stored, from a store that reads them
/// together, go in batches of at most [`BATCH_BYTES`] and [`BATCH_INSTANCES`];
/// every other instance alone.
fn batches(services: &Services, plan: Vec<Planned>) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut small: Vec<Planned> = Vec::new();
    let mut bytes = 0u64;
    let close = |batches: &mut Vec<Batch>, small: &mut Vec<Planned>| {
        if !small.is_empty() {
            let items = std::mem::take(small);
            batches.push(Batch {
                together: true,
                items,
            });
        }
    };
    for (instance, representation) in plan {
        let size = instance.blob_size.max(0) as u64;
        let together = is_passthrough(&instance, representation)
            && size <= SMALL_PLAINTEXT
            && blob_key(&instance).is_ok_and(|key| services.store.reads_together(&key));
        if !together {
            close(&mut batches, &mut small);
            batches.push(Batch {
                together: false,
                items: vec![(instance, representation)],
            });
        } else {
            if bytes + size > BATCH_BYTES || small.len() == BATCH_INSTANCES {
                close(&mut batches, &mut small);
            }
            if small.is_empty() {
                bytes = 0;
            }
            bytes += size;
            small.push((instance, representation));
        }
    }
    close(&mut batches, &mut small);
    batches
}

/// Opens a batch's instances, in order; a failed one ends the retrieval there
/// (its error is the last item).
async fn open(services: Services, batch: Batch) -> Vec<Result<Opened, ServiceError>> {
    let Batch { together, items } = batch;
    if !together {
        let mut opened = Vec::with_capacity(items.len());
        for (instance, representation) in items {
            match instance_body(&services, &instance, representation).await {
                Ok(body) => opened.push(Ok((instance, representation, body))),
                Err(error) => {
                    opened.push(Err(error));
                    break;
                }
            }
        }
        return opened;
    }
    let keys = match items
        .iter()
        .map(|(i, _)| blob_key(i))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(keys) => keys,
        Err(error) => return vec![Err(error)],
    };
    let bodies = services.store.read_small_objects(&keys).await;
    let mut opened = Vec::with_capacity(items.len());
    for ((instance, representation), body) in items.into_iter().zip(bodies) {
        match body {
            Ok(body) => {
                let body = body.map(|chunk| chunk.map_err(ServiceError::from)).boxed();
                opened.push(Ok((instance, representation, body)));
            }
            Err(error) => {
                opened.push(Err(error.into()));
                break;
            }
        }
    }
    opened
}
