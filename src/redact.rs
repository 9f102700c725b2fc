//! Backend URLs as Kastell may show them, in one place: [`redact_url`] hides the
//! secrets (the effective configuration, `kastell stats`, log lines and errors
//! that name a backend: URLs, libpq key/value connection strings, settings whose
//! name says they hold a secret); [`display_url`] shows only where a backend is
//! (the sovereignty report). Both read URLs through the `url` crate and take the
//! same cautious path for what it does not parse. A leaf: anything may use it.

/// What a secret is shown as.
pub const REDACTED: &str = "***";

/// Whether a setting or query parameter named `name` holds a secret: a password,
/// a secret, a token, a key, an Azure SAS token or a signature.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let words = [
        "password",
        "passwd",
        "secret",
        "token",
        "key",
        "sas",
        "signature",
        "credential",
    ];
    words.iter().any(|word| name.contains(word)) || name == "sig" || name == "pwd"
}

/// A backend URL as it may be shown: the password of `scheme://user:password@host`
/// and the values of query parameters that name a secret (libpq's `?password=`,
/// `?secret_access_key=`, a SAS `sig=`) become `***`, whatever the scheme. A libpq
/// key/value string (`host=h password=secret`) is redacted the same way. Anything
/// else is returned as it came.
pub fn redact_url(url: &str) -> String {
    if !url.contains("://") {
        return if url.contains('=') {
            redact_key_values(url)
        } else {
            url.to_string()
        };
    }
    match parse(url) {
        Some(parsed) => redact_parsed(url, parsed),
        None => redact_unparsed(url),
    }
}

/// Through the `url` crate; the text is rebuilt only when something is redacted,
/// so that a URL without secrets is shown exactly as configured.
fn redact_parsed(url: &str, mut parsed: url::Url) -> String {
    let mut changed = false;
    if parsed.password().is_some() && parsed.set_password(Some(REDACTED)).is_ok() {
        changed = true;
    }
    let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    if pairs.iter().any(|(name, _)| is_secret_name(name)) {
        let shown = pairs.into_iter().map(|(name, value)| {
            let value = if is_secret_name(&name) {
                REDACTED.to_string()
            } else {
                value
            };
            (name, value)
        });
        parsed.query_pairs_mut().clear().extend_pairs(shown);
        changed = true;
    }
    if changed {
        parsed.to_string()
    } else {
        url.to_string()
    }
}

/// A URL the parser refuses (a multi-host PostgreSQL URL, an unencoded character
/// in a password): the user information ends at the last '@', its password after
/// the first ':'; then every `name=value` after the first '?' is checked.
fn redact_unparsed(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let mut shown = format!("{scheme}://");
    match rest.rsplit_once('@') {
        Some((userinfo, after)) => {
            match userinfo.split_once(':') {
                Some((user, _)) => shown.push_str(&format!("{user}:{REDACTED}")),
                None => shown.push_str(userinfo),
            }
            shown.push('@');
            shown.push_str(after);
        }
        None => shown.push_str(rest),
    }
    let Some((before, query)) = shown.split_once('?') else {
        return shown;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_name(name) => format!("{name}={REDACTED}"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{before}?{}", query.join("&"))
}

/// A libpq key/value connection string (`host=h password='a b' dbname=k`): the
/// values of secret keywords become `***`, quoted or not; the rest is kept.
fn redact_key_values(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut shown = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        // Whitespace between pairs.
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        shown.push_str(&text[start..i]);
        // The keyword, up to '=' (libpq allows spaces around it).
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let name = &text[start..i];
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'=') {
            i += 1;
        }
        shown.push_str(&text[start..i]);
        // The value: quoted (with \' and \\ escapes) or up to the next whitespace.
        let start = i;
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'\'' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(bytes.len());
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                i += 1;
            }
        }
        if is_secret_name(name) && i > start {
            shown.push_str(REDACTED);
        } else {
            shown.push_str(&text[start..i]);
        }
    }
    shown
}

