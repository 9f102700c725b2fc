//! The hash chain over the audit trail.
//!
//! # Canonical encoding
//!
//! A row is hashed over one unambiguous byte string, so that no two different
//! rows encode alike (moving text from one field to the next changes the bytes):
//!
//! ```text
//! "kastell-audit-v1"                      16 bytes: format version and domain
//! then, for each field in this fixed order:
//!   seq, at, actor, actor_kind, client_address, tenant, action, outcome,
//!   status, study_uid, series_uid, instance_uids, detail
//! a NULL field:  0x00
//! a value:       0x01, its length in bytes as u64 big-endian, its UTF-8 bytes
//!                (integers — seq, status — as decimal ASCII)
//! ```
//!
//! `hash = lowercase hex( HMAC-SHA256( chain key, prev_hash || canonical(row) ) )`,
//! where `prev_hash` enters as its 64 ASCII hex characters and is the previous
//! row's `hash`, or [`GENESIS_HASH`] (64 zeros) for seq 1. The text hashed is
//! exactly the text stored: verification never parses or normalises a row.
//!
//! The chain key ([`ChainKey`]) is 32 random bytes made once per installation,
//! kept in the index only wrapped by the master key provider (like the tenant
//! keys; `audit_chain_key`), with the first seq it seals bound into the
//! wrapping. Rows before that seq were written by a Kastell that did not yet key
//! the chain: their `hash` is the plain `SHA-256( prev_hash || canonical(row) )`,
//! and the report counts them apart.
//!
//! # What the chain detects, and what it cannot
//!
//! With `seq` gap-free and part of the hash, [`verify`] finds a row edited in
//! place (its hash no longer matches), a row deleted (a gap in `seq`), and a row
//! inserted or replaced (the next row no longer links to it). Because the hash
//! takes a secret the database does not hold in the clear, someone who can write
//! the database but does not hold the master key cannot recompute the chain
//! after such a change (unkeyed rows before the key's first seq excepted). What
//! the chain cannot show on its own is the removal of the newest rows (the
//! shorter chain is still a valid chain). An anchor kept outside this database
//! catches that: `kastell audit verify` prints the head (seq and hash); an
//! operator records it elsewhere (a ticket, a WORM bucket, a signed e-mail,
//! another system's log) and later runs `kastell audit verify --anchor SEQ:HASH`,
//! which fails unless the row `SEQ` still carries `HASH`.

use ring::digest::{Context, SHA256};
use ring::hmac;

use super::{AuditError, AuditEvent};
use crate::crypto::{MasterKeys, SecretKey};
use crate::index::audit::{AuditHead, AuditRow};
use crate::index::Index;

/// `prev_hash` of the first row.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const FORMAT_TAG: &[u8; 16] = b"kastell-audit-v1";

/// Rows read per page while verifying: memory stays bounded whatever the trail's
/// length.
const PAGE: i64 = 1000;

/// Breaks listed in a report; the count goes on beyond.
const MAX_LISTED_BREAKS: usize = 100;

