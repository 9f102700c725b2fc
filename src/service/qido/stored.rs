//! The attributes `includefield` asks for that the index does not keep: taken
//! from the metadata of one stored instance per result (the first stored of
//! each study or series, the instance itself at instance level) and merged
//! into the result. A search that asks for none reads nothing more; one that
//! does reads the sealed metadata records of the page's instances (one query),
//! and for an instance without one its header (a ranged read of a few
//! kilobytes, decrypted), a few at a time: the cost is bounded by the page
//! size (`limit`).

use dicom_core::Tag;
use futures_util::{stream, StreamExt, TryStreamExt};
use serde_json::{Map, Value as Json};

use crate::dicom::json as dicom_json;
use crate::index::catalog::{entity_level, Level};
use crate::index::{Hit, StoredFields, StoredInstance};
use crate::service::wado::{instance_url, metadata_records, open_metadata_record, read_header};
use crate::service::{ServiceError, Services};

/// Header reads in flight for one search.
const CONCURRENT_READS: usize = 8;

/// The entity key of `hit` at `level`.
fn owner_pk(hit: &Hit, level: Level) -> Option<i64> {
    match level {
        Level::Study => Some(hit.study.study_pk),
        Level::Series => hit.series.as_ref().map(|s| s.series_pk),
        Level::Instance => hit.instance.as_ref().map(|i| i.instance_pk),
    }
}

/// For each hit (in order), the attributes `fields` asks for, as DICOM JSON
/// entries; empty where the stored instance is gone (deleted since the
/// search) or holds none of them.
pub async fn attributes(
    services: &Services,
    hits: &[Hit],
    level: Level,
    result_levels: &'static [Level],
    fields: &StoredFields,
    base_url: &str,
) -> Result<Vec<Map<String, Json>>, ServiceError> {
    if fields.is_empty() || hits.is_empty() {
        return Ok(vec![Map::new(); hits.len()]);
    }
    let pks: Vec<i64> = hits.iter().filter_map(|h| owner_pk(h, level)).collect();
    let representatives = services
        .with_index(move |index| index.representatives(level, &pks))
        .await?;
    let by_owner: std::collections::HashMap<i64, StoredInstance> =
        representatives.into_iter().collect();
    let mut records =
        metadata_records(services, &by_owner.values().cloned().collect::<Vec<_>>()).await?;
    let jobs: Vec<Option<(StoredInstance, Option<Vec<u8>>)>> = hits
        .iter()
        .map(|hit| {
            let instance = owner_pk(hit, level).and_then(|pk| by_owner.get(&pk).cloned())?;
            let record = records.remove(&instance.blob_key);
            Some((instance, record))
        })
        .collect();
    stream::iter(jobs)
        .map(|job| async move {
            let Some((instance, record)) = job else {
                return Ok(Map::new());
            };
            if let Some(sealed) = record {
                let opened = open_metadata_record(services, &instance, &sealed).await;
                match opened.map(|json| serde_json::from_slice::<Map<String, Json>>(&json)) {
                    Ok(Ok(json)) => return Ok(select(json, fields, result_levels)),
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "a metadata record is not JSON; reading the blob")
                    }
                    Err(error) => {
                        tracing::warn!(%error, "a metadata record is unreadable; reading the blob")
                    }
                }
            }
            match read_header(services, &instance).await {
                Ok(dataset) => {
                    let url = instance_url(base_url, &instance);
                    let json = dicom_json::dataset_to_json(&dataset, &|path| {
                        format!("{url}/bulkdata/{path}")
                    });
                    Ok(select(json, fields, result_levels))
                }
                // Deleted (or its key shredded) between the search and the read.
                Err(ServiceError::NotFound(_) | ServiceError::Gone(_)) => Ok(Map::new()),
                Err(error) => Err(error),
            }
        })
        .buffered(CONCURRENT_READS)
        .try_collect()
        .await
}

/// The entries of `json` that `fields` asks for: the named attributes (the
/// index's plan has left out those of a lower level than the results'), and
/// for `all` the attributes of the result's levels (see [`entity_level`]). Values only sent as bulk data are left out: a
/// search result carries values, not references to them.
fn select(
    json: Map<String, Json>,
    fields: &StoredFields,
    result_levels: &[Level],
) -> Map<String, Json> {
    let wanted = |tag: Tag| {
        fields.tags.contains(&tag) || (fields.all && result_levels.contains(&entity_level(tag)))
    };
    // A private element comes with its Private Creator, which says what it is.
    let creators: Vec<Tag> = json
        .keys()
        .filter_map(|key| parse_key(key))
        .filter(|tag| tag.0 % 2 == 1 && tag.1 >= 0x1000 && wanted(*tag))
        .map(|tag| Tag(tag.0, tag.1 >> 8))
        .collect();
    json.into_iter()
        .filter(|(key, value)| {
            if value.get("BulkDataURI").is_some() {
                return false;
            }
            parse_key(key).is_some_and(|tag| wanted(tag) || creators.contains(&tag))
        })
        .collect()
}

fn parse_key(key: &str) -> Option<Tag> {
    let value = u32::from_str_radix(key, 16).ok()?;
    Some(Tag((value >> 16) as u16, value as u16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Map<String, Json> {
        let json = json!({
            "00080060": {"vr": "CS", "Value": ["CT"]},
            "00080070": {"vr": "LO", "Value": ["ACME"]},
            "00080008": {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY"]},
            "00090010": {"vr": "LO", "Value": ["KASTELL TEST"]},
            "00091001": {"vr": "LO", "Value": ["private"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
            "00281050": {"vr": "DS", "Value": [40]},
            "00420011": {"vr": "OB", "BulkDataURI": "http://x/bulkdata/00420011"},
        });
        match json {
            Json::Object(map) => map,
            _ => unreachable!(),
        }
    }

    fn keys(map: &Map<String, Json>) -> Vec<&str> {
        let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
        keys.sort();
        keys
    }

    #[test]
    fn named_attributes_come_back() {
        let fields = StoredFields {
            all: false,
            tags: vec![
                Tag(0x0008, 0x0008),
                Tag(0x0009, 0x1001),
                Tag(0x0042, 0x0011),
            ],
        };
        let got = select(sample(), &fields, &[Level::Study]);
        // The bulk value is not a value a search result can carry; the private
        // element brings its creator.
        assert_eq!(keys(&got), ["00080008", "00090010", "00091001"]);
    }

    #[test]
    fn all_takes_the_attributes_of_the_result_levels() {
        let fields = StoredFields {
            all: true,
            tags: vec![],
        };
        assert_eq!(
            keys(&select(sample(), &fields, &[Level::Study])),
            ["00100010"]
        );
        assert_eq!(
            keys(&select(sample(), &fields, &[Level::Series])),
            ["00080060", "00080070"]
        );
        assert_eq!(
            keys(&select(sample(), &fields, &[Level::Instance])),
            ["00080008", "00090010", "00091001", "00281050"]
        );
    }
}