/// A URL as it may be shown: scheme, host, port and path; never the user name,
/// password or query (libpq accepts `?password=`).
pub fn display_url(url: &str) -> String {
    if let Some(parsed) = parse(url) {
        let host = parsed.host_str().unwrap_or_default();
        let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
        return format!("{}://{host}{port}{}", parsed.scheme(), parsed.path());
    }
    // Not a URL the parser accepts (a multi-host PostgreSQL URL, an unencoded
    // character in a password): keep only what follows the last '@', so that no
    // part of a password can be shown.
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.split(['?', '#']).next().unwrap_or_default().to_string();
    };
    let visible = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    let visible = visible.split(['?', '#']).next().unwrap_or_default();
    format!("{scheme}://{visible}")
}

/// A URL the `url` crate reads as it was meant: one with an '@' the parser did
/// not take as user information (a password with an unencoded '/', several
/// hosts) is `None`, and takes the cautious path of the callers.
fn parse(url: &str) -> Option<url::Url> {
    url::Url::parse(url)
        .ok()
        .filter(|p| !url.contains('@') || !p.username().is_empty() || p.password().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://kastell:secret@db:5432/k"),
            "postgres://kastell:***@db:5432/k"
        );
        assert_eq!(redact_url("sqlite:///a/b"), "sqlite:///a/b");
    }

    #[test]
    fn every_form_of_a_secret_is_redacted() {
        for (url, shown) in [
            ("postgres://u:secret@h/db", "postgres://u:***@h/db"),
            (
                "postgres://h/db?password=secret&sslmode=require",
                "postgres://h/db?password=***&sslmode=require",
            ),
            ("host=h password=secret", "host=h password=***"),
            (
                "host=h password = 'se cret\\' x' dbname=k",
                "host=h password = *** dbname=k",
            ),
            (
                "s3://bucket/prefix?region=eu-central-1&secret_access_key=secret",
                "s3://bucket/prefix?region=eu-central-1&secret_access_key=***",
            ),
            (
                "https://acct.blob.core.windows.net/c?sv=2022&sig=secret",
                "https://acct.blob.core.windows.net/c?sv=2022&sig=***",
            ),
            // Unparsable (two hosts, an unencoded '/' in the password): still hidden.
            (
                "postgres://k:secret@h1:5432,h2:5432/k?passwd=secret",
                "postgres://k:***@h1:5432,h2:5432/k?passwd=***",
            ),
            ("postgres://k:se/cret@db/k", "postgres://k:***@db/k"),
        ] {
            let redacted = redact_url(url);
            assert_eq!(redacted, shown, "{url}");
            let values = redacted.replace("secret_access_key", "");
            assert!(!values.contains("cret"), "{redacted}");
        }
    }

    #[test]
    fn urls_without_secrets_are_shown_as_configured() {
        for url in [
            "file:///var/lib/kastell data/blobs",
            "memory://",
            "s3://bucket/prefix?region=eu-central-1",
            "postgres://kastell@db/k?sslmode=require",
            "host=h dbname=k",
            "kastell-data",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn secret_names_are_recognised() {
        for name in [
            "password",
            "aws_secret_access_key",
            "azure_storage_account_key",
            "azure_storage_sas_key",
            "token",
            "sig",
            "SSLPASSWORD",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in ["aws_region", "aws_endpoint", "sslmode", "host", "user"] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn urls_are_shown_without_credentials_or_query() {
        assert_eq!(
            display_url("postgres://kastell:s3cret@db.example.com:5432/kastell?sslmode=require"),
            "postgres://db.example.com:5432/kastell"
        );
        assert_eq!(
            display_url("postgres://k@h1:5432,h2:5432/k?password=s3cret"),
            "postgres://h1:5432,h2:5432/k"
        );
        // An unencoded '/' or '?' in a password makes the URL unparsable: still hidden.
        for url in [
            "postgres://k:se/cret@db/k",
            "postgres://k:se?cret@db/k",
            "postgres://k:se#cret@db/k",
            "postgres://k:1234/se@db/k",
        ] {
            let shown = display_url(url);
            assert!(!shown.contains("se"), "{shown}");
            assert!(shown.contains("db"), "{shown}");
        }
        assert_eq!(
            display_url("sqlite:///var/lib/k.sqlite"),
            "sqlite:///var/lib/k.sqlite"
        );
        assert_eq!(display_url("s3://bucket/prefix"), "s3://bucket/prefix");
        assert_eq!(display_url("memory://"), "memory://");
    }
}
