//! The audit trail in the two formats audit repositories take:
//!
//! * **DICOM audit messages** (PS3.15 A.5, the IHE ATNA profile): one
//!   `<AuditMessage>` per event with EventIdentification, the active participants
//!   (the requester and Kastell), AuditSourceIdentification and, when a study is
//!   concerned, a ParticipantObjectIdentification of type Study Instance UID
//!   (110180). PS3.15 defines no container for several messages, so the export
//!   wraps them in one `<AuditMessages>` root element.
//! * **FHIR R4**: a Bundle of type `collection` holding one AuditEvent per event.
//!
//! Coded values use the DICOM (DCM) audit codes: event IDs from CID 400, event
//! type codes from CID 401, participant roles from CID 402. Series and SOP
//! Instance UIDs, for which the DICOM schema has no slot without the SOP Class
//! (which the trail does not record), go in ParticipantObjectDetail /
//! `entity.detail`.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use base64::Engine;
use serde_json::{json, Value};

use super::{format_time, Action, ActorKind, AuditError, Outcome, StoredEvent};
use crate::dicom::xml::escape;
use crate::index::Index;

/// How Kastell names itself as the audit source and as a participant.
pub const AUDIT_SOURCE_ID: &str = "kastell";

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const PAGE: i64 = 1000;

/// The two export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Atna,
    Fhir,
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Atna => "atna",
            ExportFormat::Fhir => "fhir",
        }
    }
}

/// A code of the DCM coding scheme: (code value, code meaning).
type Code = (&'static str, &'static str);

const INSTANCES_ACCESSED: Code = ("110103", "DICOM Instances Accessed");
const INSTANCES_TRANSFERRED: Code = ("110104", "DICOM Instances Transferred");
const STUDY_DELETED: Code = ("110105", "DICOM Study Deleted");
const AUDIT_LOG_USED: Code = ("110101", "Audit Log Used");
const EXPORT: Code = ("110106", "Export");
const QUERY: Code = ("110112", "Query");
const SECURITY_ALERT: Code = ("110113", "Security Alert");
const USER_AUTHENTICATION: Code = ("110114", "User Authentication");
const LOGIN: Code = ("110122", "Login");
const SECURITY_CONFIGURATION: Code = ("110129", "Security Configuration");
const USE_OF_RESTRICTED_FUNCTION: Code = ("110132", "Use of Restricted Function");
const APPLICATION: Code = ("110150", "Application");
const DESTINATION: Code = ("110152", "Destination Role ID");
const SOURCE: Code = ("110153", "Source Role ID");
const STUDY_INSTANCE_UID: Code = ("110180", "Study Instance UID");

/// How an event is coded in both formats.
struct Coding {
    event_id: Code,
    event_type: Option<Code>,
    /// C(reate), R(ead), U(pdate), D(elete), E(xecute).
    action: &'static str,
    /// Role of the requester (`None`: no DICOM role applies).
    requester_role: Option<Code>,
    /// Role of Kastell.
    server_role: Code,
}

