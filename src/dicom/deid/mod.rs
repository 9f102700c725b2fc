//! De-identification by the DICOM Basic Application Level Confidentiality
//! Profile and its options (PS3.15 Annex E), driven by the standard's own
//! action table (`table.rs`, generated from PS3.15 Table E.1-1 by `table.py`).
//!
//! Every attribute of the data set, inside sequences too, is looked up in the
//! table; the options chosen for a project may retain (K) or clean (C) what the
//! basic profile removes. Private attributes are removed unless the Retain Safe
//! Private option is chosen and the attribute is on the project's safe list.
//! UIDs are replaced by `2.25.` UIDs derived from the original with HMAC-SHA256
//! under the project's secret, so the same study de-identified twice gets the
//! same new UIDs, and references between instances still resolve.
//!
//! Where the table gives a choice (X/Z, X/D, Z/D, X/Z/D, X/Z/U*: "remove, or
//! empty, or a dummy, as the IOD requires"), Kastell does not consult the IOD
//! of each SOP class: it takes the most conservative choice that keeps a
//! required attribute present — a dummy where D is allowed, else an empty value,
//! else removal (see [`resolve`]). Clean (C) of free text cannot be done safely
//! by a program, so it empties the value; clean of dates under the modified-
//! dates option shifts them by the project's offset. An attribute received
//! with VR UN (a sequence or value its sender's dictionary did not know) is
//! opaque and removed, unless the table keeps it: its content cannot be
//! inspected.

mod file;
mod json;
mod pixels;
mod table;
mod values;

use values::{dummy, empty, reinterpret_unknown, shift_date};

use std::collections::BTreeSet;

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use ring::hmac;

pub use file::{deidentify_file_bytes, Deidentified};
pub use json::MappedValue;
pub use pixels::{burned_in_reason, PixelRegion, PixelVerdict};
pub use table::{EDITION, RULES};

/// The basic profile's action for an attribute (PS3.15 Table E.1-1a).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BasicAction {
    /// A dummy value of the same VR.
    D,
    /// An empty value (or a dummy).
    Z,
    /// Removed.
    X,
    /// Kept.
    K,
    /// Cleaned: values of similar meaning without identifying information.
    C,
    /// The UID replaced, consistently within the set.
    U,
    ZD,
    XZ,
    XD,
    XZD,
    XZU,
}

/// An option's action for an attribute: none, keep, or clean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionAction {
    N,
    K,
    C,
}

/// One row of Table E.1-1: the attributes whose tag matches under `mask`.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub tag: u32,
    pub mask: u32,
    pub basic: BasicAction,
    /// In the order of [`ProfileOption::ALL`].
    pub options: [OptionAction; 10],
    pub retired: bool,
    pub name: &'static str,
}

/// The options of the profile (PS3.15 E.3), in the columns' order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProfileOption {
    RetainSafePrivate,
    RetainUids,
    RetainDeviceIdentity,
    RetainInstitutionIdentity,
    RetainPatientCharacteristics,
    RetainLongitudinalFullDates,
    RetainLongitudinalModifiedDates,
    CleanDescriptors,
    CleanStructuredContent,
    CleanGraphics,
}

impl ProfileOption {
    pub const ALL: [ProfileOption; 10] = [
        ProfileOption::RetainSafePrivate,
        ProfileOption::RetainUids,
        ProfileOption::RetainDeviceIdentity,
        ProfileOption::RetainInstitutionIdentity,
        ProfileOption::RetainPatientCharacteristics,
        ProfileOption::RetainLongitudinalFullDates,
        ProfileOption::RetainLongitudinalModifiedDates,
        ProfileOption::CleanDescriptors,
        ProfileOption::CleanStructuredContent,
        ProfileOption::CleanGraphics,
    ];

    /// Its code in the De-identification Method Code Sequence (CID 7050).
    pub fn code(self) -> (&'static str, &'static str) {
        match self {
            ProfileOption::RetainSafePrivate => ("113111", "Retain Safe Private Option"),
            ProfileOption::RetainUids => ("113110", "Retain UIDs Option"),
            ProfileOption::RetainDeviceIdentity => ("113109", "Retain Device Identity Option"),
            ProfileOption::RetainInstitutionIdentity => {
                ("113112", "Retain Institution Identity Option")
            }
            ProfileOption::RetainPatientCharacteristics => {
                ("113108", "Retain Patient Characteristics Option")
            }
            ProfileOption::RetainLongitudinalFullDates => (
                "113106",
                "Retain Longitudinal Temporal Information Full Dates Option",
            ),
            ProfileOption::RetainLongitudinalModifiedDates => (
                "113107",
                "Retain Longitudinal Temporal Information Modified Dates Option",
            ),
            ProfileOption::CleanDescriptors => ("113105", "Clean Descriptors Option"),
            ProfileOption::CleanStructuredContent => ("113104", "Clean Structured Content Option"),
            ProfileOption::CleanGraphics => ("113103", "Clean Graphics Option"),
        }
    }

