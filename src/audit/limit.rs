//! Refusals cannot flood the trail. Anyone who reaches the port can send
//! requests with bad credentials (a login failure each) or without permission
//! (access denied), each of which would otherwise append a record forever. So
//! refusals are recorded at most [`RefusalLimits::per_window`] times per client,
//! action and window; the rest of the window is counted, and one aggregated
//! record ("N more … suppressed") is written when the window ends (or at
//! shutdown). Nothing is silently dropped: every refusal is either a record of
//! its own or part of a count.
//!
//! A client is its address; IPv6 addresses count per /64 (what one host usually
//! gets). The number of clients tracked at once is bounded too: beyond it, the
//! extra clients share one tally named [`OTHER_CLIENTS`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::{Action, AuditEvent};

/// The tally that clients beyond [`RefusalLimits::max_clients`] share.
pub const OTHER_CLIENTS: &str = "(other clients)";

/// How many refusals are recorded one by one.
#[derive(Debug, Clone, Copy)]
pub struct RefusalLimits {
    /// Records per client and action within one window; the rest are counted.
    pub per_window: u32,
    pub window: Duration,
    /// Clients tallied at once.
    pub max_clients: usize,
}

impl Default for RefusalLimits {
    fn default() -> Self {
        RefusalLimits {
            per_window: 10,
            window: Duration::from_secs(60),
            max_clients: 10_000,
        }
    }
}

struct Tally {
    started: Instant,
    recorded: u32,
    suppressed: u64,
    /// The first refusal not recorded: the aggregated record describes it.
    first: Option<AuditEvent>,
    last_at: SystemTime,
}

impl Tally {
    fn new(now: Instant) -> Self {
        Tally {
            started: now,
            recorded: 0,
            suppressed: 0,
            first: None,
            last_at: SystemTime::UNIX_EPOCH,
        }
    }
}

/// The per-client tallies. Shared by every request of the process.
pub struct RefusalLimiter {
    limits: RefusalLimits,
    tallies: Mutex<HashMap<(String, Action), Tally>>,
}

impl RefusalLimiter {
    pub fn new(limits: RefusalLimits) -> Self {
        RefusalLimiter {
            limits: RefusalLimits {
                per_window: limits.per_window.max(1),
                max_clients: limits.max_clients.max(1),
                ..limits
            },
            tallies: Mutex::new(HashMap::new()),
        }
    }

    /// What to record for `event`, a refusal seen at `now`: the event itself
    /// while its client is under the limit, nothing once over it; preceded by
    /// the aggregated record of the client's previous window when that one ended.
    pub fn admit(&self, event: AuditEvent, now: Instant) -> Vec<AuditEvent> {
        let mut out = Vec::new();
        let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = (client_key(event.client_address.as_deref()), event.action);
        if !tallies.contains_key(&key) && tallies.len() >= self.limits.max_clients {
            out.extend(self.take_ended(&mut tallies, now));
            if tallies.len() >= self.limits.max_clients {
                key.0 = OTHER_CLIENTS.to_string();
            }
        }
        let tally = tallies
            .entry(key.clone())
            .or_insert_with(|| Tally::new(now));
        if now.duration_since(tally.started) >= self.limits.window {
            let ended = std::mem::replace(tally, Tally::new(now));
            out.extend(self.aggregate(&key.0, ended));
        }
        if tally.recorded < self.limits.per_window {
            tally.recorded += 1;
            out.push(event);
        } else {
            tally.suppressed += 1;
            tally.last_at = event.at;
            tally.first.get_or_insert(event);
        }
        out
    }

    /// The aggregated records of windows that ended by `now` (their tallies are
    /// forgotten): called periodically so that a flood that stopped is counted.
    pub fn ended(&self, now: Instant) -> Vec<AuditEvent> {
        let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        self.take_ended(&mut tallies, now)
    }

    /// Every pending aggregated record, windows ended or not (at shutdown).
    pub fn drain(&self) -> Vec<AuditEvent> {
        let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<AuditEvent> = tallies
            .drain()
            .filter_map(|(key, tally)| self.aggregate(&key.0, tally))
            .collect();
        out.sort_by_key(|event| event.at);
        out
    }

    fn take_ended(
        &self,
        tallies: &mut HashMap<(String, Action), Tally>,
        now: Instant,
    ) -> Vec<AuditEvent> {
        let ended: Vec<(String, Action)> = tallies
            .iter()
            .filter(|(_, tally)| now.duration_since(tally.started) >= self.limits.window)
            .map(|(key, _)| key.clone())
            .collect();
        let mut out: Vec<AuditEvent> = ended
            .into_iter()
            .filter_map(|key| {
                let tally = tallies.remove(&key)?;
                self.aggregate(&key.0, tally)
            })
            .collect();
        out.sort_by_key(|event| event.at);
        out
    }

