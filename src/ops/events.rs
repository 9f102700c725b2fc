//! `kastell events status`: for every tenant, where its change feed stands
//! (the latest number, the studies waiting to be announced stable), where each
//! sink is in it (cursor, backlog, lease, last error), and the events sinks
//! gave up on (dead letters). Read from the indexes, beside a running server.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::tenants::{tenant_indexes, TenantIndex};
use crate::config::Config;
use crate::index::changes::{epoch_ms, DeadLetter, SinkState};

/// Dead letters shown per tenant, newest first.
pub const DEAD_LETTERS_SHOWN: i64 = 100;

#[derive(Debug, Clone, Serialize)]
pub struct EventsStatus {
    pub tenants: Vec<TenantEvents>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantEvents {
    pub name: String,
    /// `active` or `disabled`.
    pub status: String,
    /// The number of the tenant's latest change (0 before the first).
    pub latest_seq: i64,
    /// Studies that received an instance and wait for their quiet time before
    /// their "study-stable" event.
    pub settling_studies: i64,
    pub sinks: Vec<SinkStatus>,
    /// Webhook subscriptions of the configuration for this tenant that have no
    /// cursor yet (no server has delivered for them).
    pub not_started: Vec<String>,
    /// The latest dead letters ([`DEAD_LETTERS_SHOWN`] at most), newest first.
    pub dead_letters: Vec<DeadLetterStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SinkStatus {
    pub name: String,
    /// The last change delivered (or dead-lettered).
    pub cursor: i64,
    /// Changes after the cursor.
    pub backlog: i64,
    /// The process that holds (or last held) the lease.
    pub lease_owner: Option<String>,
    /// When the lease runs out (RFC 3339); absent when never taken.
    pub lease_until: Option<String>,
    /// Whether the lease is held now.
    pub lease_active: bool,
    /// Why the last delivery failed, until one succeeds.
    pub last_error: Option<String>,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterStatus {
    pub sink: String,
    pub seq: i64,
    pub attempts: i32,
    pub last_error: String,
    pub failed_at: String,
}

/// The status of the events of every tenant.
pub fn status(config: &Config) -> anyhow::Result<EventsStatus> {
    let now = epoch_ms();
    let mut tenants = Vec::new();
    for TenantIndex {
        name,
        status,
        index,
    } in tenant_indexes(config)?
    {
        let latest_seq = index.latest_change()?;
        let settling_studies = index.settling_studies()?;
        let sinks: Vec<SinkStatus> = index
            .sinks()?
            .into_iter()
            .map(|sink| sink_status(sink, latest_seq, now))
            .collect();
        let not_started = config
            .events
            .webhooks
            .iter()
            .filter(|hook| hook.tenants.iter().any(|t| t == "*" || *t == name))
            .map(|hook| format!("webhook.{}", hook.name))
            .filter(|sink| !sinks.iter().any(|s| &s.name == sink))
            .collect();
        let dead_letters = index
            .dead_letters(DEAD_LETTERS_SHOWN)?
            .into_iter()
            .map(dead_letter_status)
            .collect();
        tenants.push(TenantEvents {
            name,
            status,
            latest_seq,
            settling_studies,
            sinks,
            not_started,
            dead_letters,
        });
    }
    Ok(EventsStatus { tenants })
}

fn sink_status(sink: SinkState, latest_seq: i64, now_ms: i64) -> SinkStatus {
    let lease_until = (sink.lease_until_ms > 0).then(|| {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(sink.lease_until_ms as u64);
        humantime::format_rfc3339_seconds(at).to_string()
    });
    SinkStatus {
        backlog: (latest_seq - sink.delivered_seq).max(0),
        cursor: sink.delivered_seq,
        lease_active: sink.lease_owner.is_some() && sink.lease_until_ms > now_ms,
        lease_owner: sink.lease_owner,
        lease_until,
        last_error: sink.last_error,
        updated_at: sink.updated_at,
        name: sink.name,
    }
}

fn dead_letter_status(dead: DeadLetter) -> DeadLetterStatus {
    DeadLetterStatus {
        sink: dead.sink,
        seq: dead.seq,
        attempts: dead.attempts,
        last_error: dead.last_error,
        failed_at: dead.failed_at,
    }
}

impl fmt::Display for EventsStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, tenant) in self.tenants.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(
                f,
                "Tenant {} ({}): latest change {}, {} {} waiting to become stable",
                tenant.name,
                tenant.status,
                tenant.latest_seq,
                tenant.settling_studies,
                if tenant.settling_studies == 1 {
                    "study"
                } else {
                    "studies"
                }
            )?;
            if tenant.sinks.is_empty() && tenant.not_started.is_empty() {
                writeln!(f, "  no sinks")?;
            }
            for sink in &tenant.sinks {
                writeln!(
                    f,
                    "  {:<28} cursor {:>8}  backlog {:>6}  lease {}",
                    sink.name,
                    sink.cursor,
                    sink.backlog,
                    lease(sink)
                )?;
                if let Some(error) = &sink.last_error {
                    writeln!(f, "    last error: {error}")?;
                }
            }
            for sink in &tenant.not_started {
                writeln!(f, "  {sink:<28} not started (no cursor yet)")?;
            }
            if tenant.dead_letters.is_empty() {
                writeln!(f, "  dead letters: none")?;
            } else {
                writeln!(
                    f,
                    "  dead letters ({}{}, newest first):",
                    tenant.dead_letters.len(),
                    if tenant.dead_letters.len() as i64 == DEAD_LETTERS_SHOWN {
                        " shown"
                    } else {
                        ""
                    }
                )?;
                for dead in &tenant.dead_letters {
                    writeln!(
                        f,
                        "    {} seq {} after {} attempts, {}: {}",
                        dead.sink, dead.seq, dead.attempts, dead.failed_at, dead.last_error
                    )?;
                }
            }
        }
        Ok(())
    }
}