    /// Its name in configuration and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ProfileOption::RetainSafePrivate => "retain-safe-private",
            ProfileOption::RetainUids => "retain-uids",
            ProfileOption::RetainDeviceIdentity => "retain-device-identity",
            ProfileOption::RetainInstitutionIdentity => "retain-institution-identity",
            ProfileOption::RetainPatientCharacteristics => "retain-patient-characteristics",
            ProfileOption::RetainLongitudinalFullDates => "retain-longitudinal-full-dates",
            ProfileOption::RetainLongitudinalModifiedDates => "retain-longitudinal-modified-dates",
            ProfileOption::CleanDescriptors => "clean-descriptors",
            ProfileOption::CleanStructuredContent => "clean-structured-content",
            ProfileOption::CleanGraphics => "clean-graphics",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        ProfileOption::ALL.into_iter().find(|o| o.name() == text)
    }
}

/// What a project de-identifies with.
pub struct Profile {
    pub options: BTreeSet<ProfileOption>,
    /// Keys the UID mapping, the pseudonymous PatientID and the date offset.
    secret: hmac::Key,
    /// Private attributes kept under Retain Safe Private: (private creator,
    /// element's low byte).
    pub safe_private: Vec<(String, u8)>,
    /// Regions blanked in images that may carry burned-in text (else they are
    /// excluded).
    pub blank_regions: Vec<PixelRegion>,
}

/// One item of the De-identification Method Code Sequence (CID 7050, scheme DCM).
pub(crate) fn method_code((value, meaning): (&str, &str)) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(value)),
        DataElement::new(
            tags::CODING_SCHEME_DESIGNATOR,
            VR::SH,
            PrimitiveValue::from("DCM"),
        ),
        DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(meaning)),
    ])
}

/// A safe private attribute, `<private creator>:<element's low byte in hex>`.
pub fn parse_safe_private(text: &str) -> Option<(String, u8)> {
    let (creator, element) = text.rsplit_once(':')?;
    let creator = creator.trim();
    if creator.is_empty() || creator.len() > 64 {
        return None;
    }
    Some((creator.to_string(), u8::from_str_radix(element, 16).ok()?))
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What was done to one data set.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub removed: usize,
    pub emptied: usize,
    pub replaced: usize,
    pub uids_mapped: usize,
    pub private_removed: usize,
    pub kept_by_option: usize,
    /// What was done about burned-in annotation (whole files only).
    pub pixels: PixelVerdict,
}

/// What to do with one attribute, once the table and the options are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Keep,
    Remove,
    Empty,
    Dummy,
    Uid,
    ShiftDate,
}

/// A choice of the table resolved without the IOD: a dummy where allowed,
/// else empty, else removed (see the module's documentation).
fn resolve(action: BasicAction) -> Act {
    match action {
        BasicAction::D | BasicAction::ZD | BasicAction::XD | BasicAction::XZD => Act::Dummy,
        BasicAction::Z | BasicAction::XZ | BasicAction::C => Act::Empty,
        BasicAction::X => Act::Remove,
        BasicAction::K => Act::Keep,
        BasicAction::U | BasicAction::XZU => Act::Uid,
    }
}

/// The rules listed for single attributes, sorted by tag for a binary search
/// (the table keeps the standard's order, by name, to be diffed against it),
/// and the few that cover a range of tags ((50xx,xxxx), (60xx,4000)…).
struct RuleIndex {
    exact: Vec<(u32, &'static Rule)>,
    ranges: Vec<&'static Rule>,
}

static RULE_INDEX: std::sync::LazyLock<RuleIndex> = std::sync::LazyLock::new(|| {
    let (exact, ranges): (Vec<&'static Rule>, Vec<&'static Rule>) =
        RULES.iter().partition(|rule| rule.mask == u32::MAX);
    let mut exact: Vec<(u32, &'static Rule)> = exact.into_iter().map(|r| (r.tag, r)).collect();
    // The standard lists three AE Title attributes twice, cleaned (C) and kept
    // (K) under Retain Device Identity; the first listed, the cleaning one,
    // wins (a stable sort keeps the table's order among equal tags).
    exact.sort_by_key(|(tag, _)| *tag);
    exact.dedup_by_key(|(tag, _)| *tag);
    RuleIndex { exact, ranges }
});

fn rule_for(tag: Tag) -> Option<&'static Rule> {
    let key = (u32::from(tag.group()) << 16) | u32::from(tag.element());
    let index = &*RULE_INDEX;
    match index.exact.binary_search_by_key(&key, |(tag, _)| *tag) {
        Ok(at) => Some(index.exact[at].1),
        Err(_) => index
            .ranges
            .iter()
            .copied()
            .find(|rule| key & rule.mask == rule.tag),
    }
}

const DATE_VRS: [VR; 3] = [VR::DA, VR::DT, VR::TM];

impl Profile {
    pub fn new(secret: &[u8], options: BTreeSet<ProfileOption>) -> Self {
        Self {
            options,
            secret: hmac::Key::new(hmac::HMAC_SHA256, secret),
            safe_private: Vec::new(),
            blank_regions: Vec::new(),
        }
    }