    /// The one record standing for the refusals a window did not record.
    fn aggregate(&self, client: &str, tally: Tally) -> Option<AuditEvent> {
        let first = tally.first?;
        let action = first.action;
        let from = super::format_time(first.at);
        let to = super::format_time(tally.last_at);
        let mut event = first;
        event.client_address = Some(client.to_string());
        event.study_uid = None;
        event.series_uid = None;
        event.instance_uids.clear();
        event.detail = Some(format!(
            "{} more {action} records of this client suppressed from {from} to {to} \
             (at most {} per client every {} s); this record stands for them all, \
             its actor and status are the first one's",
            tally.suppressed,
            self.limits.per_window,
            self.limits.window.as_secs()
        ));
        Some(event)
    }
}

/// The tally a client address counts in: the address, an IPv6 one by its /64.
fn client_key(address: Option<&str>) -> String {
    let Some(address) = address else {
        return "-".to_string();
    };
    match address.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
        Ok(IpAddr::V6(ip)) => {
            let s = ip.segments();
            let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{prefix}/64")
        }
        Ok(IpAddr::V4(ip)) => ip.to_string(),
        Err(_) => address.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{ActorKind, Outcome};

    fn refusal(client: &str, action: Action) -> AuditEvent {
        AuditEvent::new(
            "unknown",
            ActorKind::Anonymous,
            "default",
            action,
            Outcome::Failure,
        )
        .client_address(client)
        .status(401)
    }

    fn limiter(max_clients: usize) -> RefusalLimiter {
        RefusalLimiter::new(RefusalLimits {
            per_window: 3,
            window: Duration::from_secs(60),
            max_clients,
        })
    }

    fn admitted(limiter: &RefusalLimiter, client: &str, n: usize, now: Instant) -> usize {
        (0..n)
            .map(|_| {
                limiter
                    .admit(refusal(client, Action::LoginFailure), now)
                    .len()
            })
            .sum()
    }

    #[test]
    fn a_flooding_client_gets_its_limit_then_one_aggregated_record() {
        let limiter = limiter(100);
        let t0 = Instant::now();
        assert_eq!(admitted(&limiter, "192.0.2.1", 1000, t0), 3);
        // Another client and another action have limits of their own.
        assert_eq!(admitted(&limiter, "192.0.2.2", 5, t0), 3);
        let denied = limiter.admit(refusal("192.0.2.1", Action::AccessDenied), t0);
        assert_eq!(denied.len(), 1);
        // Nothing ended yet.
        assert!(limiter.ended(t0 + Duration::from_secs(59)).is_empty());
        let ended = limiter.ended(t0 + Duration::from_secs(60));
        assert_eq!(ended.len(), 2, "one per client that went over");
        let first = ended
            .iter()
            .find(|e| e.client_address.as_deref() == Some("192.0.2.1"))
            .unwrap();
        assert_eq!(first.action, Action::LoginFailure);
        assert_eq!(first.outcome, Outcome::Failure);
        let detail = first.detail.as_deref().unwrap();
        assert!(
            detail.starts_with("997 more login-failure records"),
            "{detail}"
        );
        // The tallies are forgotten: a new window records again.
        assert!(limiter.ended(t0 + Duration::from_secs(600)).is_empty());
        assert_eq!(
            admitted(&limiter, "192.0.2.1", 5, t0 + Duration::from_secs(61)),
            3
        );
    }

    #[test]
    fn a_client_returning_after_its_window_brings_the_aggregate_along() {
        let limiter = limiter(100);
        let t0 = Instant::now();
        admitted(&limiter, "192.0.2.1", 10, t0);
        let later = limiter.admit(
            refusal("192.0.2.1", Action::LoginFailure),
            t0 + Duration::from_secs(61),
        );
        assert_eq!(later.len(), 2);
        assert!(later[0].detail.as_deref().unwrap().starts_with("7 more"));
        assert_eq!(later[1].detail, None);
    }

    #[test]
    fn ipv6_clients_count_per_64_and_the_number_of_clients_is_bounded() {
        let limiter = limiter(2);
        let t0 = Instant::now();
        assert_eq!(admitted(&limiter, "2001:db8:1:2::1", 2, t0), 2);
        assert_eq!(admitted(&limiter, "2001:db8:1:2::ffff", 2, t0), 1);
        // A second client fills the table; every further one shares a tally.
        assert_eq!(admitted(&limiter, "192.0.2.1", 1, t0), 1);
        let others: usize = (0..100)
            .map(|n| admitted(&limiter, &format!("198.51.100.{n}"), 1, t0))
            .sum();
        assert_eq!(others, 3);
        let drained = limiter.drain();
        let clients: Vec<_> = drained
            .iter()
            .map(|e| e.client_address.clone().unwrap())
            .collect();
        assert!(
            clients.contains(&"2001:db8:1:2::/64".to_string()),
            "{clients:?}"
        );
        assert!(clients.contains(&OTHER_CLIENTS.to_string()), "{clients:?}");
        assert!(limiter.drain().is_empty());
    }
}