/// The canonical byte string of a row (see the module documentation).
pub fn canonical(row: &AuditRow) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, value: Option<&str>) {
        match value {
            None => out.push(0),
            Some(text) => {
                out.push(1);
                out.extend_from_slice(&(text.len() as u64).to_be_bytes());
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(FORMAT_TAG);
    field(&mut out, Some(&row.seq.to_string()));
    field(&mut out, Some(&row.at));
    field(&mut out, Some(&row.actor));
    field(&mut out, Some(&row.actor_kind));
    field(&mut out, row.client_address.as_deref());
    field(&mut out, Some(&row.tenant));
    field(&mut out, Some(&row.action));
    field(&mut out, Some(&row.outcome));
    field(&mut out, row.status.map(|s| s.to_string()).as_deref());
    field(&mut out, row.study_uid.as_deref());
    field(&mut out, row.series_uid.as_deref());
    field(&mut out, row.instance_uids.as_deref());
    field(&mut out, row.detail.as_deref());
    out
}

/// What the master key provider binds a wrapped chain key to: its purpose and
/// the first seq it seals (so that neither can be changed in the index).
pub fn chain_key_context(first_keyed_seq: i64) -> Vec<u8> {
    format!("kastell/audit-chain-key/v1 first_keyed_seq={first_keyed_seq}").into_bytes()
}

/// The secret that seals the chain from [`ChainKey::first_keyed_seq`] on.
#[derive(Clone)]
pub struct ChainKey {
    key: hmac::Key,
    first_keyed_seq: i64,
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainKey")
            .field("first_keyed_seq", &self.first_keyed_seq)
            .finish_non_exhaustive()
    }
}

/// How many times a new key is tried when other writers keep appending while it
/// is made (each try takes a moment; more than a few means something is wrong).
const CHAIN_KEY_ATTEMPTS: usize = 20;

impl ChainKey {
    pub fn new(secret: &SecretKey, first_keyed_seq: i64) -> Self {
        ChainKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose()),
            first_keyed_seq,
        }
    }

    /// The first seq this key seals; rows before it are hash-chained only.
    pub fn first_keyed_seq(&self) -> i64 {
        self.first_keyed_seq
    }

    /// The installation's chain key, if one was made.
    pub fn load(index: &Index, masters: &MasterKeys) -> Result<Option<Self>, AuditError> {
        let Some(stored) = index.audit_chain_key()? else {
            return Ok(None);
        };
        let secret = masters
            .unwrap(
                &stored.master_key,
                &stored.wrapped_key,
                &chain_key_context(stored.first_keyed_seq),
            )
            .map_err(AuditError::ChainKey)?;
        Ok(Some(ChainKey::new(&secret, stored.first_keyed_seq)))
    }

    /// The installation's chain key, made (and stored wrapped) by the first
    /// writer that needs it, to seal from the row after the current head.
    pub fn load_or_create(index: &Index, masters: &MasterKeys) -> Result<Self, AuditError> {
        for _ in 0..CHAIN_KEY_ATTEMPTS {
            if let Some(key) = Self::load(index, masters)? {
                return Ok(key);
            }
            let first_keyed_seq = index.audit_head()?.map_or(1, |head| head.seq + 1);
            let secret = SecretKey::generate().map_err(AuditError::ChainKey)?;
            let master = masters.active_name();
            let wrapped = masters
                .wrap(master, &secret, &chain_key_context(first_keyed_seq))
                .map_err(AuditError::ChainKey)?;
            if index.create_audit_chain_key(wrapped, first_keyed_seq, master)? {
                tracing::info!(first_keyed_seq, "made the audit chain key");
                return Ok(ChainKey::new(&secret, first_keyed_seq));
            }
        }
        Err(AuditError::ChainKeyContention)
    }
}

/// The hash a row must carry after `prev_hash`: keyed from the key's first seq,
/// plain SHA-256 before it (rows of a Kastell that did not key the chain yet).
pub fn row_hash(key: &ChainKey, prev_hash: &str, row: &AuditRow) -> String {
    if row.seq >= key.first_keyed_seq {
        let mut mac = hmac::Context::with_key(&key.key);
        mac.update(prev_hash.as_bytes());
        mac.update(&canonical(row));
        hex::encode(mac.sign().as_ref())
    } else {
        unkeyed_row_hash(prev_hash, row)
    }
}

/// The hash of a row written before the chain was keyed.
pub fn unkeyed_row_hash(prev_hash: &str, row: &AuditRow) -> String {
    let mut digest = Context::new(&SHA256);
    digest.update(prev_hash.as_bytes());
    digest.update(&canonical(row));
    hex::encode(digest.finish())
}

/// The rows that append `events` after `head`: consecutive seqs, each linked to
/// the one before.
pub fn seal(key: &ChainKey, head: Option<&AuditHead>, events: &[AuditEvent]) -> Vec<AuditRow> {
    let (mut seq, mut prev) = match head {
        Some(head) => (head.seq, head.hash.clone()),
        None => (0, GENESIS_HASH.to_string()),
    };
    events
        .iter()
        .map(|event| {
            seq += 1;
            let mut row = event.to_row();
            row.seq = seq;
            row.hash = row_hash(key, &prev, &row);
            row.prev_hash = std::mem::replace(&mut prev, row.hash.clone());
            row
        })
        .collect()
}