    /// The profile and its options, as the audit trail and reports name them.
    pub fn description(&self) -> String {
        let mut text = format!("PS3.15 {EDITION} Basic Profile");
        for option in &self.options {
            text.push_str(" +");
            text.push_str(option.name());
        }
        if !self.blank_regions.is_empty() {
            text.push_str(" +clean-pixel-data");
        }
        text
    }

    fn mac(&self, purpose: &str, value: &str) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.secret);
        context.update(purpose.as_bytes());
        context.update(&[0]);
        context.update(value.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(context.sign().as_ref());
        out
    }

    /// The new UID of `uid`: `2.25.` and the decimal of 128 bits of its HMAC
    /// (a UUID-derived UID, PS3.5 B.2), at most 44 characters.
    pub fn map_uid(&self, uid: &str) -> String {
        let mac = self.mac("uid", uid.trim_end_matches(['\0', ' ']));
        let mut bits = [0u8; 16];
        bits.copy_from_slice(&mac[..16]);
        format!("2.25.{}", u128::from_be_bytes(bits))
    }

    /// The pseudonymous PatientID of `patient_id` in this project.
    pub fn pseudonym(&self, patient_id: &str) -> String {
        let mac = self.mac("patient", patient_id.trim());
        format!("KST-{}", hex::encode(&mac[..8]).to_uppercase())
    }

    /// Days the dates of `patient_id` move under the modified-dates option:
    /// 1 to 365 days back, the same for every study of the patient.
    pub fn date_offset_days(&self, patient_id: &str) -> i64 {
        let mac = self.mac("dates", patient_id.trim());
        1 + i64::from(u16::from_be_bytes([mac[0], mac[1]]) % 365)
    }

    /// Whether the profile keeps `tag` as it is: not listed in the table, or
    /// kept by an option (private attributes are not judged here: never).
    pub fn keeps(&self, tag: Tag) -> bool {
        tag.group() % 2 == 0 && self.act(tag, VR::LO).0 == Act::Keep
    }

    /// What to do with the attribute `tag` of VR `vr`.
    fn act(&self, tag: Tag, vr: VR) -> (Act, bool) {
        let Some(rule) = rule_for(tag) else {
            return (Act::Keep, false);
        };
        let mut act = resolve(rule.basic);
        let mut by_option = false;
        for (option, action) in ProfileOption::ALL.iter().zip(rule.options) {
            if !self.options.contains(option) {
                continue;
            }
            match action {
                OptionAction::K => {
                    act = Act::Keep;
                    by_option = true;
                }
                OptionAction::C
                    if *option == ProfileOption::RetainLongitudinalModifiedDates
                        && DATE_VRS.contains(&vr) =>
                {
                    act = Act::ShiftDate;
                    by_option = true;
                }
                OptionAction::C if *option == ProfileOption::RetainLongitudinalModifiedDates => {}
                OptionAction::C if act != Act::Keep => act = Act::Empty,
                _ => {}
            }
        }
        (act, by_option)
    }