fn coding(stored: &StoredEvent) -> Coding {
    let event = &stored.event;
    let (event_id, event_type, action) = match event.action {
        Action::Store => (INSTANCES_TRANSFERRED, None, "C"),
        Action::Search => (QUERY, None, "E"),
        // Instances sent to the requester: PS3.15 A.5.3.5 with action R, as for a
        // C-MOVE / C-GET source.
        Action::Retrieve => (INSTANCES_TRANSFERRED, None, "R"),
        // A whole study: DICOM Study Deleted; part of one: instances accessed for
        // deletion (A.5.3.4 with action D).
        Action::Delete if event.series_uid.is_none() && event.instance_uids.is_empty() => {
            (STUDY_DELETED, None, "D")
        }
        Action::Delete => (INSTANCES_ACCESSED, None, "D"),
        Action::KeyRotate
        | Action::KeyRetire
        | Action::KeyShred
        | Action::MasterCreate
        | Action::MasterRotate
        | Action::MasterRetire
        | Action::KeyRequest
        | Action::KeyApprove
        | Action::DeidProject => (SECURITY_ALERT, Some(SECURITY_CONFIGURATION), "E"),
        // Re-identification undoes what de-identification protects: an alert,
        // as a use of a restricted function.
        Action::Reidentify => (SECURITY_ALERT, Some(USE_OF_RESTRICTED_FUNCTION), "E"),
        // Data leaving the archive (PS3.15 A.5.3.6, action R).
        Action::Export => (EXPORT, None, "R"),
        Action::LoginFailure => (USER_AUTHENTICATION, Some(LOGIN), "E"),
        Action::AccessDenied => (SECURITY_ALERT, Some(USE_OF_RESTRICTED_FUNCTION), "E"),
        Action::AuditExport => (AUDIT_LOG_USED, None, "R"),
        // What may happen to the instances changed, not the instances: an
        // update of their record (A.5.3.4 with action U).
        Action::LegalHold
        | Action::LegalHoldLift
        | Action::RetentionRelease
        | Action::LifecycleMove
        | Action::LifecycleRestore => (INSTANCES_ACCESSED, None, "U"),
    };
    let (requester_role, server_role) = match event.action {
        // The requester sends (source), Kastell receives (destination); a query
        // is coded the same way.
        Action::Store | Action::Search => (Some(SOURCE), DESTINATION),
        Action::Retrieve => (Some(DESTINATION), SOURCE),
        _ => (None, APPLICATION),
    };
    Coding {
        event_id,
        event_type,
        action,
        requester_role,
        server_role,
    }
}

/// PS3.15 EventOutcomeIndicator / FHIR outcome: 0 success, 4 minor failure (the
/// request was refused or invalid), 8 serious failure (a server error).
fn outcome_code(stored: &StoredEvent) -> &'static str {
    match (stored.event.outcome, stored.event.status) {
        (Outcome::Success, _) => "0",
        (Outcome::Failure, Some(status)) if status >= 500 => "8",
        (Outcome::Failure, _) => "4",
    }
}

/// The status and detail as one sentence, e.g. `HTTP 403: no write scope`.
fn outcome_description(stored: &StoredEvent) -> Option<String> {
    let event = &stored.event;
    let status = event.status.map(|s| match event.actor_kind {
        ActorKind::Cli | ActorKind::System => format!("exit code {s}"),
        // An administrator identified by an API key on the command line (dual
        // control) did not come over HTTP.
        _ if event.client_address.is_none() => format!("exit code {s}"),
        _ => format!("HTTP {s}"),
    });
    match (status, &event.detail) {
        (Some(s), Some(d)) => Some(format!("{s}: {d}")),
        (Some(s), None) => Some(s),
        (None, Some(d)) => Some(d.clone()),
        (None, None) => None,
    }
}

/// PS3.15 NetworkAccessPointTypeCode / FHIR `agent.network.type`: 2 for an IP
/// address, 1 for a machine name.
fn network_type(address: &str) -> &'static str {
    if address.parse::<IpAddr>().is_ok() || address.parse::<SocketAddr>().is_ok() {
        "2"
    } else {
        "1"
    }
}

fn coded(out: &mut String, element: &str, (code, meaning): Code) {
    out.push_str(&format!(
        "<{element} csd-code=\"{code}\" codeSystemName=\"DCM\" originalText=\"{meaning}\"/>"
    ));
}

