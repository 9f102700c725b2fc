//! A change of the feed as a CloudEvent (CloudEvents 1.0, JSON event format):
//! what the broker, the webhooks and the job queue carry. The data names the
//! tenant, the action, the UIDs and the feed's sequence number; the patient's
//! name, ID and birth date only when the sink is configured for them.

use serde_json::{json, Map, Value};

use crate::index::changes::{Change, StudyPatient};

/// The CloudEvents `type` of a feed action.
pub fn event_type(action: &str) -> String {
    match action {
        "study-stable" => "org.kastell.study.stable".to_string(),
        key if key.starts_with("key-") => format!("org.kastell.tenant.{key}"),
        other => format!("org.kastell.instance.{other}"),
    }
}

/// The event's id: unique per tenant and change, the same on every delivery
/// (NATS deduplicates on it, webhook receivers should too).
pub fn event_id(tenant: &str, seq: i64) -> String {
    format!("{tenant}:{seq}")
}

/// What a change names (its UIDs, by their DICOM JSON-style names) and what
/// its action adds (a stable study's counts, a key version): the fields the
/// change feed and the events share.
pub fn facts(change: &Change) -> Map<String, Value> {
    let mut fields = Map::new();
    for (name, value) in [
        ("studyInstanceUID", &change.study_instance_uid),
        ("seriesInstanceUID", &change.series_instance_uid),
        ("sopInstanceUID", &change.sop_instance_uid),
        ("sopClassUID", &change.sop_class_uid),
    ] {
        if let Some(value) = value {
            fields.insert(name.into(), json!(value));
        }
    }
    if let Some(Value::Object(detail)) = change
        .detail
        .as_deref()
        .and_then(|d| serde_json::from_str::<Value>(d).ok())
    {
        fields.extend(detail);
    }
    fields
}

/// The CloudEvent of `change` of `tenant`; `patient` is added to the data when
/// given (the caller decides whether the sink may carry it).
pub fn cloud_event(tenant: &str, change: &Change, patient: Option<&StudyPatient>) -> Value {
    let mut data = Map::new();
    data.insert("tenant".into(), json!(tenant));
    data.insert("sequence".into(), json!(change.seq));
    data.insert("action".into(), json!(change.action));
    data.extend(facts(change));
    if let Some(patient) = patient {
        let mut fields = Map::new();
        for (name, value) in [
            ("PatientName", &patient.patient_name),
            ("PatientID", &patient.patient_id),
            ("PatientBirthDate", &patient.patient_birth_date),
        ] {
            if let Some(value) = value {
                fields.insert(name.into(), json!(value));
            }
        }
        data.insert("patient".into(), Value::Object(fields));
    }
    let subject = match (
        &change.study_instance_uid,
        &change.series_instance_uid,
        &change.sop_instance_uid,
    ) {
        (Some(study), Some(series), Some(instance)) => Some(format!(
            "studies/{study}/series/{series}/instances/{instance}"
        )),
        (Some(study), _, _) => Some(format!("studies/{study}")),
        _ => None,
    };
    let mut event = json!({
        "specversion": "1.0",
        "id": event_id(tenant, change.seq),
        "source": format!("/kastell/tenants/{tenant}"),
        "type": event_type(&change.action),
        "time": change.occurred_at,
        "datacontenttype": "application/json",
    });
    if let (Some(subject), Value::Object(fields)) = (subject, &mut event) {
        fields.insert("subject".into(), json!(subject));
    }
    if let Value::Object(fields) = &mut event {
        fields.insert("data".into(), Value::Object(data));
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(action: &str) -> Change {
        Change {
            seq: 42,
            occurred_at: "2026-12-04T08:00:00.000000Z".into(),
            action: action.into(),
            study_instance_uid: Some("1.2".into()),
            series_instance_uid: Some("1.2.3".into()),
            sop_instance_uid: Some("1.2.3.4".into()),
            sop_class_uid: Some("1.2.840.10008.5.1.4.1.1.2".into()),
            detail: None,
        }
    }

    #[test]
    fn an_instance_change_is_a_cloudevent_without_patient_data() {
        let event = cloud_event("north", &change("created"), None);
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["id"], "north:42");
        assert_eq!(event["type"], "org.kastell.instance.created");
        assert_eq!(event["source"], "/kastell/tenants/north");
        assert_eq!(
            event["subject"],
            "studies/1.2/series/1.2.3/instances/1.2.3.4"
        );
        assert_eq!(event["time"], "2026-12-04T08:00:00.000000Z");
        assert_eq!(event["data"]["sequence"], 42);
        assert_eq!(event["data"]["sopInstanceUID"], "1.2.3.4");
        assert!(event["data"].get("patient").is_none());
    }

    #[test]
    fn a_stable_study_carries_its_counts_and_patient_data_only_when_asked() {
        let mut stable = change("study-stable");
        stable.series_instance_uid = None;
        stable.sop_instance_uid = None;
        stable.sop_class_uid = None;
        stable.detail = Some(r#"{"numberOfStudyRelatedInstances":3}"#.into());
        let patient = StudyPatient {
            patient_name: Some("Doe^Jane".into()),
            patient_id: Some("P1".into()),
            patient_birth_date: None,
        };
        let event = cloud_event("north", &stable, Some(&patient));
        assert_eq!(event["type"], "org.kastell.study.stable");
        assert_eq!(event["subject"], "studies/1.2");
        assert_eq!(event["data"]["numberOfStudyRelatedInstances"], 3);
        assert_eq!(event["data"]["patient"]["PatientName"], "Doe^Jane");
        assert!(event["data"]["patient"].get("PatientBirthDate").is_none());
    }
}
