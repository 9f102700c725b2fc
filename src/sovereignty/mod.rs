//! Jurisdiction: where each kind of data Kastell keeps sits, under whose law, and
//! whether the policy allows it.
//!
//! The operator declares each backend's location in the configuration
//! ([`Location`] in `[server]`, `[index]`, `[storage]` and `[keys]`); a backend local
//! to the host inherits the host's declaration. [`check`] holds the declarations
//! against the `[sovereignty]` policy and returns the control chain ([`Report`]) or
//! the violations. Pure — configuration (and a snapshot of the environment the
//! backends' libraries read) in, verdict out — so `kastell serve` runs it before it
//! opens anything.
//!
//! Kastell cannot verify a declaration (an address says nothing about who may be
//! compelled to hand data over); what it can do is refuse a configuration whose own
//! declarations break the policy, and say plainly what is undeclared.

mod country;
mod place;

use std::fmt;

use serde::Serialize;

use crate::config::{BlobStorePolicy, Config, Location, MasterKeySource, SovereigntyConfig};

pub use place::display_url;

/// What the check needs from the process environment: the settings with which the
/// backends' libraries pick their endpoints. The application collects them (this
/// module does no I/O); the default means "the configuration alone".
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// object_store settings from the `AWS_*`, `AZURE_*` and `GOOGLE_*` variables,
    /// names lower-cased, as the blob store passes them (`aws_endpoint_url`, ...).
    pub blob_settings: Vec<(String, String)>,
    /// `AZURITE_BLOB_STORAGE_URL`: where object_store's Azure emulator mode connects.
    pub azurite_url: Option<String>,
    /// `PGHOST`: libpq's host when the index URL names none.
    pub pg_host: Option<String>,
}

/// The places that hold data, each with its own declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// The host running Kastell: decrypts, holds the master key in memory, logs.
    Server,
    /// The index database: personal metadata, wrapped tenant keys, the audit trail.
    Index,
    /// The blob store: encrypted DICOM objects and derived objects.
    BlobStore,
    /// Where the master key is held.
    Keys,
}

impl BackendKind {
    /// The configuration section holding its `location`.
    fn section(self) -> &'static str {
        match self {
            BackendKind::Server => "[server]",
            BackendKind::Index => "[index]",
            BackendKind::BlobStore => "[storage]",
            BackendKind::Keys => "[keys]",
        }
    }

    /// What the personal-data rules protect there, for messages.
    fn protects(self) -> &'static str {
        match self {
            BackendKind::Server => "the host that decrypts images and uses the master key",
            BackendKind::Index => "personal metadata and the audit trail",
            BackendKind::BlobStore => "blobs (sovereignty.blob_stores = \"same-as-personal-data\")",
            BackendKind::Keys => "the master key",
        }
    }

    /// How to comply by moving, for fixes.
    fn move_advice(self) -> &'static str {
        match self {
            BackendKind::Server => "run Kastell on a host",
            BackendKind::Index => "move the index to a database",
            BackendKind::BlobStore => "use a blob store",
            BackendKind::Keys => "hold the master key",
        }
    }
}

/// The kinds of data the control chain follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataKind {
    Images,
    PersonalMetadata,
    Keys,
    AuditTrail,
    Logs,
}

impl fmt::Display for DataKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataKind::Images => "images",
            DataKind::PersonalMetadata => "personal metadata",
            DataKind::Keys => "keys",
            DataKind::AuditTrail => "audit trail",
            DataKind::Logs => "logs",
        })
    }
}

/// Where a backend's jurisdiction comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Its own `location`.
    Declared,
    /// Local to the host, which declared its location.
    InheritedFromServer,
    /// Nobody said.
    Undeclared,
}

/// A backend's effective jurisdiction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Jurisdiction {
    pub source: Source,
    /// ISO 3166-1 alpha-2, upper case.
    pub country: Option<String>,
    pub operator: Option<String>,
    /// `None`: not stated.
    pub foreign_access_law: Option<bool>,
    pub note: Option<String>,
}

impl Jurisdiction {
    fn from_location(location: &Location, source: Source) -> Self {
        let text = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
        Jurisdiction {
            source,
            country: Some(country::normalize(&location.country)),
            operator: text(&location.operator),
            foreign_access_law: location.foreign_access_law,
            note: text(&location.note),
        }
    }

    fn undeclared() -> Self {
        Jurisdiction {
            source: Source::Undeclared,
            country: None,
            operator: None,
            foreign_access_law: None,
            note: None,
        }
    }
}