    /// De-identifies `object` in place and marks it as the standard asks:
    /// Patient Identity Removed, the De-identification Method and its Code
    /// Sequence (the profile and each option), Longitudinal Temporal
    /// Information Modified; PatientID and PatientName become the project's
    /// pseudonym of the patient.
    pub fn deidentify(&self, object: &mut InMemDicomObject) -> Outcome {
        let patient = object
            .get(tags::PATIENT_ID)
            .and_then(|e| e.to_str().ok())
            .map(|id| id.trim().to_string())
            .unwrap_or_default();
        let mut outcome = Outcome::default();
        self.apply_to(object, self.date_offset_days(&patient), &mut outcome);
        let pseudonym = self.pseudonym(&patient);
        object.put(DataElement::new(
            tags::PATIENT_ID,
            VR::LO,
            PrimitiveValue::from(pseudonym.as_str()),
        ));
        object.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            PrimitiveValue::from(pseudonym.as_str()),
        ));
        object.put(DataElement::new(
            tags::PATIENT_IDENTITY_REMOVED,
            VR::CS,
            PrimitiveValue::from("YES"),
        ));
        object.put(DataElement::new(
            tags::DEIDENTIFICATION_METHOD,
            VR::LO,
            PrimitiveValue::from(
                format!("Kastell: PS3.15 {EDITION} Table E.1-1 Basic Profile").as_str(),
            ),
        ));
        let codes = std::iter::once(("113100", "Basic Application Confidentiality Profile"))
            .chain(self.options.iter().map(|option| option.code()))
            .map(method_code)
            .collect::<Vec<_>>();
        object.put(DataElement::new(
            tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(codes),
        ));
        let temporal = if self
            .options
            .contains(&ProfileOption::RetainLongitudinalFullDates)
        {
            "UNMODIFIED"
        } else if self
            .options
            .contains(&ProfileOption::RetainLongitudinalModifiedDates)
        {
            "MODIFIED"
        } else {
            "REMOVED"
        };
        object.put(DataElement::new(
            tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED,
            VR::CS,
            PrimitiveValue::from(temporal),
        ));
        outcome
    }

    fn safe_private(&self, object: &InMemDicomObject, tag: Tag) -> bool {
        if !self.options.contains(&ProfileOption::RetainSafePrivate) || tag.element() < 0x1000 {
            return false;
        }
        let block = tag.element() >> 8;
        let creator_tag = Tag(tag.group(), block);
        let Some(creator) = object
            .get(creator_tag)
            .and_then(|e| e.to_str().ok())
            .map(|c| c.trim().to_string())
        else {
            return false;
        };
        let low = (tag.element() & 0xFF) as u8;
        self.safe_private
            .iter()
            .any(|(name, element)| *name == creator && *element == low)
    }

    fn apply_to(&self, object: &mut InMemDicomObject, date_offset: i64, outcome: &mut Outcome) {
        let tags: Vec<Tag> = object.tags().collect();
        // Private attributes first decided on their creators as they are now.
        let private_kept: BTreeSet<Tag> = tags
            .iter()
            .copied()
            .filter(|tag| tag.group() % 2 == 1 && self.safe_private(object, *tag))
            .collect();
        for tag in tags {
            if tag.group() % 2 == 1 {
                let creator_of_kept = tag.element() >= 0x10
                    && tag.element() <= 0xFF
                    && private_kept.iter().any(|kept| {
                        kept.group() == tag.group() && kept.element() >> 8 == tag.element()
                    });
                if !private_kept.contains(&tag) && !creator_of_kept {
                    object.remove_element(tag);
                    outcome.private_removed += 1;
                }
                continue;
            }
            let Some(mut element) = object.take(tag) else {
                continue;
            };
            if element.vr() == VR::UN {
                if let Some(known) = reinterpret_unknown(&element) {
                    element = known;
                }
            }
            let vr = element.vr();
            let (mut act, by_option) = self.act(tag, vr);
            // A value of unknown VR (UN: a sequence or text its sender did not
            // know) is opaque: what it holds (names, UIDs in nested items)
            // cannot be de-identified, so it goes unless the table keeps it.
            if vr == VR::UN && (act != Act::Keep || rule_for(tag).is_none()) {
                act = Act::Remove;
            }
            if by_option {
                outcome.kept_by_option += 1;
            }
            match act {
                Act::Remove => {
                    outcome.removed += 1;
                    continue;
                }
                Act::Empty => {
                    outcome.emptied += 1;
                    element = empty(tag, vr);
                }
                Act::Dummy => {
                    outcome.replaced += 1;
                    element = dummy(tag, vr);
                }
                Act::Uid => {
                    if vr == VR::UI && !self.options.contains(&ProfileOption::RetainUids) {
                        if let Ok(text) = element.to_str() {
                            let mapped: Vec<String> = text
                                .split('\\')
                                .filter(|uid| !uid.trim().is_empty())
                                .map(|uid| self.map_uid(uid))
                                .collect();
                            outcome.uids_mapped += mapped.len();
                            element = DataElement::new(
                                tag,
                                VR::UI,
                                PrimitiveValue::Strs(mapped.into_iter().collect()),
                            );
                        }
                    } else if vr == VR::SQ {
                        // A sequence of references (X/Z/U*): its UIDs are
                        // mapped inside the items below.
                    } else if vr != VR::UI {
                        element = empty(tag, vr);
                        outcome.emptied += 1;
                    }
                }
                Act::ShiftDate => {
                    element = shift_date(element, date_offset);
                    outcome.replaced += 1;
                }
                Act::Keep => {}
            }
            if element.vr() == VR::SQ {
                if let Some(items) = element.items_mut() {
                    for item in items.iter_mut() {
                        self.apply_to(item, date_offset, outcome);
                    }
                }
            }
            object.put(element);
        }
    }
}

#[cfg(test)]
mod tests;
