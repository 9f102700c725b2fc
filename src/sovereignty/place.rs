//! Where a backend URL points: local to the host (and so under the host's
//! declaration) or elsewhere. Decided from the URL and the settings the backend's
//! library will use, without resolving names or connecting: a name that is not a
//! loopback address counts as remote.

use std::collections::BTreeMap;
use std::net::IpAddr;

use percent_encoding::percent_decode_str;

use super::Environment;
use crate::redact::display_url;

/// Where a backend is, as far as the configuration tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Place {
    /// On the host: the SQLite file, the local blob directory, a loopback server.
    pub local: bool,
    /// What and where, for the report, e.g. "PostgreSQL at db.example.com".
    pub description: String,
    /// PostgreSQL only: whether the URL requires TLS on the way to the database
    /// (`sslmode=require`, `verify-ca` or `verify-full`).
    pub tls_required: Option<bool>,
}

impl Place {
    fn local(description: impl Into<String>) -> Self {
        Place {
            local: true,
            description: description.into(),
            tls_required: None,
        }
    }

    fn remote(description: impl Into<String>) -> Self {
        Place {
            local: false,
            description: description.into(),
            tls_required: None,
        }
    }
}

/// The index database named by `url`.
pub(super) fn index(url: &str, env: &Environment) -> Place {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Place::local(format!("SQLite file {path} on the host"));
    }
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return Place::remote(format!("database at {}", display_url(url)));
    };
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = before_query.split('/').next().unwrap_or_default();
    let host_list = authority
        .rsplit_once('@')
        .map_or(authority, |(_, hosts)| hosts);
    let params: Vec<(String, String)> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    // libpq connects to hostaddr when given, else to the query's host, else the
    // URL's, else PGHOST, else its default Unix socket.
    let hosts: Vec<String> = if let Some(addr) = param("hostaddr") {
        split_hosts(&addr)
    } else if let Some(host) = param("host") {
        split_hosts(&host)
    } else if !host_list.is_empty() {
        host_list
            .split(',')
            .map(|h| strip_port(&decode(h)).to_string())
            .collect()
    } else if let Some(host) = &env.pg_host {
        split_hosts(host)
    } else {
        Vec::new()
    };
    let tls_required = Some(matches!(
        param("sslmode").as_deref(),
        Some("require" | "verify-ca" | "verify-full")
    ));
    let mut place = if hosts.iter().all(|h| is_local_host(h)) {
        Place::local(if hosts.is_empty() {
            "PostgreSQL on the host's Unix socket".to_string()
        } else {
            format!("PostgreSQL on the host ({})", hosts.join(", "))
        })
    } else {
        Place::remote(format!("PostgreSQL at {}", hosts.join(", ")))
    };
    place.tls_required = tls_required;
    place
}