/// One `<AuditMessage>` (PS3.15 A.5.1).
pub fn atna_message(stored: &StoredEvent) -> String {
    let event = &stored.event;
    let codes = coding(stored);
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = String::with_capacity(1024);
    out.push_str("<AuditMessage>");

    out.push_str(&format!(
        "<EventIdentification EventActionCode=\"{}\" EventDateTime=\"{}\" EventOutcomeIndicator=\"{}\">",
        codes.action,
        format_time(event.at),
        outcome_code(stored)
    ));
    coded(&mut out, "EventID", codes.event_id);
    if let Some(event_type) = codes.event_type {
        coded(&mut out, "EventTypeCode", event_type);
    }
    if let Some(description) = outcome_description(stored) {
        out.push_str(&format!(
            "<EventOutcomeDescription>{}</EventOutcomeDescription>",
            escape(&description)
        ));
    }
    out.push_str("</EventIdentification>");

    out.push_str(&format!(
        "<ActiveParticipant UserID=\"{}\" UserIsRequestor=\"true\"",
        escape(&event.actor)
    ));
    if let Some(address) = &event.client_address {
        out.push_str(&format!(
            " NetworkAccessPointID=\"{}\" NetworkAccessPointTypeCode=\"{}\"",
            escape(address),
            network_type(address)
        ));
    }
    out.push('>');
    if let Some(role) = codes.requester_role {
        coded(&mut out, "RoleIDCode", role);
    }
    out.push_str("</ActiveParticipant>");
    out.push_str(&format!(
        "<ActiveParticipant UserID=\"{AUDIT_SOURCE_ID}\" UserIsRequestor=\"false\">"
    ));
    coded(&mut out, "RoleIDCode", codes.server_role);
    out.push_str("</ActiveParticipant>");

    // AuditSourceTypeCode 4: application server process (RFC 3881 / PS3.15).
    out.push_str(&format!(
        "<AuditSourceIdentification AuditEnterpriseSiteID=\"{}\" AuditSourceID=\"{AUDIT_SOURCE_ID}\">\
         <AuditSourceTypeCode csd-code=\"4\"/></AuditSourceIdentification>",
        escape(&event.tenant)
    ));

    if let Some(study) = &event.study_uid {
        // Type 2 (system object), role 3 (report), as PS3.15 A.5.3 codes studies.
        out.push_str(&format!(
            "<ParticipantObjectIdentification ParticipantObjectID=\"{}\" \
             ParticipantObjectTypeCode=\"2\" ParticipantObjectTypeCodeRole=\"3\">",
            escape(study)
        ));
        coded(&mut out, "ParticipantObjectIDTypeCode", STUDY_INSTANCE_UID);
        let details = event
            .series_uid
            .iter()
            .map(|uid| ("SeriesInstanceUID", uid))
            .chain(
                event
                    .instance_uids
                    .iter()
                    .map(|uid| ("SOPInstanceUID", uid)),
            );
        for (kind, uid) in details {
            out.push_str(&format!(
                "<ParticipantObjectDetail type=\"{kind}\" value=\"{}\"/>",
                b64.encode(uid.as_bytes())
            ));
        }
        out.push_str("</ParticipantObjectIdentification>");
    }
    out.push_str("</AuditMessage>");
    out
}

const ATNA_OPEN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<AuditMessages>\n";
const ATNA_CLOSE: &str = "</AuditMessages>\n";

/// Every event as a DICOM audit message, in one XML document.
pub fn export_atna(events: &[StoredEvent]) -> String {
    let mut out = String::from(ATNA_OPEN);
    for event in events {
        out.push_str(&atna_message(event));
        out.push('\n');
    }
    out.push_str(ATNA_CLOSE);
    out
}

fn dcm(code: Code) -> Value {
    json!({ "system": DCM, "code": code.0, "display": code.1 })
}