fn lease(sink: &SinkStatus) -> String {
    match (&sink.lease_owner, &sink.lease_until) {
        (Some(owner), Some(until)) if sink.lease_active => format!("held by {owner} until {until}"),
        (Some(owner), Some(until)) => format!("free (last held by {owner}, until {until})"),
        _ => "free".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(lease_until_ms: i64) -> SinkState {
        SinkState {
            name: "webhook.ris".into(),
            delivered_seq: 7,
            lease_owner: Some("42-abc".into()),
            lease_until_ms,
            last_error: Some("the receiver answered 500 Internal Server Error".into()),
            updated_at: "2026-12-04T08:00:00.000000Z".into(),
        }
    }

    #[test]
    fn the_text_shows_cursor_backlog_lease_and_dead_letters() {
        let now = 1_800_000_000_000;
        let report = EventsStatus {
            tenants: vec![TenantEvents {
                name: "default".into(),
                status: "active".into(),
                latest_seq: 10,
                settling_studies: 1,
                sinks: vec![sink_status(sink(now + 5000), 10, now)],
                not_started: vec!["webhook.ai".into()],
                dead_letters: vec![dead_letter_status(DeadLetter {
                    sink: "webhook.ris".into(),
                    seq: 3,
                    attempts: 4,
                    last_error: "the receiver answered 503".into(),
                    failed_at: "2026-12-04T08:00:00Z".into(),
                })],
            }],
        };
        let tenant = &report.tenants[0];
        assert_eq!(tenant.sinks[0].backlog, 3);
        assert!(tenant.sinks[0].lease_active);
        let text = report.to_string();
        assert!(text.contains("latest change 10, 1 study waiting"), "{text}");
        assert!(text.contains("backlog      3"), "{text}");
        assert!(
            text.contains("held by 42-abc until 2027-01-15T08:00:05Z"),
            "{text}"
        );
        assert!(
            text.contains("last error: the receiver answered 500"),
            "{text}"
        );
        assert!(text.contains("webhook.ai"), "{text}");
        assert!(
            text.contains("webhook.ris seq 3 after 4 attempts, 2026-12-04T08:00:00Z"),
            "{text}"
        );
        let expired = sink_status(sink(now - 1), 10, now);
        assert!(!expired.lease_active);
        assert!(lease(&expired).starts_with("free (last held by 42-abc"));
    }
}