/// What is wrong at one place of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Rows from the break's seq up to `next_found - 1` are missing: deleted (or
    /// the seqs after them were renumbered).
    Missing { next_found: i64 },
    /// A seq below 1, which the writer never assigns: a forged row.
    InvalidSeq,
    /// The row's `prev_hash` is not the previous row's hash: the previous row was
    /// rewritten with a recomputed hash, or this row was inserted or replaced.
    Unlinked,
    /// The row's hash does not match its content: the row was edited.
    Edited,
    /// The anchor's row no longer carries the anchored hash: the chain was
    /// rewritten up to there.
    AnchorMismatch { expected_hash: String },
    /// The anchor's row is gone: the newest rows were removed.
    AnchorMissing,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing { next_found } => write!(
                f,
                "missing (deleted): the next row stored is seq {next_found}"
            ),
            Problem::InvalidSeq => write!(f, "a seq the writer never assigns (forged row)"),
            Problem::Unlinked => write!(
                f,
                "does not link to the row before it (that row was rewritten, or this one inserted)"
            ),
            Problem::Edited => write!(f, "edited: its hash does not match its content"),
            Problem::AnchorMismatch { expected_hash } => write!(
                f,
                "the anchor said hash {expected_hash}: the chain was rewritten up to here"
            ),
            Problem::AnchorMissing => {
                write!(f, "the anchored row is gone: the newest rows were removed")
            }
        }
    }
}

/// One break of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub seq: i64,
    pub problem: Problem,
}

/// A head recorded outside the database earlier (`SEQ:HASH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub seq: i64,
    pub hash: String,
}

impl std::str::FromStr for Anchor {
    type Err = AuditError;

    fn from_str(text: &str) -> Result<Self, AuditError> {
        let bad = || AuditError::Anchor(text.to_string());
        let (seq, hash) = text.trim().split_once(':').ok_or_else(bad)?;
        let seq: i64 = seq.trim().parse().map_err(|_| bad())?;
        let hash = hash.trim().to_ascii_lowercase();
        if seq < 1 || hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Anchor { seq, hash })
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Rows walked.
    pub events: u64,
    /// Rows before the chain key's first seq (or all, when there is no key yet):
    /// hash-chained with SHA-256 only, so someone who can write the database
    /// could have recomputed them.
    pub unkeyed_events: u64,
    /// The newest row as stored: record it elsewhere to anchor the chain.
    pub head: Option<AuditHead>,
    /// The first breaks, in seq order (at most 100 listed).
    pub breaks: Vec<Break>,
    /// Breaks found in all, listed or not.
    pub break_count: u64,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.break_count == 0
    }

    /// The seq of the first break.
    pub fn first_broken(&self) -> Option<i64> {
        self.breaks.first().map(|b| b.seq)
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.first_broken() {
            None => writeln!(f, "audit trail: {} events, chain intact", self.events)?,
            Some(seq) => {
                writeln!(
                    f,
                    "audit trail: {} events, chain BROKEN ({} break{}), first at seq {seq}",
                    self.events,
                    self.break_count,
                    if self.break_count == 1 { "" } else { "s" }
                )?;
                for b in &self.breaks {
                    writeln!(f, "  seq {}: {}", b.seq, b.problem)?;
                }
                if self.break_count > self.breaks.len() as u64 {
                    writeln!(
                        f,
                        "  … and {} more",
                        self.break_count - self.breaks.len() as u64
                    )?;
                }
            }
        }
        if self.unkeyed_events > 0 {
            writeln!(
                f,
                "{} of them written before the chain was keyed: hash-chained only (SHA-256)",
                self.unkeyed_events
            )?;
        }
        match &self.head {
            Some(head) => {
                writeln!(f, "head: seq {} hash {}", head.seq, head.hash)?;
                writeln!(
                    f,
                    "anchor: {}:{} (keep it outside this database: `kastell audit verify \
                     --anchor` with it also detects removed newest rows, which the chain \
                     alone cannot)",
                    head.seq, head.hash
                )
            }
            None => writeln!(f, "head: none (the trail is empty)"),
        }
    }
}