impl fmt::Display for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(country) = &self.country else {
            return f.write_str("undeclared");
        };
        write!(f, "{country}")?;
        if let Some(operator) = &self.operator {
            write!(f, ", {operator}")?;
        }
        f.write_str(match self.foreign_access_law {
            Some(true) => ", subject to foreign-access law",
            Some(false) => ", not subject to foreign-access law",
            None => ", foreign-access law not stated",
        })?;
        f.write_str(match self.source {
            Source::Declared => " (declared)",
            Source::InheritedFromServer => " (the host's, inherited)",
            Source::Undeclared => "",
        })
    }
}

/// One place that holds data.
#[derive(Debug, Clone, Serialize)]
pub struct Backend {
    pub kind: BackendKind,
    /// How messages name it, e.g. `index (postgres://db.example.com/kastell)`;
    /// never with a password.
    pub name: String,
    /// What and where, as far as the configuration tells.
    pub placement: String,
    /// On the host (the SQLite file, the local blob directory, a loopback server).
    pub local: bool,
    /// Has no declaration of its own and takes the host's.
    pub inherits_from_server: bool,
    /// Whether the personal-data rules apply to it.
    pub personal_data_rules: bool,
    pub jurisdiction: Jurisdiction,
}

/// Part of a kind of data, held by one backend.
#[derive(Debug, Clone, Serialize)]
pub struct Holding {
    pub what: String,
    pub backend: BackendKind,
    pub name: String,
    pub encrypted: bool,
    pub jurisdiction: Jurisdiction,
}

/// One link of the control chain: a kind of data, where it sits and who can read it.
#[derive(Debug, Clone, Serialize)]
pub struct Custody {
    pub data: DataKind,
    /// The policy rule that applies.
    pub rule: String,
    pub held: Vec<Holding>,
    /// Whether and how it is encrypted, at rest and on the way.
    pub encryption: String,
    /// Who holds the keys that open it.
    pub keys: String,
}

/// Something the operator should know that does not stop Kastell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notice {
    pub backend: String,
    pub message: String,
}

/// The policy rule a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// `sovereignty.personal_data_countries`
    PersonalDataCountries,
    /// `sovereignty.allow_foreign_access_law = false`
    ForeignAccessLaw,
    /// `sovereignty.require_declarations = true`
    RequireDeclarations,
    /// Countries are ISO 3166-1 alpha-2 codes.
    CountryCode,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::PersonalDataCountries => "sovereignty.personal_data_countries",
            Rule::ForeignAccessLaw => "sovereignty.allow_foreign_access_law = false",
            Rule::RequireDeclarations => "sovereignty.require_declarations = true",
            Rule::CountryCode => "ISO 3166-1 alpha-2 country codes",
        })
    }
}

/// A declaration the policy does not allow: which backend, what is wrong, which
/// rule, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{backend}: {problem} (rule: {rule}). Fix: {fix}")]
pub struct Violation {
    pub backend: String,
    pub rule: Rule,
    pub problem: String,
    pub fix: String,
}

/// The refusal to start: every violation at once, so one edit can fix them all.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Refusal(pub Vec<Violation>);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "the sovereignty policy is violated ({n} violation{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for violation in &self.0 {
            write!(f, "\n  - {violation}")?;
        }
        Ok(())
    }
}

/// The control chain: the policy, the backends with their jurisdictions, and for
/// each kind of data where it sits, encrypted or not, and who holds the keys.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub policy: SovereigntyConfig,
    pub backends: Vec<Backend>,
    pub chain: Vec<Custody>,
    pub warnings: Vec<Notice>,
    pub violations: Vec<Violation>,
}

impl Report {
    /// The report when the policy holds, else its violations.
    pub fn into_result(self) -> Result<Report, Vec<Violation>> {
        if self.violations.is_empty() {
            Ok(self)
        } else {
            Err(self.violations)
        }
    }

    pub fn backend(&self, kind: BackendKind) -> &Backend {
        self.backends
            .iter()
            .find(|b| b.kind == kind)
            .expect("every kind of backend is in the report")
    }
}

/// Checks the configuration's declarations against its policy, from the
/// configuration alone (see [`assess`] for the endpoints the environment sets).
pub fn check(config: &Config) -> Result<Report, Vec<Violation>> {
    assess(config, &Environment::default()).into_result()
}