/// The blob store named by `url`, with the object_store settings it will be built
/// with: those from the environment, then `storage.blob_options` (which win, as in
/// `store::backend_from_url`).
pub(super) fn blob_store(
    url: &str,
    options: &BTreeMap<String, String>,
    env: &Environment,
) -> Place {
    if let Some(dir) = url.strip_prefix("file://") {
        return Place::local(format!("directory {dir} on the host"));
    }
    if url == "memory://" || url == "memory:///" {
        return Place::local("memory of the kastell process (tests only)");
    }
    let setting = |names: &[&str]| {
        env.blob_settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(options.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .filter(|(k, _)| names.contains(k))
            .map(|(_, v)| v.to_string())
            // The last one wins, as in object_store's builder.
            .next_back()
    };
    let scheme = url.split("://").next().unwrap_or_default();
    let bucket = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    match scheme {
        "s3" | "s3a" => {
            match setting(&[
                "aws_endpoint_url",
                "aws_endpoint",
                "endpoint_url",
                "endpoint",
            ]) {
                Some(endpoint) => endpoint_place("S3-compatible server", &endpoint, &bucket),
                None => Place::remote(format!("Amazon S3, bucket {bucket}")),
            }
        }
        "az" | "azure" | "abfs" | "abfss" | "adl" => {
            let emulator = setting(&["azure_storage_use_emulator", "use_emulator"])
                .is_some_and(|v| is_truthy(&v));
            if emulator {
                let endpoint = env
                    .azurite_url
                    .clone()
                    .unwrap_or_else(|| "http://127.0.0.1:10000".into());
                endpoint_place("Azure Storage emulator", &endpoint, &bucket)
            } else {
                match setting(&["azure_storage_endpoint", "azure_endpoint", "endpoint"]) {
                    Some(endpoint) => endpoint_place("Azure-compatible server", &endpoint, &bucket),
                    None => Place::remote(format!("Azure Blob Storage, container {bucket}")),
                }
            }
        }
        // A GCS endpoint override lives in the service-account file, which a pure
        // check does not read: Google Cloud Storage, then, unless declared otherwise.
        "gs" => Place::remote(format!("Google Cloud Storage, bucket {bucket}")),
        _ => Place::remote(format!("blob store at {}", display_url(url))),
    }
}

/// A place events go: the NATS broker (`urls` may list several servers,
/// comma-separated) or a webhook receiver. On the host when every server is a
/// loopback address; `tls_required` says whether every URL asks for TLS
/// (`https://`, `tls://`).
pub(super) fn event_destination(what: &str, urls: &str) -> Place {
    let parsed: Vec<Option<url::Url>> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| url::Url::parse(u).ok())
        .collect();
    let hosts: Vec<String> = parsed
        .iter()
        .map(|u| {
            u.as_ref()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_default()
        })
        .collect();
    let local = !hosts.is_empty() && hosts.iter().all(|h| is_local_host(h));
    let tls = !parsed.is_empty()
        && parsed.iter().all(|u| {
            u.as_ref()
                .is_some_and(|u| matches!(u.scheme(), "https" | "tls"))
        });
    let shown: Vec<String> = hosts
        .iter()
        .map(|h| if h.is_empty() { "?" } else { h.as_str() }.to_string())
        .collect();
    let mut place = if local {
        Place::local(format!("{what} on the host ({})", shown.join(", ")))
    } else {
        Place::remote(format!("{what} at {}", shown.join(", ")))
    };
    place.tls_required = Some(tls);
    place
}

/// A master key's holder, from its `keys.masters` URL: a key file or an HSM
/// reached through a PKCS#11 module are on the host (a network HSM declares its
/// own location); a Transit KMS is where its URL points.
pub(super) fn master_key(url: &str) -> Place {
    if let Some(path) = url.strip_prefix("file:") {
        return Place::local(format!(
            "a key file on the host ({path}), read into the process"
        ));
    }
    if url.starts_with("pkcs11:") {
        let module = url
            .split_once("module-path=")
            .map(|(_, rest)| decode(rest.split('&').next().unwrap_or(rest)))
            .unwrap_or_default();
        return Place::local(format!(
            "an HSM reached through the PKCS#11 module {module}; the key never leaves it"
        ));
    }
    let endpoint = url.strip_prefix("transit+").unwrap_or(url);
    event_destination("a Transit KMS", endpoint)
}

fn endpoint_place(what: &str, endpoint: &str, bucket: &str) -> Place {
    let host = url::Url::parse(endpoint)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string));
    let description = format!("{what} at {}, bucket {bucket}", display_url(endpoint));
    match host {
        Some(host) if is_local_host(&host) => Place::local(description),
        _ => Place::remote(description),
    }
}

/// object_store's reading of a boolean setting.
fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "on" | "yes" | "y"
    )
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

fn split_hosts(list: &str) -> Vec<String> {
    list.split(',')
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect()
}

/// `host:port` → `host`; `[::1]:5432` → `::1`; a Unix socket path is left alone.
fn strip_port(host: &str) -> &str {
    if host.starts_with('/') {
        return host;
    }
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, _)) if !name.contains(':') => name,
        _ => host,
    }
}