/// Walks rows in seq order and collects breaks.
#[derive(Debug)]
pub struct ChainWalk {
    key: Option<ChainKey>,
    expected_seq: i64,
    prev_hash: String,
    anchor: Option<Anchor>,
    anchor_seen: bool,
    report: VerifyReport,
}

impl ChainWalk {
    /// A walk checking keyed rows with `key`; without one (no key was ever
    /// made), every row is taken as written before the chain was keyed.
    pub fn new(key: Option<ChainKey>, anchor: Option<Anchor>) -> Self {
        ChainWalk {
            key,
            expected_seq: 1,
            prev_hash: GENESIS_HASH.to_string(),
            anchor,
            anchor_seen: false,
            report: VerifyReport::default(),
        }
    }

    fn broken(&mut self, seq: i64, problem: Problem) {
        self.report.break_count += 1;
        if self.report.breaks.len() < MAX_LISTED_BREAKS {
            self.report.breaks.push(Break { seq, problem });
        }
    }

    /// Checks the next row. After a break the walk carries on from the row as
    /// stored, so that later, independent breaks are found too.
    pub fn push(&mut self, row: &AuditRow) {
        self.report.events += 1;
        if row.seq < 1 {
            self.broken(row.seq, Problem::InvalidSeq);
        } else if row.seq != self.expected_seq {
            // The link is broken too, necessarily: reported once, as the gap.
            self.broken(
                self.expected_seq,
                Problem::Missing {
                    next_found: row.seq,
                },
            );
        } else if row.prev_hash != self.prev_hash {
            self.broken(row.seq, Problem::Unlinked);
        }
        let expected = match &self.key {
            Some(key) => row_hash(key, &row.prev_hash, row),
            None => unkeyed_row_hash(&row.prev_hash, row),
        };
        if self
            .key
            .as_ref()
            .is_none_or(|key| row.seq < key.first_keyed_seq)
        {
            self.report.unkeyed_events += 1;
        }
        if expected != row.hash {
            self.broken(row.seq, Problem::Edited);
        }
        if let Some(anchor) = &self.anchor {
            if anchor.seq == row.seq {
                self.anchor_seen = true;
                if anchor.hash != row.hash {
                    let expected_hash = anchor.hash.clone();
                    self.broken(row.seq, Problem::AnchorMismatch { expected_hash });
                }
            }
        }
        self.expected_seq = row.seq.max(0) + 1;
        self.prev_hash = row.hash.clone();
        self.report.head = Some(AuditHead {
            seq: row.seq,
            hash: row.hash.clone(),
        });
    }

    pub fn finish(mut self) -> VerifyReport {
        if let Some(anchor) = self.anchor.take() {
            if !self.anchor_seen {
                self.broken(anchor.seq, Problem::AnchorMissing);
            }
        }
        self.report.breaks.sort_by_key(|b| b.seq);
        self.report
    }
}

/// Walks the whole trail in seq order, one page at a time, checking keyed rows
/// with `key` (`None`: no key was ever made).
pub fn verify(index: &Index, key: Option<ChainKey>) -> Result<VerifyReport, AuditError> {
    verify_anchored(index, key, None)
}