/// The full report, violations included, with the backends' endpoints as the
/// environment snapshot `env` sets them.
pub fn assess(config: &Config, env: &Environment) -> Report {
    let policy = &config.sovereignty;
    let host = config.server.location.as_ref();
    let index_url = config.effective_index_url();
    let blob_url = config.effective_blob_url();
    let index_place = place::index(&index_url, env);
    let blob_place = place::blob_store(&blob_url, &config.storage.blob_options, env);
    let key_source = config.master_key_source();

    let backend = |kind: BackendKind,
                   name: String,
                   placement: String,
                   local: bool,
                   own: Option<&Location>| {
        let inherits = kind != BackendKind::Server && local && own.is_none();
        let jurisdiction = match (own, inherits.then_some(host).flatten()) {
            (Some(own), _) => Jurisdiction::from_location(own, Source::Declared),
            (None, Some(host)) => Jurisdiction::from_location(host, Source::InheritedFromServer),
            (None, None) => Jurisdiction::undeclared(),
        };
        Backend {
            kind,
            name,
            placement,
            local,
            inherits_from_server: inherits,
            personal_data_rules: kind != BackendKind::BlobStore
                || policy.blob_stores == BlobStorePolicy::SameAsPersonalData,
            jurisdiction,
        }
    };
    let backends = vec![
        backend(
            BackendKind::Server,
            "server (the host running Kastell)".into(),
            "the machine running the kastell process".into(),
            true,
            host,
        ),
        backend(
            BackendKind::Index,
            format!("index ({})", display_url(&index_url)),
            index_place.description.clone(),
            index_place.local,
            config.index.location.as_ref(),
        ),
        backend(
            BackendKind::BlobStore,
            format!("blob store ({})", display_url(&blob_url)),
            blob_place.description.clone(),
            blob_place.local,
            config.storage.location.as_ref(),
        ),
        backend(
            BackendKind::Keys,
            format!("keys ({})", describe_key_source(&key_source)),
            "read from a file or the environment of the host".into(),
            true,
            config.keys.location.as_ref(),
        ),
    ];

    let (violations, mut warnings) = judge(policy, &backends);
    if !index_place.local && index_place.tls_required == Some(false) {
        warnings.push(Notice {
            backend: backends[1].name.clone(),
            message: "personal metadata travels to a remote database whose URL does not \
                      require TLS; add sslmode=verify-full (or require) to index.url"
                .into(),
        });
    }
    let chain = chain(policy, &backends, &index_url, &index_place, &key_source);
    Report {
        policy: policy.clone(),
        backends,
        chain,
        warnings,
        violations,
    }
}

fn describe_key_source(source: &MasterKeySource) -> String {
    match source {
        MasterKeySource::Configured => {
            "master key from keys.master_key, i.e. the configuration or KASTELL__KEYS__MASTER_KEY"
                .into()
        }
        MasterKeySource::File(path) => format!("master key from file {}", path.display()),
        MasterKeySource::Development(path) => {
            format!("generated development master key {}", path.display())
        }
        MasterKeySource::Missing => "no master key configured".into(),
    }
}