/// A Unix socket (a path, or `@name` for Linux's abstract namespace), `localhost`,
/// or a loopback address. Names are not resolved: anything else is remote.
fn is_local_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.starts_with('/') || host.starts_with('@') {
        return true;
    }
    let lower = host.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Environment {
        Environment::default()
    }

    #[test]
    fn local_indexes() {
        for url in [
            "sqlite:///var/lib/kastell/index.sqlite",
            "postgres://k:pw@localhost/k",
            "postgres://k@127.0.0.1:5432/k",
            "postgresql://k@[::1]:5432/k",
            "postgres:///kastell",
            "postgres:///kastell?host=/var/run/postgresql",
            "postgres://%2Fvar%2Frun%2Fpostgresql/kastell",
            "postgres://db.example.com/k?hostaddr=127.0.0.1",
        ] {
            assert!(index(url, &env()).local, "{url}");
        }
    }

    #[test]
    fn remote_indexes() {
        for url in [
            "postgres://k:pw@db.example.com/k",
            "postgres://k@10.0.0.5:5432/k",
            "postgres://k@localhost:5432,db2.example.com:5432/k",
            "postgres:///k?host=db.example.com",
        ] {
            assert!(!index(url, &env()).local, "{url}");
        }
        let pg_host = Environment {
            pg_host: Some("db.example.com".into()),
            ..Default::default()
        };
        assert!(!index("postgres:///k", &pg_host).local);
        assert_eq!(
            index("postgres://db/k?sslmode=verify-full", &env()).tls_required,
            Some(true)
        );
        assert_eq!(index("postgres://db/k", &env()).tls_required, Some(false));
    }

    #[test]
    fn event_destinations_are_local_only_on_loopback() {
        let hook = event_destination("webhook receiver", "http://127.0.0.1:9000/hook");
        assert!(hook.local && hook.tls_required == Some(false));
        let remote = event_destination("webhook receiver", "https://ris.example/hook");
        assert!(!remote.local && remote.tls_required == Some(true));
        assert!(remote.description.contains("ris.example"));
        let brokers = event_destination("NATS server", "nats://127.0.0.1:4222, nats://[::1]:4223");
        assert!(brokers.local);
        let mixed = event_destination(
            "NATS server",
            "tls://localhost:4222,tls://nats.example:4222",
        );
        assert!(!mixed.local && mixed.tls_required == Some(true));
        assert!(!event_destination("NATS server", "not a url").local);
    }

    #[test]
    fn blob_stores_follow_their_endpoint() {
        let none = BTreeMap::new();
        assert!(blob_store("file:///var/lib/kastell/blobs", &none, &env()).local);
        assert!(blob_store("memory://", &none, &env()).local);
        assert!(!blob_store("s3://bucket/p", &none, &env()).local);
        assert!(!blob_store("gs://bucket/p", &none, &env()).local);
        assert!(!blob_store("az://container/p", &none, &env()).local);

        // The endpoint from the environment, as the store reads it (AWS_ENDPOINT_URL).
        let moto = Environment {
            blob_settings: vec![("aws_endpoint_url".into(), "http://127.0.0.1:9000".into())],
            ..Default::default()
        };
        assert!(blob_store("s3://bucket/p", &none, &moto).local);
        // storage.blob_options win over the environment.
        let options = BTreeMap::from([(
            "aws_endpoint".to_string(),
            "https://s3.eu-central-1.example.net".to_string(),
        )]);
        assert!(!blob_store("s3://bucket/p", &options, &moto).local);

        let azurite = Environment {
            blob_settings: vec![("azure_storage_use_emulator".into(), "true".into())],
            ..Default::default()
        };
        assert!(blob_store("az://container/p", &none, &azurite).local);
        let remote_azurite = Environment {
            azurite_url: Some("http://azurite.example.com:10000".into()),
            ..azurite.clone()
        };
        assert!(!blob_store("az://container/p", &none, &remote_azurite).local);
    }
}
