//! Pool usage for the `kastell.index.pool.connections` gauge: every open index
//! pool, sampled by r2d2's `state()` whenever metrics are collected.

use std::sync::{Mutex, Once, Weak};

use opentelemetry::KeyValue;

use super::IndexPool;
use crate::telemetry::metrics::{meter, INDEX_POOL_CONNECTIONS};

/// The open pools by label; weak, so that a closed index drops out by itself.
static POOLS: Mutex<Vec<(String, Weak<IndexPool>)>> = Mutex::new(Vec::new());
static GAUGE: Once = Once::new();

/// Adds a pool to the gauge under `label` (`main`, or a tenant's name), replacing
/// a pool of the same label that was closed.
pub(super) fn register(label: &str, pool: Weak<IndexPool>) {
    GAUGE.call_once(|| {
        // The callback lives as long as the meter provider; the handle may go.
        let _gauge = meter()
            .u64_observable_gauge(INDEX_POOL_CONNECTIONS)
            .with_unit("{connection}")
            .with_description("Index pool connections in use and idle")
            .with_callback(|observer| {
                for (label, in_use, idle) in sample() {
                    let pool = KeyValue::new("pool", label);
                    observer.observe(in_use, &[pool.clone(), KeyValue::new("state", "in_use")]);
                    observer.observe(idle, &[pool, KeyValue::new("state", "idle")]);
                }
            })
            .build();
    });
    let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    pools.retain(|(name, pool)| pool.strong_count() > 0 && name != label);
    pools.push((label.to_string(), pool));
}

/// (label, connections in use, idle connections) of every open pool.
fn sample() -> Vec<(String, u64, u64)> {
    let pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    pools
        .iter()
        .filter_map(|(label, pool)| {
            let state = match &*pool.upgrade()? {
                IndexPool::Sqlite(pool) => pool.pool.state(),
                IndexPool::Postgres(pool) => pool.state(),
            };
            let idle = u64::from(state.idle_connections);
            let in_use = u64::from(state.connections).saturating_sub(idle);
            Some((label.clone(), in_use, idle))
        })
        .collect()
}