/// Holds every declaration against the policy: violations, and notices for what
/// is undeclared but allowed to be.
fn judge(policy: &SovereigntyConfig, backends: &[Backend]) -> (Vec<Violation>, Vec<Notice>) {
    let mut violations = Vec::new();
    let mut warnings = Vec::new();
    let mut allowed = Vec::new();
    for code in &policy.personal_data_countries {
        let normalized = country::normalize(code);
        if !country::is_assigned(&normalized) {
            violations.push(Violation {
                backend: "policy ([sovereignty])".into(),
                rule: Rule::CountryCode,
                problem: format!(
                    "personal_data_countries lists {code:?}, which is not an assigned ISO \
                     3166-1 alpha-2 code{}",
                    country::hint(&normalized)
                ),
                fix: "list two-letter ISO 3166-1 codes, e.g. [\"DE\", \"AT\"]".into(),
            });
        }
        allowed.push(normalized);
    }
    // Backends on the host are judged with the host: one message naming them all,
    // not one per inheritor.
    let inheritors: Vec<&str> = backends
        .iter()
        .filter(|b| b.inherits_from_server)
        .map(|b| b.name.as_str())
        .collect();

    for b in backends {
        let section = b.kind.section();
        let also = if b.kind == BackendKind::Server && !inheritors.is_empty() {
            format!(
                "; this also covers {}, which are on the host and inherit its location",
                inheritors.join(", ")
            )
        } else {
            String::new()
        };
        let violation = |rule, problem: String, fix: String| Violation {
            backend: b.name.clone(),
            rule,
            problem,
            fix,
        };
        match b.jurisdiction.source {
            Source::InheritedFromServer => {}
            Source::Undeclared if b.inherits_from_server => {}
            Source::Undeclared if policy.require_declarations => violations.push(violation(
                Rule::RequireDeclarations,
                format!("no location is declared{also}"),
                format!(
                    "add location = {{ country = \"..\", operator = \"..\", foreign_access_law = \
                     false }} to {section}, or set sovereignty.require_declarations = false"
                ),
            )),
            Source::Undeclared => warnings.push(Notice {
                backend: b.name.clone(),
                message: format!(
                    "no location is declared, so nobody can tell in which country and under \
                     whose law it is{also}; add location = {{ country = \"..\", operator = \
                     \"..\", foreign_access_law = false }} to {section}"
                ),
            }),
            Source::Declared => {
                let country = b.jurisdiction.country.clone().unwrap_or_default();
                if !country::is_assigned(&country) {
                    violations.push(violation(
                        Rule::CountryCode,
                        format!(
                            "declares country {country:?}, which is not an assigned ISO 3166-1 \
                             alpha-2 code{}",
                            country::hint(&country)
                        ),
                        format!("use a two-letter ISO 3166-1 code in {section} location"),
                    ));
                    continue;
                }
                if !b.personal_data_rules {
                    continue;
                }
                let blob_alternative = if b.kind == BackendKind::BlobStore {
                    ", or set sovereignty.blob_stores = \"ciphertext-anywhere\" (every blob is \
                     encrypted before upload and its keys stay under the personal-data rules)"
                } else {
                    ""
                };
                if !allowed.contains(&country) {
                    violations.push(violation(
                        Rule::PersonalDataCountries,
                        format!(
                            "is declared in {country}, outside the countries allowed for {} ({}){also}",
                            b.kind.protects(),
                            allowed.join(", ")
                        ),
                        format!(
                            "{} in an allowed country (or correct {section} location if it is \
                             wrong); to allow {country}, add it to \
                             sovereignty.personal_data_countries{blob_alternative}",
                            b.kind.move_advice()
                        ),
                    ));
                }
                if policy.allow_foreign_access_law {
                    continue;
                }
                match b.jurisdiction.foreign_access_law {
                    Some(false) => {}
                    Some(true) => violations.push(violation(
                        Rule::ForeignAccessLaw,
                        format!(
                            "its operator{} is declared subject to foreign-access law, which the \
                             policy forbids for {}{also}",
                            b.jurisdiction
                                .operator
                                .as_ref()
                                .map(|o| format!(" ({o})"))
                                .unwrap_or_default(),
                            b.kind.protects()
                        ),
                        format!(
                            "{} with an operator not subject to foreign-access law, or set \
                             sovereignty.allow_foreign_access_law = true if your risk assessment \
                             accepts the exposure{blob_alternative}",
                            b.kind.move_advice()
                        ),
                    )),
                    None => violations.push(violation(
                        Rule::ForeignAccessLaw,
                        format!(
                            "does not state whether its operator is subject to foreign-access \
                             law, which the policy must know for {}{also}",
                            b.kind.protects()
                        ),
                        format!("add foreign_access_law = true or false to {section} location"),
                    )),
                }
            }
        }
    }
    (violations, warnings)
}

