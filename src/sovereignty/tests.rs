//! Tests of the sovereignty check against example configurations.

use super::*;
use crate::config::{BlobStorePolicy, Config, EventDestinationPolicy, Location};

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

fn webhook(name: &str, url: &str, location: Option<Location>) -> crate::config::WebhookConfig {
    crate::config::WebhookConfig {
        name: name.into(),
        url: url.into(),
        secret: "0123456789abcdef".into(),
        location,
        ..Default::default()
    }
}

#[test]
fn a_webhook_outside_the_policy_is_refused_like_the_index() {
    let mut config = eu_host();
    config.events.webhooks.push(webhook(
        "ris",
        "https://ris.example.com/hook",
        location("US", "Example Cloud Inc.", true),
    ));
    let violations = check(&config).unwrap_err();
    assert_eq!(
        rules(&violations),
        [
            ("webhook".to_string(), Rule::PersonalDataCountries),
            ("webhook".to_string(), Rule::ForeignAccessLaw)
        ]
    );
    assert!(violations[0]
        .backend
        .starts_with("webhook ris (https://ris.example.com/…)"));
    assert!(violations[0].problem.contains("UIDs"), "{}", violations[0]);
    assert!(
        violations[0].fix.contains("anywhere-without-patient-data"),
        "{}",
        violations[0]
    );
    assert!(violations[0]
        .fix
        .contains("point the webhook at a receiver"));

    // Events without patient data may go anywhere when the policy says so...
    config.sovereignty.event_destinations = EventDestinationPolicy::AnywhereWithoutPatientData;
    let report = check(&config).expect("UIDs may leave");
    let hook = &report.backends[4];
    assert_eq!(hook.kind, BackendKind::Webhook);
    assert!(!hook.personal_data_rules);
    // ... but not with them.
    config.events.webhooks[0].include_patient = true;
    let violations = check(&config).unwrap_err();
    assert_eq!(
        rules(&violations),
        [
            ("webhook".to_string(), Rule::PersonalDataCountries),
            ("webhook".to_string(), Rule::ForeignAccessLaw)
        ]
    );
    assert!(
        violations[0].problem.contains("patient names"),
        "{}",
        violations[0]
    );
    assert!(
        violations[0]
            .fix
            .contains("include_patient = false in the [[events.webhooks]] entry named \"ris\""),
        "{}",
        violations[0]
    );
}

#[test]
fn a_webhook_in_an_allowed_country_is_listed_with_what_it_receives() {
    let mut config = eu_host();
    let mut hook = webhook(
        "ai",
        "https://ai.example.de/events",
        location("DE", "Radiology AI GmbH", false),
    );
    hook.tenants = vec!["north".into()];
    hook.actions = vec!["study-stable".into()];
    hook.include_patient = true;
    config.events.webhooks.push(hook);
    let report = check(&config).expect("allowed");
    let hook = report.backend(BackendKind::Webhook);
    assert_eq!(hook.jurisdiction.source, Source::Declared);
    assert!(hook.personal_data_rules && hook.patient_data);
    let receives = hook.receives.clone().unwrap();
    assert!(receives.contains("tenant north"), "{receives}");
    assert!(receives.contains("study-stable only"), "{receives}");
    assert!(receives.contains("patient's name"), "{receives}");
    // The events link lists it, and so does personal metadata.
    let events = report
        .chain
        .iter()
        .find(|c| c.data == DataKind::Events)
        .expect("an events link");
    assert_eq!(events.held.len(), 1);
    assert!(events.rule.contains("same-as-personal-data"));
    let personal = &report.chain[1];
    assert!(personal
        .held
        .iter()
        .any(|h| h.backend == BackendKind::Webhook));
    let text = report.to_string();
    assert!(text.contains("receives:"), "{text}");
    assert!(text.contains("event destinations: same-as-personal-data"));
    assert!(text.contains("DE, Radiology AI GmbH"));
}