/// One FHIR R4 AuditEvent resource.
pub fn fhir_audit_event(stored: &StoredEvent) -> Value {
    let event = &stored.event;
    let codes = coding(stored);

    let mut requester = json!({
        "who": {
            "identifier": { "type": { "text": event.actor_kind.as_str() }, "value": event.actor },
            "display": event.actor,
        },
        "requestor": true,
    });
    if let Some(role) = codes.requester_role {
        requester["type"] = json!({ "coding": [dcm(role)] });
    }
    if let Some(address) = &event.client_address {
        requester["network"] = json!({ "address": address, "type": network_type(address) });
    }
    let server = json!({
        "type": { "coding": [dcm(codes.server_role)] },
        "who": { "display": AUDIT_SOURCE_ID },
        "requestor": false,
    });

    let mut resource = json!({
        "resourceType": "AuditEvent",
        "id": stored.seq.to_string(),
        "type": dcm(codes.event_id),
    });
    if let Some(event_type) = codes.event_type {
        resource["subtype"] = json!([dcm(event_type)]);
    }
    resource["action"] = json!(codes.action);
    resource["recorded"] = json!(format_time(event.at));
    resource["outcome"] = json!(outcome_code(stored));
    if let Some(description) = outcome_description(stored) {
        resource["outcomeDesc"] = json!(description);
    }
    resource["agent"] = json!([requester, server]);
    resource["source"] = json!({
        "site": event.tenant,
        "observer": { "display": AUDIT_SOURCE_ID },
        "type": [{
            "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
            "code": "4",
            "display": "Application Server",
        }],
    });
    if let Some(study) = &event.study_uid {
        let mut entity = json!({
            "what": { "identifier": {
                "type": { "coding": [dcm(STUDY_INSTANCE_UID)] },
                "system": "urn:dicom:uid",
                "value": format!("urn:oid:{study}"),
            }},
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "2",
                "display": "System Object",
            },
            "role": {
                "system": "http://terminology.hl7.org/CodeSystem/object-role",
                "code": "3",
                "display": "Report",
            },
        });
        let details: Vec<Value> = event
            .series_uid
            .iter()
            .map(|uid| json!({ "type": "SeriesInstanceUID", "valueString": uid }))
            .chain(
                event
                    .instance_uids
                    .iter()
                    .map(|uid| json!({ "type": "SOPInstanceUID", "valueString": uid })),
            )
            .collect();
        if !details.is_empty() {
            entity["detail"] = json!(details);
        }
        resource["entity"] = json!([entity]);
    }
    resource
}

/// Every event as a FHIR R4 Bundle (type `collection`) of AuditEvent resources.
pub fn export_fhir(events: &[StoredEvent]) -> Value {
    let entries: Vec<Value> = events
        .iter()
        .map(|e| json!({ "resource": fhir_audit_event(e) }))
        .collect();
    json!({ "resourceType": "Bundle", "type": "collection", "entry": entries })
}

/// `--since` as the stored time format: RFC 3339 UTC (`2026-01-31T12:00:00Z`,
/// fractions allowed) or a date (`2026-01-31`, meaning its start in UTC).
pub fn parse_since(text: &str) -> Result<String, AuditError> {
    let text = text.trim();
    let full = if text.len() == 10 && !text.contains('T') {
        format!("{text}T00:00:00Z")
    } else {
        text.to_string()
    };
    humantime::parse_rfc3339(&full)
        .map(format_time)
        .map_err(|_| AuditError::Since(text.to_string()))
}