/// The control chain, one link per kind of data.
fn chain(
    policy: &SovereigntyConfig,
    backends: &[Backend],
    index_url: &str,
    index_place: &place::Place,
    key_source: &MasterKeySource,
) -> Vec<Custody> {
    let find = |kind| {
        backends
            .iter()
            .find(|b| b.kind == kind)
            .expect("all four backends are built")
    };
    let (server, index, blobs, keys) = (
        find(BackendKind::Server),
        find(BackendKind::Index),
        find(BackendKind::BlobStore),
        find(BackendKind::Keys),
    );
    let held = |b: &Backend, what: &str, encrypted| Holding {
        what: what.into(),
        backend: b.kind,
        name: b.name.clone(),
        encrypted,
        jurisdiction: b.jurisdiction.clone(),
    };
    // The countries are listed once, under the policy; each link names the rule.
    let personal_rule = format!(
        "personal-data rules: sovereignty.personal_data_countries, operators subject to \
         foreign-access law {}",
        if policy.allow_foreign_access_law {
            "allowed"
        } else {
            "not allowed"
        }
    );
    let master = describe_key_source(key_source);
    let key_holders = format!(
        "the master key ({master}) is held by: {}; the kastell process holds it in memory on \
         the host ({})",
        keys.jurisdiction, server.jurisdiction
    );
    let development_warning = if matches!(key_source, MasterKeySource::Development(_)) {
        " This development key sits in the data directory next to the data it protects: \
         anyone with that directory can read every image."
    } else {
        ""
    };
    let index_at_rest = if index_url.starts_with("sqlite://") {
        format!(
            "not encrypted by Kastell: the index keeps them in plaintext ({}); encrypt the \
             host's disk if they must be encrypted at rest",
            index_place.description
        )
    } else {
        let transit = if index_place.local {
            "on the host (loopback or Unix socket)"
        } else if index_place.tls_required == Some(true) {
            "TLS, required by the URL's sslmode"
        } else {
            "TLS not required by the URL (add sslmode=verify-full)"
        };
        format!(
            "not encrypted by Kastell: rows are plaintext in {}; encryption at rest is up to \
             the database's operator (e.g. encrypted volumes). On the way: {transit}",
            index_place.description
        )
    };
    let index_readers = if index.local {
        "no key protects the index rows: whoever administers the host can read them"
    } else {
        "no key protects the index rows: whoever administers the database server can read them"
    };

    vec![
        Custody {
            data: DataKind::Images,
            rule: match policy.blob_stores {
                BlobStorePolicy::CiphertextAnywhere => "sovereignty.blob_stores = \
                    \"ciphertext-anywhere\": the blob store may be anywhere, since it only ever \
                    holds ciphertext and the keys stay under the personal-data rules"
                    .into(),
                BlobStorePolicy::SameAsPersonalData => {
                    format!("sovereignty.blob_stores = \"same-as-personal-data\": {personal_rule}")
                }
            },
            held: vec![held(
                blobs,
                "DICOM instances, and derived objects (cached series metadata, thumbnails)",
                true,
            )],
            encryption: "encrypted on the host before upload: AES-256-GCM in 64 KiB \
                authenticated segments under a fresh data key per object; object names are \
                random ids carrying no patient data. The blob store's operator still sees \
                object sizes, counts and access times"
                .into(),
            keys: format!(
                "each object's data key is wrapped by its tenant's key (kept wrapped in the \
                 index), which is wrapped by the master key; {key_holders}. The blob store's \
                 operator holds no key"
            ),
        },
        Custody {
            data: DataKind::PersonalMetadata,
            rule: personal_rule.clone(),
            held: vec![
                held(
                    index,
                    "patient, study, series and instance attributes used for search",
                    false,
                ),
                held(
                    blobs,
                    "the same attributes inside the DICOM objects and the cached series metadata",
                    true,
                ),
            ],
            encryption: format!(
                "in the index, {index_at_rest}. The copies in the blob store are encrypted like \
                 the images"
            ),
            keys: format!("{index_readers}; the blob store copies open with the image keys"),
        },
        Custody {
            data: DataKind::Keys,
            rule: personal_rule.clone(),
            held: vec![
                held(keys, "the master key", false),
                held(
                    index,
                    "tenant keys, wrapped by the master key (AES-256-GCM under an \
                     HKDF-SHA256-derived key)",
                    true,
                ),
                held(
                    blobs,
                    "data keys, one per object, wrapped by a tenant key in the object's header",
                    true,
                ),
            ],
            encryption: format!(
                "the master key is plaintext to whoever holds it (a file or the process \
                 environment); every key below it is stored only wrapped.{development_warning}"
            ),
            keys: key_holders.clone(),
        },
        Custody {
            data: DataKind::AuditTrail,
            rule: personal_rule.clone(),
            held: vec![held(
                index,
                "audit records, in the index database, chained by HMAC-SHA256 under a chain \
                 key kept wrapped by the master key",
                false,
            )],
            encryption: format!(
                "like the rest of the index, {index_at_rest}; whoever can write the index but \
                 does not hold the master key cannot edit the trail undetected"
            ),
            keys: format!(
                "{index_readers}; the chain key opens with the master key ({key_holders})"
            ),
        },
        Custody {
            data: DataKind::Logs,
            rule: format!("with the host: {personal_rule}"),
            // An OTLP exporter, once telemetry has one, is a second holding here
            // with its endpoint's declaration.
            held: vec![held(server, "standard error of the kastell process", false)],
            encryption: "plaintext, but without patient data: the access log names route \
                patterns (/dicomweb/studies/{study}), never paths or query strings, and the \
                test command checks a trace-level log for every stored name, ID and UID. \
                Where standard error goes next (journald, a log collector) is outside \
                Kastell's view: name it in [server] location.note"
                .into(),
            keys: "none: whoever reads the host's logs reads them".into(),
        },
    ]
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = &self.policy;
        writeln!(
            f,
            "Kastell sovereignty report: where each kind of data sits, under whose law\n"
        )?;
        writeln!(f, "Policy")?;
        writeln!(
            f,
            "  personal-data countries (index, keys, audit trail, host): {}",
            policy.personal_data_countries.join(", ")
        )?;
        writeln!(
            f,
            "  operators subject to foreign-access law: {}",
            if policy.allow_foreign_access_law {
                "allowed"
            } else {
                "not allowed"
            }
        )?;
        writeln!(
            f,
            "  blob stores: {}",
            match policy.blob_stores {
                BlobStorePolicy::CiphertextAnywhere => "ciphertext-anywhere",
                BlobStorePolicy::SameAsPersonalData => "same-as-personal-data",
            }
        )?;
        writeln!(
            f,
            "  declarations required: {}",
            if policy.require_declarations {
                "yes"
            } else {
                "no"
            }
        )?;

        writeln!(f, "\nBackends")?;
        for b in &self.backends {
            writeln!(f, "  {}", b.name)?;
            writeln!(f, "    where:        {}", b.placement)?;
            writeln!(f, "    jurisdiction: {}", b.jurisdiction)?;
            if let Some(note) = &b.jurisdiction.note {
                writeln!(f, "    note:         {note}")?;
            }
        }

        writeln!(f, "\nControl chain")?;
        for link in &self.chain {
            writeln!(f, "  {}", link.data)?;
            writeln!(f, "    rule:       {}", link.rule)?;
            for holding in &link.held {
                writeln!(
                    f,
                    "    held in:    {}: {} [{}]\n                {}",
                    holding.name,
                    holding.what,
                    if holding.encrypted {
                        "encrypted"
                    } else {
                        "not encrypted"
                    },
                    holding.jurisdiction
                )?;
            }
            writeln!(f, "    encryption: {}", link.encryption)?;
            writeln!(f, "    keys:       {}", link.keys)?;
        }

        if !self.warnings.is_empty() {
            writeln!(f, "\nWarnings")?;
            for warning in &self.warnings {
                writeln!(f, "  - {}: {}", warning.backend, warning.message)?;
            }
        }
        writeln!(f, "\nViolations")?;
        if self.violations.is_empty() {
            writeln!(f, "  none: the configuration keeps to the policy")?;
        }
        for violation in &self.violations {
            writeln!(f, "  - {violation}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(country: &str, operator: &str, foreign_access_law: bool) -> Option<Location> {
        Some(Location {
            country: country.into(),
            operator: operator.into(),
            foreign_access_law: Some(foreign_access_law),
            note: String::new(),
        })
    }

    /// The embedded defaults on a host declared in Germany.
    fn eu_host() -> Config {
        let mut config = Config::default();
        config.server.location = location("DE", "Klinikum Nord IT", false);
        config
    }

    /// (first word of the backend's name, rule) of each violation.
    fn rules(violations: &[Violation]) -> Vec<(String, Rule)> {
        violations
            .iter()
            .map(|v| {
                (
                    v.backend.split(' ').next().unwrap_or("").to_string(),
                    v.rule,
                )
            })
            .collect()
    }

    #[test]
    fn eu_host_with_local_sqlite_is_allowed() {
        let report = check(&eu_host()).expect("no violations");
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        for kind in [
            BackendKind::Index,
            BackendKind::BlobStore,
            BackendKind::Keys,
        ] {
            let backend = report.backend(kind);
            assert!(backend.inherits_from_server, "{kind:?}");
            assert_eq!(backend.jurisdiction.source, Source::InheritedFromServer);
            assert_eq!(backend.jurisdiction.country.as_deref(), Some("DE"));
        }
        let kinds: Vec<DataKind> = report.chain.iter().map(|c| c.data).collect();
        assert_eq!(
            kinds,
            [
                DataKind::Images,
                DataKind::PersonalMetadata,
                DataKind::Keys,
                DataKind::AuditTrail,
                DataKind::Logs
            ]
        );
        let text = report.to_string();
        assert!(
            text.contains("none: the configuration keeps to the policy"),
            "{text}"
        );
        assert!(text.contains("DE, Klinikum Nord IT, not subject to foreign-access law"));
    }

    #[test]
    fn index_with_a_us_operator_under_foreign_access_law_is_refused() {
        let mut config = eu_host();
        config.index.url = "postgres://kastell@db.example.com/kastell".into();
        config.index.location = location("US", "Example Cloud Inc.", true);
        let violations = check(&config).unwrap_err();
        assert_eq!(
            rules(&violations),
            [
                ("index".to_string(), Rule::PersonalDataCountries),
                ("index".to_string(), Rule::ForeignAccessLaw)
            ]
        );
        assert!(violations[0]
            .backend
            .starts_with("index (postgres://db.example.com/kastell)"));
        let message = violations[1].to_string();
        assert!(message.contains("Example Cloud Inc."), "{message}");
        assert!(
            message.contains("sovereignty.allow_foreign_access_law"),
            "{message}"
        );

        // In an EU country but under foreign-access law: only that rule.
        config.index.location = location("DE", "Example Cloud Germany GmbH", true);
        assert_eq!(
            rules(&check(&config).unwrap_err()),
            [("index".to_string(), Rule::ForeignAccessLaw)]
        );
        // ... which the policy can accept.
        config.sovereignty.allow_foreign_access_law = true;
        assert!(check(&config).is_ok());
    }

    #[test]
    fn keys_outside_the_eea_are_refused() {
        let mut config = eu_host();
        config.keys.master_key_file = "/etc/kastell/master.key".into();
        config.keys.location = location("CH", "Swiss HSM AG", false);
        let violations = check(&config).unwrap_err();
        assert_eq!(
            rules(&violations),
            [("keys".to_string(), Rule::PersonalDataCountries)]
        );
        assert!(violations[0].backend.contains("/etc/kastell/master.key"));
        assert!(violations[0].problem.contains("CH"));
        assert!(violations[0].fix.contains("personal_data_countries"));
        // Switzerland added to the policy: allowed.
        config.sovereignty.personal_data_countries.push("CH".into());
        assert!(check(&config).is_ok());
    }

    #[test]
    fn blobs_at_a_us_hyperscaler_depend_on_the_blob_policy() {
        let mut config = eu_host();
        config.storage.blob_url = "s3://kastell-images/prod".into();
        config.storage.location = location("US", "Amazon Web Services, Inc.", true);
        config.keys.master_key_file = "/etc/kastell/master.key".into();
        let report = check(&config).expect("ciphertext may be anywhere");
        let blobs = report.backend(BackendKind::BlobStore);
        assert!(!blobs.local);
        assert!(!blobs.personal_data_rules);
        assert_eq!(blobs.jurisdiction.country.as_deref(), Some("US"));

        config.sovereignty.blob_stores = BlobStorePolicy::SameAsPersonalData;
        let violations = check(&config).unwrap_err();
        assert_eq!(
            rules(&violations),
            [
                ("blob".to_string(), Rule::PersonalDataCountries),
                ("blob".to_string(), Rule::ForeignAccessLaw)
            ]
        );
        assert!(violations[0].fix.contains("ciphertext-anywhere"));
    }

    #[test]
    fn undeclared_remote_postgres_is_a_warning_or_a_violation() {
        let mut config = eu_host();
        config.index.url = "postgres://kastell@db.example.com:5432/kastell".into();
        let report = check(&config).expect("undeclared is allowed by default");
        assert_eq!(
            report.backend(BackendKind::Index).jurisdiction.source,
            Source::Undeclared
        );
        assert!(report
            .warnings
            .iter()
            .any(|w| w.backend.starts_with("index (") && w.message.contains("[index]")));

        config.sovereignty.require_declarations = true;
        let violations = check(&config).unwrap_err();
        assert_eq!(
            rules(&violations),
            [("index".to_string(), Rule::RequireDeclarations)]
        );
        assert!(violations[0].fix.contains("[index]"));
    }

    #[test]
    fn the_undeclared_embedded_default_starts_with_a_warning() {
        let report = check(&Config::default()).expect("the embedded default starts");
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        let warning = &report.warnings[0];
        assert!(warning.backend.starts_with("server"));
        // One warning for the host, naming what lives on it.
        assert!(
            warning.message.contains("index (sqlite://"),
            "{}",
            warning.message
        );
        for b in &report.backends {
            assert_eq!(b.jurisdiction.source, Source::Undeclared);
        }
        assert!(report.to_string().contains("undeclared"));

        let mut strict = Config::default();
        strict.sovereignty.require_declarations = true;
        let violations = check(&strict).unwrap_err();
        assert_eq!(
            rules(&violations),
            [("server".to_string(), Rule::RequireDeclarations)]
        );
    }

    #[test]
    fn a_host_outside_the_policy_is_one_violation_naming_what_lives_on_it() {
        let mut config = Config::default();
        config.server.location = location("US", "Example Hosting", false);
        let violations = check(&config).unwrap_err();
        assert_eq!(
            rules(&violations),
            [("server".to_string(), Rule::PersonalDataCountries)]
        );
        assert!(violations[0].problem.contains("index (sqlite://"));
        // The index's own declaration wins over the host's.
        config.server.location = location("DE", "Klinikum", false);
        config.index.location = location("US", "Example Hosting", false);
        assert_eq!(
            rules(&check(&config).unwrap_err()),
            [("index".to_string(), Rule::PersonalDataCountries)]
        );
    }

    #[test]
    fn foreign_access_law_must_be_stated_for_personal_data() {
        let mut config = Config::default();
        config.server.location = Some(Location {
            country: "de".into(),
            operator: String::new(),
            foreign_access_law: None,
            note: String::new(),
        });
        let violations = check(&config).unwrap_err();
        assert_eq!(
            rules(&violations),
            [("server".to_string(), Rule::ForeignAccessLaw)]
        );
        assert!(violations[0]
            .fix
            .contains("foreign_access_law = true or false"));
        // A blob store under ciphertext-anywhere need not say.
        let mut config = eu_host();
        config.storage.blob_url = "gs://b/p".into();
        config.storage.location = Some(Location {
            country: "BE".into(),
            operator: "Google".into(),
            foreign_access_law: None,
            note: String::new(),
        });
        assert!(check(&config).is_ok());
    }

    #[test]
    fn country_codes_are_iso_3166() {
        let mut config = eu_host();
        config.storage.location = location("UK", "Example", false);
        config.sovereignty.personal_data_countries.push("EU".into());
        let violations = check(&config).unwrap_err();
        assert_eq!(
            rules(&violations),
            [
                ("policy".to_string(), Rule::CountryCode),
                ("blob".to_string(), Rule::CountryCode)
            ]
        );
        assert!(violations[1].problem.contains("GB"), "{}", violations[1]);
    }

    #[test]
    fn a_loopback_endpoint_from_the_environment_is_on_the_host() {
        let mut config = eu_host();
        config.storage.blob_url = "s3://kastell-test/rust".into();
        config.keys.master_key = "x".into();
        let env = Environment {
            blob_settings: vec![("aws_endpoint_url".into(), "http://127.0.0.1:9000".into())],
            ..Default::default()
        };
        let report = assess(&config, &env);
        let blobs = report.backend(BackendKind::BlobStore);
        assert!(blobs.local && blobs.inherits_from_server);
        assert_eq!(blobs.jurisdiction.source, Source::InheritedFromServer);
        // Without the environment it would be Amazon S3, and undeclared.
        let report = check(&config).unwrap();
        assert_eq!(
            report.backend(BackendKind::BlobStore).jurisdiction.source,
            Source::Undeclared
        );
    }

    #[test]
    fn passwords_never_appear() {
        let mut config = eu_host();
        config.index.url =
            "postgres://kastell:hunter2secret@db.example.com/kastell?password=hunter2secret".into();
        config.index.location = location("US", "Example", true);
        config.storage.blob_url = "s3://bucket/p".into();
        config.storage.blob_options.insert(
            "aws_endpoint".into(),
            "https://user:hunter2secret@s3.example.com".into(),
        );
        config.keys.master_key = "hunter2secret".into();
        config.sovereignty.require_declarations = true;
        let report = assess(&config, &Environment::default());
        assert!(!report.violations.is_empty());
        let text = report.to_string();
        let json = serde_json::to_string(&report).unwrap();
        let refusal = Refusal(report.violations.clone()).to_string();
        for output in [&text, &json, &refusal] {
            assert!(!output.contains("hunter2"), "{output}");
        }
        assert!(text.contains("postgres://db.example.com/kastell"), "{text}");
    }

    #[test]
    fn the_report_serializes_every_kind_of_data() {
        let report = check(&eu_host()).unwrap();
        let json = serde_json::to_value(&report).unwrap();
        let kinds: Vec<&str> = json["chain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["data"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["images", "personal-metadata", "keys", "audit-trail", "logs"]
        );
        assert_eq!(json["policy"]["blob_stores"], "ciphertext-anywhere");
        assert_eq!(
            json["backends"][1]["jurisdiction"]["source"],
            "inherited-from-server"
        );
        assert_eq!(json["violations"], serde_json::json!([]));
    }
}