/// [`verify`], and also checks that the row of `anchor` still carries its hash.
pub fn verify_anchored(
    index: &Index,
    key: Option<ChainKey>,
    anchor: Option<Anchor>,
) -> Result<VerifyReport, AuditError> {
    let mut walk = ChainWalk::new(key, anchor);
    let mut after = i64::MIN;
    loop {
        let page = index.audit_page(after, PAGE)?;
        for row in &page {
            walk.push(row);
        }
        match page.last() {
            Some(last) if page.len() as i64 == PAGE => after = last.seq,
            _ => break,
        }
    }
    Ok(walk.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, ActorKind, Outcome};

    fn event(n: usize) -> AuditEvent {
        AuditEvent::new(
            format!("user-{n}"),
            ActorKind::Token,
            "default",
            Action::Retrieve,
            Outcome::Success,
        )
        .study(format!("1.2.3.{n}"))
        .status(200)
    }

    fn key() -> ChainKey {
        ChainKey::new(&SecretKey::from_bytes(&[7; 32]).unwrap(), 1)
    }

    fn chain(n: usize) -> Vec<AuditRow> {
        let events: Vec<_> = (0..n).map(event).collect();
        seal(&key(), None, &events)
    }

    fn walk(rows: &[AuditRow], anchor: Option<Anchor>) -> VerifyReport {
        let mut walk = ChainWalk::new(Some(key()), anchor);
        for row in rows {
            walk.push(row);
        }
        walk.finish()
    }

    #[test]
    fn the_encoding_is_unambiguous() {
        let mut a = chain(1).remove(0);
        let mut b = a.clone();
        a.actor = "ab".into();
        a.tenant = "c".into();
        b.actor = "a".into();
        b.tenant = "bc".into();
        assert_ne!(canonical(&a), canonical(&b));
        // NULL and empty differ.
        let mut c = a.clone();
        let mut d = a.clone();
        c.detail = None;
        d.detail = Some(String::new());
        assert_ne!(canonical(&c), canonical(&d));
        // The seq is part of the hash.
        let mut e = a.clone();
        e.seq += 1;
        assert_ne!(
            row_hash(&key(), GENESIS_HASH, &a),
            row_hash(&key(), GENESIS_HASH, &e)
        );
    }

    #[test]
    fn sealing_links_rows_from_the_genesis_hash() {
        let rows = chain(3);
        assert_eq!(
            rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(rows[0].prev_hash, GENESIS_HASH);
        assert_eq!(rows[1].prev_hash, rows[0].hash);
        assert_eq!(rows[2].prev_hash, rows[1].hash);
        assert_eq!(rows[0].hash.len(), 64);
        let more = seal(
            &key(),
            Some(&AuditHead {
                seq: 3,
                hash: rows[2].hash.clone(),
            }),
            &[event(9)],
        );
        assert_eq!(
            (more[0].seq, more[0].prev_hash.as_str()),
            (4, rows[2].hash.as_str())
        );
        let report = walk(&[rows, more].concat(), None);
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.events, 4);
    }

    #[test]
    fn every_kind_of_tampering_is_named_at_its_seq() {
        let rows = chain(6);

        let mut edited = rows.clone();
        edited[2].actor = "mallory".into();
        let report = walk(&edited, None);
        assert_eq!(report.first_broken(), Some(3), "{report}");
        assert_eq!(report.breaks[0].problem, Problem::Edited);
        assert_eq!(report.break_count, 1);

        // Edited and re-hashed: the next row no longer links to it.
        let mut rehashed = edited.clone();
        rehashed[2].hash = row_hash(&key(), &rehashed[2].prev_hash, &rehashed[2]);
        let report = walk(&rehashed, None);
        assert_eq!(
            report.breaks,
            vec![Break {
                seq: 4,
                problem: Problem::Unlinked
            }]
        );

        let mut deleted = rows.clone();
        deleted.remove(1);
        let report = walk(&deleted, None);
        assert_eq!(
            report.breaks,
            vec![Break {
                seq: 2,
                problem: Problem::Missing { next_found: 3 }
            }]
        );

        let mut first_deleted = rows.clone();
        first_deleted.remove(0);
        assert_eq!(walk(&first_deleted, None).first_broken(), Some(1));

        let mut forged = rows.clone();
        let mut fake = forged[0].clone();
        fake.seq = 0;
        fake.hash = row_hash(&key(), &fake.prev_hash, &fake);
        forged.insert(0, fake);
        assert_eq!(walk(&forged, None).first_broken(), Some(0));
    }

    #[test]
    fn an_anchor_catches_truncation_and_rewriting() {
        let rows = chain(5);
        let anchor = Anchor {
            seq: 5,
            hash: rows[4].hash.clone(),
        };
        assert!(walk(&rows, Some(anchor.clone())).is_intact());
        // The newest two rows removed: a valid, shorter chain.
        assert!(walk(&rows[..3], None).is_intact());
        let report = walk(&rows[..3], Some(anchor.clone()));
        assert_eq!(
            report.breaks,
            vec![Break {
                seq: 5,
                problem: Problem::AnchorMissing
            }]
        );
        // Rewritten from seq 2 on, every hash recomputed: only the anchor tells.
        let mut events: Vec<_> = (0..5).map(event).collect();
        events[1].actor = "mallory".into();
        let rewritten = seal(&key(), None, &events);
        assert!(walk(&rewritten, None).is_intact());
        assert_eq!(walk(&rewritten, Some(anchor)).first_broken(), Some(5));
    }

    #[test]
    fn anchors_parse() {
        let hash = "ab".repeat(32);
        let anchor: Anchor = format!("12:{}", hash.to_uppercase()).parse().unwrap();
        assert_eq!(anchor, Anchor { seq: 12, hash });
        assert!("12".parse::<Anchor>().is_err());
        assert!("0:00".parse::<Anchor>().is_err());
        assert!(format!("x:{}", "0".repeat(64)).parse::<Anchor>().is_err());
    }

    fn walk_with(key: &ChainKey, rows: &[AuditRow]) -> VerifyReport {
        let mut walk = ChainWalk::new(Some(key.clone()), None);
        for row in rows {
            walk.push(row);
        }
        walk.finish()
    }

    /// How someone recomputes a row's hash.
    type Forger<'a> = &'a dyn Fn(&str, &AuditRow) -> String;

    #[test]
    fn without_the_key_a_rewritten_chain_is_detected() {
        let mut rows = chain(6);
        rows[2].actor = "mallory".into();
        // Recomputed from the edited row on, as someone with access to the
        // database only can: with plain SHA-256, or with a key of their own.
        let other = ChainKey::new(&SecretKey::from_bytes(&[8; 32]).unwrap(), 1);
        let by_other_key = |prev: &str, row: &AuditRow| row_hash(&other, prev, row);
        let forgers: [Forger; 2] = [&unkeyed_row_hash, &by_other_key];
        for forge in forgers {
            let mut forged = rows.clone();
            for i in 2..forged.len() {
                forged[i].prev_hash = forged[i - 1].hash.clone();
                forged[i].hash = forge(&forged[i].prev_hash, &forged[i]);
            }
            let report = walk(&forged, None);
            assert_eq!(report.first_broken(), Some(3), "{report}");
            assert_eq!(report.break_count, 4, "{report}");
            assert!(report.breaks.iter().all(|b| b.problem == Problem::Edited));
        }
    }

    #[test]
    fn rows_before_the_key_are_unkeyed_and_none_after_it() {
        let events: Vec<_> = (0..6).map(event).collect();
        let later = ChainKey::new(&SecretKey::from_bytes(&[7; 32]).unwrap(), 4);
        let rows = seal(&later, None, &events);
        assert_eq!(rows[2].hash, unkeyed_row_hash(&rows[2].prev_hash, &rows[2]));
        assert_ne!(rows[3].hash, unkeyed_row_hash(&rows[3].prev_hash, &rows[3]));
        let report = walk_with(&later, &rows);
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.unkeyed_events, 3);
        assert!(report.to_string().contains("3 of them written before"));
        // An unkeyed row where the key seals is a forgery.
        let mut forged = rows.clone();
        forged[4].actor = "mallory".into();
        forged[4].hash = unkeyed_row_hash(&forged[4].prev_hash, &forged[4]);
        forged[5].prev_hash = forged[4].hash.clone();
        forged[5].hash = unkeyed_row_hash(&forged[5].prev_hash, &forged[5]);
        let report = walk_with(&later, &forged);
        assert_eq!(report.first_broken(), Some(5), "{report}");
        // Without any key, every row is checked as unkeyed.
        let mut walk = ChainWalk::new(None, None);
        for row in &rows[..3] {
            walk.push(row);
        }
        let report = walk.finish();
        assert!(report.is_intact() && report.unkeyed_events == 3, "{report}");
    }
}
