//! The client's address, for the audit trail and the access log: the TCP peer,
//! unless the peer is one of `server.trusted_proxies`. Then the proxy's header
//! (`X-Forwarded-For` or `Forwarded`, `server.client_address_header`) is read
//! from the right: the right-most hop that is not itself a trusted proxy is the
//! client (hops to the left of it were written by the client and prove
//! nothing). Without trusted proxies no header is read at all, so a client
//! cannot put another address in the trail.

use std::net::IpAddr;

use actix_web::http::header::HeaderMap;

use crate::config::proxies::{ClientAddressHeader, TrustedProxies};

/// The address to record for a request from `peer` with `headers`.
pub fn client_address(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
    header: ClientAddressHeader,
) -> String {
    let Some(peer) = peer.map(|ip| ip.to_canonical()) else {
        return "-".to_string();
    };
    if !trusted.contains(peer) {
        return peer.to_string();
    }
    let hops = match header {
        ClientAddressHeader::XForwardedFor => header_list(headers, "x-forwarded-for"),
        ClientAddressHeader::Forwarded => header_list(headers, "forwarded")
            .into_iter()
            .filter_map(|element| forwarded_for(&element))
            .collect(),
    };
    // From the right: each trusted hop vouches for the one before it.
    let mut client = peer;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) => {
                client = ip;
                if !trusted.contains(ip) {
                    break;
                }
            }
            // `unknown`, an obfuscated identifier or junk: the last address
            // known is the proxy that reported it.
            None => break,
        }
    }
    client.to_string()
}

/// Every comma-separated element of every `name` header, in order.
fn header_list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|element| element.trim().to_string())
        .filter(|element| !element.is_empty())
        .collect()
}

/// The `for=` value of one `Forwarded` element (RFC 7239 §4).
fn forwarded_for(element: &str) -> Option<String> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"').to_string())
    })
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`,
/// `2001:db8::1`, `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split(']').next()?.parse::<IpAddr>().ok();
    }
    let (address, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    address.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        map
    }

    fn trusted(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn address(
        peer: &str,
        trusted: &TrustedProxies,
        pairs: &[(&'static str, &'static str)],
    ) -> String {
        client_address(
            Some(peer.parse().unwrap()),
            &headers(pairs),
            trusted,
            ClientAddressHeader::XForwardedFor,
        )
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let none = TrustedProxies::default();
        let spoof = [
            ("x-forwarded-for", "203.0.113.66"),
            ("forwarded", "for=203.0.113.67"),
        ];
        assert_eq!(address("198.51.100.4", &none, &spoof), "198.51.100.4");
        let proxy = trusted(&["10.0.0.0/8"]);
        assert_eq!(address("198.51.100.4", &proxy, &spoof), "198.51.100.4");
        assert_eq!(
            client_address(
                None,
                &headers(&spoof),
                &proxy,
                ClientAddressHeader::Forwarded
            ),
            "-"
        );
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_hop_is_the_client() {
        let proxies = trusted(&["10.0.0.0/8"]);
        // The client prepended a fake hop; the proxies appended the real one.
        let chain = [
            ("x-forwarded-for", "1.1.1.1, 203.0.113.5"),
            ("x-forwarded-for", "10.0.0.9"),
        ];
        assert_eq!(address("10.0.0.2", &proxies, &chain), "203.0.113.5");
        // Every hop trusted: the left-most one.
        let internal = [("x-forwarded-for", "10.1.1.1, 10.0.0.9")];
        assert_eq!(address("10.0.0.2", &proxies, &internal), "10.1.1.1");
        // No header: the proxy itself.
        assert_eq!(address("10.0.0.2", &proxies, &[]), "10.0.0.2");
        // Junk stops the walk at the proxy that wrote it.
        let junk = [("x-forwarded-for", "203.0.113.5, unknown")];
        assert_eq!(address("10.0.0.2", &proxies, &junk), "10.0.0.2");
        let ported = [("x-forwarded-for", "203.0.113.5:4711")];
        assert_eq!(address("10.0.0.2", &proxies, &ported), "203.0.113.5");
    }

    #[test]
    fn the_forwarded_header_is_read_when_configured() {
        let proxies = trusted(&["10.0.0.0/8", "::1"]);
        let map = headers(&[
            ("x-forwarded-for", "198.51.100.99"),
            (
                "forwarded",
                "for=192.0.2.1;proto=https, for=\"[2001:db8:cafe::17]:4711\";by=10.0.0.1",
            ),
        ]);
        let forwarded = |peer: &str| {
            client_address(
                Some(peer.parse().unwrap()),
                &map,
                &proxies,
                ClientAddressHeader::Forwarded,
            )
        };
        assert_eq!(forwarded("::1"), "2001:db8:cafe::17");
        assert_eq!(forwarded("::ffff:10.0.0.3"), "2001:db8:cafe::17");
    }
}
