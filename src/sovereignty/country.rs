//! The policy's country data, a leaf: ISO 3166-1 alpha-2 country codes (a
//! declaration must name a real country, since a typo ("UK", "EL") would
//! otherwise silently fall outside every allow-list) and the EU/EEA states,
//! the default home of personal data (the configuration's default names them).

/// The EU member states and the other EEA states (Iceland, Liechtenstein, Norway):
/// the default home of personal data, where the GDPR applies directly.
pub const EU_EEA_COUNTRIES: [&str; 30] = [
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE", "IS",
    "IT", "LI", "LT", "LU", "LV", "MT", "NL", "NO", "PL", "PT", "RO", "SE", "SI", "SK",
];

/// The officially assigned ISO 3166-1 alpha-2 codes, sorted (for binary search).
const ASSIGNED: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// The code in upper case with surrounding blanks removed (`" de"` → `"DE"`).
pub(super) fn normalize(code: &str) -> String {
    code.trim().to_ascii_uppercase()
}

/// Whether `code` (already normalized) is an assigned ISO 3166-1 alpha-2 code.
pub(super) fn is_assigned(code: &str) -> bool {
    ASSIGNED.binary_search(&code).is_ok()
}

/// A hint for codes people commonly use that ISO does not assign.
pub(super) fn hint(code: &str) -> &'static str {
    match code {
        "UK" => " (the United Kingdom is GB)",
        "EL" => " (Greece is GR; EL is the EU's own abbreviation)",
        "EU" => " (name the member states, not the union)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_unique() {
        assert!(ASSIGNED.windows(2).all(|w| w[0] < w[1]));
        assert!(ASSIGNED.iter().all(|c| c.len() == 2));
    }

    #[test]
    fn codes_are_checked() {
        for code in ["DE", "US", "CH", "NO", "GB", "GR", "AX"] {
            assert!(is_assigned(code), "{code}");
        }
        for code in ["UK", "EL", "EU", "XX", "D", "DEU", "de"] {
            assert!(!is_assigned(code), "{code}");
        }
        assert_eq!(normalize(" de "), "DE");
        assert!(EU_EEA_COUNTRIES.iter().all(|c| is_assigned(c)));
    }
}