#[test]
fn a_loopback_webhook_and_broker_inherit_the_host() {
    let mut config = eu_host();
    config.events.nats.url = "nats://127.0.0.1:4222".into();
    config
        .events
        .webhooks
        .push(webhook("local", "http://127.0.0.1:9000/hook", None));
    let report = check(&config).expect("on the host");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    for kind in [BackendKind::EventBroker, BackendKind::Webhook] {
        let b = report.backend(kind);
        assert!(b.local && b.inherits_from_server, "{kind:?}");
        assert_eq!(b.jurisdiction.country.as_deref(), Some("DE"));
    }
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["backends"][4]["kind"], "event-broker");
    assert_eq!(json["backends"][4]["section"], "[events.nats]");
    assert_eq!(json["chain"][5]["data"], "events");
    // A host outside the policy names them among what lives on it.
    config.server.location = location("US", "Example Hosting", false);
    let violations = check(&config).unwrap_err();
    assert_eq!(
        rules(&violations),
        [("server".to_string(), Rule::PersonalDataCountries)]
    );
    assert!(
        violations[0].problem.contains("webhook local"),
        "{}",
        violations[0]
    );
}

#[test]
fn an_undeclared_remote_broker_is_a_warning_or_a_violation() {
    let mut config = eu_host();
    config.events.nats.url = "nats://user:hunter2secret@nats.example.com:4222".into();
    let report = check(&config).expect("undeclared is allowed by default");
    let broker = report.backend(BackendKind::EventBroker);
    assert_eq!(broker.jurisdiction.source, Source::Undeclared);
    assert!(report
        .warnings
        .iter()
        .any(|w| w.backend.starts_with("event broker") && w.message.contains("[events.nats]")));
    assert!(report.warnings.iter().any(|w| w.message.contains("tls://")));
    assert!(!serde_json::to_string(&report).unwrap().contains("hunter2"));

    config.sovereignty.require_declarations = true;
    let violations = check(&config).unwrap_err();
    assert_eq!(
        rules(&violations),
        [("event".to_string(), Rule::RequireDeclarations)]
    );
    assert!(violations[0].fix.contains("[events.nats]"));
}

#[test]
fn a_webhook_url_is_shown_without_its_path_or_query() {
    let mut config = eu_host();
    config.events.webhooks.push(webhook(
        "chat",
        "https://hooks.example.com/services/T000/B000/token-4711?sig=s3cret",
        location("US", "Chat Inc.", true),
    ));
    let report = assess(&config, &Environment::default());
    let text = report.to_string();
    let json = serde_json::to_string(&report).unwrap();
    let refusal = Refusal(report.violations.clone()).to_string();
    for output in [&text, &json, &refusal] {
        assert!(!output.contains("token-4711"), "{output}");
        assert!(!output.contains("s3cret"), "{output}");
    }
    assert!(
        text.contains("webhook chat (https://hooks.example.com/…)"),
        "{text}"
    );
}

#[test]
fn named_blob_stores_are_listed_and_held_to_the_blob_policy() {
    let mut config = eu_host();
    config.keys.master_key_file = "/etc/kastell/master.key".into();
    config.storage.stores.insert(
        "cold".into(),
        crate::config::NamedStoreConfig {
            url: "s3://kastell-archive/cold".into(),
            storage_class: "GLACIER_IR".into(),
            location: location("US", "Amazon Web Services, Inc.", true),
            ..Default::default()
        },
    );
    let report = check(&config).expect("ciphertext may be anywhere");
    let cold = report
        .backends
        .iter()
        .find(|b| b.name.starts_with("blob store cold"))
        .expect("the named store is in the report");
    assert!(
        cold.name.contains("storage class GLACIER_IR"),
        "{}",
        cold.name
    );
    assert_eq!(cold.section, "[storage.stores.cold]");
    assert_eq!(cold.jurisdiction.country.as_deref(), Some("US"));

    config.sovereignty.blob_stores = BlobStorePolicy::SameAsPersonalData;
    let violations = check(&config).unwrap_err();
    assert!(
        violations
            .iter()
            .all(|v| v.backend.starts_with("blob store cold")),
        "{violations:?}"
    );
    assert!(!violations.is_empty());
}