/// Writes every event recorded at or after `since` (as from [`parse_since`]) to
/// `out`, reading the trail one page at a time, so that the export of a long
/// period never holds it all in memory. The output is the same document as
/// [`export_atna`] / [`export_fhir`] would give. Returns the number of events.
pub fn write_export(
    index: &Index,
    since: &str,
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<u64, AuditError> {
    match format {
        ExportFormat::Atna => out.write_all(ATNA_OPEN.as_bytes())?,
        ExportFormat::Fhir => {
            out.write_all(b"{\"resourceType\":\"Bundle\",\"type\":\"collection\",\"entry\":[")?
        }
    }
    let mut count = 0u64;
    let mut after = i64::MIN;
    loop {
        let page = index.audit_page_since(since, after, PAGE)?;
        let full = page.len() as i64 == PAGE;
        for row in page {
            after = row.seq;
            let event = StoredEvent::try_from(row)?;
            match format {
                ExportFormat::Atna => {
                    out.write_all(atna_message(&event).as_bytes())?;
                    out.write_all(b"\n")?;
                }
                ExportFormat::Fhir => {
                    if count > 0 {
                        out.write_all(b",")?;
                    }
                    out.write_all(b"\n")?;
                    let entry = json!({ "resource": fhir_audit_event(&event) });
                    serde_json::to_writer(&mut *out, &entry).map_err(std::io::Error::from)?;
                }
            }
            count += 1;
        }
        if !full {
            break;
        }
    }
    match format {
        ExportFormat::Atna => out.write_all(ATNA_CLOSE.as_bytes())?,
        ExportFormat::Fhir => out.write_all(b"\n]}\n")?,
    }
    out.flush()?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditEvent;
    use std::time::{Duration, UNIX_EPOCH};

    fn stored(seq: i64, event: AuditEvent) -> StoredEvent {
        StoredEvent {
            seq,
            event,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    fn samples() -> Vec<StoredEvent> {
        let at = UNIX_EPOCH + Duration::from_micros(1_790_000_000_123_456);
        let mut retrieve = AuditEvent::new(
            "dr <who> & \"co\"",
            ActorKind::Token,
            "st-mary's",
            Action::Retrieve,
            Outcome::Success,
        )
        .client_address("10.0.0.7")
        .status(200)
        .study("1.2.3")
        .series("1.2.3.4")
        .instances(["1.2.3.4.5", "1.2.3.4.6"]);
        retrieve.at = at;
        let mut denied = AuditEvent::new(
            "modality-7",
            ActorKind::ApiKey,
            "default",
            Action::AccessDenied,
            Outcome::Failure,
        )
        .client_address("scanner.example.org")
        .status(403)
        .detail("no write scope\nfor tenant\u{1}");
        denied.at = at;
        let mut rotate = AuditEvent::cli("default", Action::KeyRotate, Outcome::Success).status(0);
        rotate.at = at;
        let mut search = AuditEvent::new(
            "anonymous",
            ActorKind::Anonymous,
            "default",
            Action::Search,
            Outcome::Failure,
        )
        .status(503);
        search.at = at;
        let delete = AuditEvent::new(
            "alice",
            ActorKind::Token,
            "default",
            Action::Delete,
            Outcome::Success,
        )
        .study("9.8.7");
        vec![
            stored(1, retrieve),
            stored(2, denied),
            stored(3, rotate),
            stored(4, search),
            stored(5, delete),
        ]
    }

    /// A parsed element: name, attributes, and the text directly inside it.
    #[derive(Debug, Default, Clone)]
    struct Element {
        path: String,
        attributes: Vec<(String, String)>,
        text: String,
    }

    impl Element {
        fn attr(&self, name: &str) -> Option<&str> {
            self.attributes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Parses `xml` strictly (well-formedness, matching end tags, escapes) into
    /// its elements in document order, each with its path from the root.
    fn parse_xml(xml: &str) -> Vec<Element> {
        use quick_xml::events::{BytesStart, Event};
        let mut reader = quick_xml::Reader::from_str(xml);
        reader.config_mut().check_end_names = true;
        let mut stack: Vec<String> = Vec::new();
        let mut open: Vec<usize> = Vec::new();
        let mut out: Vec<Element> = Vec::new();
        let element = |start: &BytesStart, stack: &[String]| {
            let name = String::from_utf8(start.name().as_ref().to_vec()).unwrap();
            let attributes = start
                .attributes()
                .map(|a| {
                    let a = a.expect("well-formed attribute");
                    (
                        String::from_utf8(a.key.as_ref().to_vec()).unwrap(),
                        a.unescape_value().expect("escaped value").into_owned(),
                    )
                })
                .collect();
            let mut path = stack.join("/");
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(&name);
            (
                name,
                Element {
                    path,
                    attributes,
                    text: String::new(),
                },
            )
        };
        loop {
            match reader.read_event().expect("well-formed XML") {
                Event::Start(start) => {
                    let (name, e) = element(&start, &stack);
                    stack.push(name);
                    open.push(out.len());
                    out.push(e);
                }
                Event::Empty(start) => {
                    let (_, e) = element(&start, &stack);
                    out.push(e);
                }
                Event::End(_) => {
                    stack.pop();
                    open.pop();
                }
                Event::Text(text) => {
                    if let Some(&i) = open.last() {
                        out[i].text.push_str(&text.decode().expect("UTF-8 text"));
                    }
                }
                // Text arrives split around references (`&amp;`, `&#10;`).
                Event::GeneralRef(reference) => {
                    let resolved = match reference.resolve_char_ref().expect("valid reference") {
                        Some(c) => c.to_string(),
                        None => {
                            let name = reference.decode().expect("UTF-8 reference");
                            quick_xml::escape::resolve_xml_entity(&name)
                                .expect("a predefined entity")
                                .to_string()
                        }
                    };
                    if let Some(&i) = open.last() {
                        out[i].text.push_str(&resolved);
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        assert!(stack.is_empty(), "unclosed elements: {stack:?}");
        out
    }

    #[test]
    fn atna_messages_are_well_formed_and_coded() {
        let events = samples();
        let xml = export_atna(&events);
        let elements = parse_xml(&xml);
        let messages: Vec<_> = elements
            .iter()
            .filter(|e| e.path == "AuditMessages/AuditMessage")
            .collect();
        assert_eq!(messages.len(), 5);
        let find =
            |path: &str| -> Vec<&Element> { elements.iter().filter(|e| e.path == path).collect() };
        let identifications = find("AuditMessages/AuditMessage/EventIdentification");
        let actions: Vec<_> = identifications
            .iter()
            .map(|e| {
                (
                    e.attr("EventActionCode").unwrap(),
                    e.attr("EventOutcomeIndicator").unwrap(),
                )
            })
            .collect();
        assert_eq!(
            actions,
            vec![("R", "0"), ("E", "4"), ("E", "0"), ("E", "8"), ("D", "0")]
        );
        assert_eq!(
            identifications[0].attr("EventDateTime"),
            Some("2026-09-21T14:13:20.123456Z")
        );
        let ids: Vec<_> = find("AuditMessages/AuditMessage/EventIdentification/EventID")
            .iter()
            .map(|e| e.attr("csd-code").unwrap())
            .collect();
        assert_eq!(ids, vec!["110104", "110113", "110113", "110112", "110105"]);
        let types: Vec<_> = find("AuditMessages/AuditMessage/EventIdentification/EventTypeCode")
            .iter()
            .map(|e| e.attr("csd-code").unwrap())
            .collect();
        assert_eq!(types, vec!["110132", "110129"]);
        // Escaped, and back intact.
        let participants = find("AuditMessages/AuditMessage/ActiveParticipant");
        assert_eq!(participants[0].attr("UserID"), Some("dr <who> & \"co\""));
        assert_eq!(
            participants[0].attr("NetworkAccessPointTypeCode"),
            Some("2")
        );
        assert_eq!(participants[1].attr("UserID"), Some(AUDIT_SOURCE_ID));
        assert_eq!(
            participants[2].attr("NetworkAccessPointTypeCode"),
            Some("1")
        );
        let descriptions =
            find("AuditMessages/AuditMessage/EventIdentification/EventOutcomeDescription");
        assert_eq!(
            descriptions[1].text,
            "HTTP 403: no write scope\nfor tenant\u{FFFD}"
        );
        assert_eq!(descriptions[2].text, "exit code 0");
        let sources = find("AuditMessages/AuditMessage/AuditSourceIdentification");
        assert_eq!(sources[0].attr("AuditEnterpriseSiteID"), Some("st-mary's"));
        let objects = find("AuditMessages/AuditMessage/ParticipantObjectIdentification");
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0].attr("ParticipantObjectID"), Some("1.2.3"));
        let id_types = find(
            "AuditMessages/AuditMessage/ParticipantObjectIdentification/ParticipantObjectIDTypeCode",
        );
        assert_eq!(id_types[0].attr("csd-code"), Some("110180"));
        let details = find(
            "AuditMessages/AuditMessage/ParticipantObjectIdentification/ParticipantObjectDetail",
        );
        let b64 = base64::engine::general_purpose::STANDARD;
        let decoded: Vec<_> = details
            .iter()
            .map(|d| {
                (
                    d.attr("type").unwrap(),
                    String::from_utf8(b64.decode(d.attr("value").unwrap()).unwrap()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            decoded,
            vec![
                ("SeriesInstanceUID", "1.2.3.4".to_string()),
                ("SOPInstanceUID", "1.2.3.4.5".to_string()),
                ("SOPInstanceUID", "1.2.3.4.6".to_string()),
            ]
        );
        assert_eq!(parse_xml(&export_atna(&[])).len(), 1);
    }

    #[test]
    fn fhir_bundle_holds_one_audit_event_per_event() {
        let bundle = export_fhir(&samples());
        assert_eq!(bundle["resourceType"], "Bundle");
        assert_eq!(bundle["type"], "collection");
        let entries = bundle["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 5);
        for entry in entries {
            let r = &entry["resource"];
            assert_eq!(r["resourceType"], "AuditEvent");
            assert_eq!(r["type"]["system"], DCM);
            assert!(["C", "R", "U", "D", "E"].contains(&r["action"].as_str().unwrap()));
            assert!(["0", "4", "8"].contains(&r["outcome"].as_str().unwrap()));
            assert!(humantime::parse_rfc3339(r["recorded"].as_str().unwrap()).is_ok());
            let agents = r["agent"].as_array().unwrap();
            assert_eq!(agents.len(), 2);
            assert_eq!(agents[0]["requestor"], true);
            assert_eq!(agents[1]["requestor"], false);
            assert!(r["source"]["observer"].is_object());
        }
        let retrieve = &entries[0]["resource"];
        assert_eq!(retrieve["id"], "1");
        assert_eq!(retrieve["type"]["code"], "110104");
        assert_eq!(retrieve["action"], "R");
        assert_eq!(retrieve["agent"][0]["network"]["address"], "10.0.0.7");
        assert_eq!(retrieve["agent"][0]["network"]["type"], "2");
        assert_eq!(retrieve["agent"][0]["type"]["coding"][0]["code"], "110152");
        assert_eq!(
            retrieve["agent"][0]["who"]["identifier"]["type"]["text"],
            "token"
        );
        assert_eq!(retrieve["source"]["site"], "st-mary's");
        let entity = &retrieve["entity"][0];
        assert_eq!(entity["what"]["identifier"]["value"], "urn:oid:1.2.3");
        assert_eq!(
            entity["what"]["identifier"]["type"]["coding"][0]["code"],
            "110180"
        );
        assert_eq!(entity["detail"].as_array().unwrap().len(), 3);
        let denied = &entries[1]["resource"];
        assert_eq!(denied["subtype"][0]["code"], "110132");
        assert_eq!(denied["outcome"], "4");
        assert_eq!(
            denied["outcomeDesc"],
            "HTTP 403: no write scope\nfor tenant\u{1}"
        );
        assert!(denied.get("entity").is_none());
        assert_eq!(entries[3]["resource"]["outcome"], "8");
        assert_eq!(entries[4]["resource"]["type"]["code"], "110105");
        assert!(entries[4]["resource"]["entity"][0].get("detail").is_none());
    }

    #[test]
    fn since_accepts_dates_and_rfc3339() {
        assert_eq!(
            parse_since("2026-01-31").unwrap(),
            "2026-01-31T00:00:00.000000Z"
        );
        assert_eq!(
            parse_since("2026-01-31T12:30:00Z").unwrap(),
            "2026-01-31T12:30:00.000000Z"
        );
        assert_eq!(
            parse_since("2026-01-31T12:30:00.5Z").unwrap(),
            "2026-01-31T12:30:00.500000Z"
        );
        assert!(parse_since("yesterday").is_err());
        assert!(parse_since("2026-13-01").is_err());
    }

    #[test]
    fn every_action_has_codes() {
        for action in Action::ALL {
            let event = AuditEvent::cli("t", *action, Outcome::Success);
            let c = coding(&stored(1, event));
            assert!(c.event_id.0.starts_with("1101"), "{action}");
        }
    }
}
