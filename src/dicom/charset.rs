//! Text in character sets that use ISO 2022 code extensions (PS3.5 §6.1.2.5, PS3.3
//! C.12.1.1.2): a Specific Character Set (0008,0005) with more than one value, such as
//! `\ISO 2022 IR 87` (Japanese) or `\ISO 2022 IR 149` (Korean).
//!
//! dicom-rs decodes every text value with the codec of the first value only, so escape
//! sequences stay in the string and multi-byte text comes out as Latin-1 or Shift_JIS
//! noise. [`fix_code_extensions`] recovers the original bytes from those strings and
//! decodes them again with [`decode_iso2022`].

use dicom_core::header::{HasLength, Header};
use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use encoding_rs::Encoding;

const ESC: u8 = 0x1B;
const TAB: u8 = 0x09;
const LF: u8 = 0x0A;
const FF: u8 = 0x0C;
const CR: u8 = 0x0D;

/// Re-decodes the text values of a data set whose Specific Character Set uses ISO 2022
/// code extensions (more than one value), which dicom-rs decodes with the first value only.
///
/// The character set of the top-level data set applies to sequence items unless an item
/// declares its own. Elements with VR SH, LO, ST, LT, PN, UC or UT under a multi-valued
/// character set are rewritten as UTF-8; everything else is left alone, including
/// (0008,0005) itself. Meant for objects dicom-rs has just parsed: a value whose bytes
/// cannot be recovered from its string (dicom-rs replaced an undecodable byte) stays
/// as it is.
pub fn fix_code_extensions(dataset: &mut InMemDicomObject) {
    // dicom-rs starts with its default codec (ISO 8859-1) and switches whenever it reads
    // a Specific Character Set it knows, in document order and without restoring the
    // previous codec at the end of a sequence item.
    let mut wire = WireCodec::Latin1;
    fix_item(dataset, &[], &mut wire);
}

/// Decodes one text value encoded with ISO 2022 code extensions into UTF-8.
///
/// `charsets` are the values of Specific Character Set; the first one sets the initial
/// designation of G0 and G1, which is restored before `^`, `=`, CR, LF, TAB and FF.
/// The backslash is not treated as a value delimiter. Unknown escape sequences are
/// skipped; bytes that are invalid in the designated set become U+FFFD.
pub fn decode_iso2022(bytes: &[u8], charsets: &[&str]) -> String {
    let initial = initial_state(charsets.first().copied().unwrap_or(""));
    let rules = Rules {
        person_name: true,
        multi_valued: false,
    };
    decode_values(bytes, initial, rules).concat()
}

fn fix_item(item: &mut InMemDicomObject, inherited: &[String], wire: &mut WireCodec) {
    let charsets = own_charsets(item).unwrap_or_else(|| inherited.to_vec());
    let extended = charsets.len() > 1;
    let element_tags: Vec<Tag> = item.tags().collect();
    for tag in element_tags {
        let Some(element) = item.get(tag) else {
            continue;
        };
        let vr = element.vr();
        match element.value() {
            Value::Primitive(value) if tag == tags::SPECIFIC_CHARACTER_SET => wire.follow(value),
            Value::Primitive(value) if extended && is_text(vr) => {
                if let Some(fixed) = redecode(vr, value, &charsets, *wire) {
                    item.put(DataElement::new(tag, vr, fixed));
                }
            }
            Value::Primitive(_) | Value::PixelSequence(_) => {}
            Value::Sequence(sequence) => {
                if sequence.items().iter().any(|i| needs_fix(i, extended)) {
                    item.update_value(tag, |value| {
                        for child in value.items_mut().into_iter().flatten() {
                            fix_item(child, &charsets, wire);
                        }
                    });
                } else {
                    sequence.items().iter().for_each(|i| follow_item(i, wire));
                }
            }
        }
    }
}

/// Whether `item` or one of its descendants holds text under a multi-valued character set.
fn needs_fix(item: &InMemDicomObject, inherited_extended: bool) -> bool {
    let extended = own_charsets(item).map_or(inherited_extended, |c| c.len() > 1);
    item.iter().any(|element| match element.value() {
        Value::Primitive(value) => extended && is_text(element.vr()) && !value.is_empty(),
        Value::Sequence(sequence) => sequence.items().iter().any(|i| needs_fix(i, extended)),
        Value::PixelSequence(_) => false,
    })
}

/// Advances the dicom-rs codec over an item that needs no fix.
fn follow_item(item: &InMemDicomObject, wire: &mut WireCodec) {
    for element in item.iter() {
        match element.value() {
            Value::Primitive(value) if element.tag() == tags::SPECIFIC_CHARACTER_SET => {
                wire.follow(value)
            }
            Value::Sequence(sequence) => sequence.items().iter().for_each(|i| follow_item(i, wire)),
            _ => {}
        }
    }
}

/// The values of the item's own Specific Character Set, trimmed.
fn own_charsets(item: &InMemDicomObject) -> Option<Vec<String>> {
    let element = item.get(tags::SPECIFIC_CHARACTER_SET)?;
    let Value::Primitive(value) = element.value() else {
        return None;
    };
    if value.is_empty() {
        return Some(Vec::new());
    }
    let joined = value.to_multi_str().join("\\");
    Some(joined.split('\\').map(|v| v.trim().to_owned()).collect())
}

fn is_text(vr: VR) -> bool {
    matches!(
        vr,
        VR::SH | VR::LO | VR::ST | VR::LT | VR::PN | VR::UC | VR::UT
    )
}

/// Recovers the bytes of a text value from the string dicom-rs made of them and decodes
/// them again. `None` when there is nothing to do or the bytes cannot be recovered.
fn redecode(
    vr: VR,
    value: &PrimitiveValue,
    charsets: &[String],
    wire: WireCodec,
) -> Option<PrimitiveValue> {
    let text = match value {
        PrimitiveValue::Str(s) => s.clone(),
        // dicom-rs split the bytes at every 0x5C, even inside two-byte characters
        // (JIS X 0208 "ぼ" is 0x24 0x5C): rejoin them and split again while decoding.
        PrimitiveValue::Strs(values) => values.join("\\"),
        _ => return None,
    };
    let bytes = wire.recover(&text)?;
    let rules = Rules {
        person_name: vr == VR::PN,
        multi_valued: !matches!(vr, VR::ST | VR::LT | VR::UT),
    };
    let values = decode_values(&bytes, initial_state(&charsets[0]), rules);
    Some(if rules.multi_valued {
        PrimitiveValue::Strs(values.into_iter().collect())
    } else {
        PrimitiveValue::Str(values.concat())
    })
}

/// The codec dicom-rs decoded text with, used to get the bytes back.
#[derive(Debug, Clone, Copy)]
enum WireCodec {
    /// Each byte became the character with the same code point.
    Latin1,
    Encoding(&'static Encoding),
    /// ISO-2022-JP as a first value: re-encoding would not give back the same escapes.
    Unrecoverable,
}

impl WireCodec {
    /// Mirrors dicom-rs's `StatefulDecoder::read_value_cs`: the first value, if dicom-rs
    /// supports it, becomes the codec; otherwise (including the empty value) the
    /// previous one stays.
    fn follow(&mut self, charset: &PrimitiveValue) {
        let values = charset.to_multi_str();
        if let Some(codec) = values.first().and_then(|v| Self::from_code(v)) {
            *self = codec;
        }
    }

    /// The terms dicom-rs's `SpecificCharacterSet::from_code` accepts.
    fn from_code(code: &str) -> Option<Self> {
        use encoding_rs::{EUC_KR, GB18030, GBK, SHIFT_JIS, UTF_8, WINDOWS_874};
        let code = code.trim_end();
        let codec = match code {
            "Default" => Self::Latin1,
            "ISO_IR_192" | "ISO_IR 192" => Self::Encoding(UTF_8),
            "GB18030" => Self::Encoding(GB18030),
            "GBK" | "GB2312" | "ISO 2022 IR 58" => Self::Encoding(GBK),
            _ => {
                let number = ["ISO_IR_", "ISO_IR ", "ISO 2022 IR "]
                    .iter()
                    .find_map(|prefix| code.strip_prefix(prefix))?;
                match number {
                    "6" | "100" => Self::Latin1,
                    "13" => Self::Encoding(SHIFT_JIS),
                    "87" => Self::Unrecoverable,
                    "149" => Self::Encoding(EUC_KR),
                    "166" => Self::Encoding(WINDOWS_874),
                    other => Self::Encoding(iso_8859_upper(other)?),
                }
            }
        };
        Some(codec)
    }

    fn recover(self, text: &str) -> Option<Vec<u8>> {
        match self {
            Self::Latin1 => text.chars().map(|c| u8::try_from(c).ok()).collect(),
            Self::Encoding(encoding) => {
                let (bytes, _, had_errors) = encoding.encode(text);
                (!had_errors).then(|| bytes.into_owned())
            }
            Self::Unrecoverable => None,
        }
    }
}

/// The encoding_rs codec for the ISO 8859 part with this ISO-IR number (dicom-rs's list).
fn iso_8859_upper(ir: &str) -> Option<&'static Encoding> {
    use encoding_rs::{ISO_8859_2, ISO_8859_3, ISO_8859_4, ISO_8859_5, ISO_8859_6};
    use encoding_rs::{ISO_8859_7, ISO_8859_8};
    Some(match ir {
        "101" => ISO_8859_2,
        "109" => ISO_8859_3,
        "110" => ISO_8859_4,
        "126" => ISO_8859_7,
        "127" => ISO_8859_6,
        "138" => ISO_8859_8,
        "144" => ISO_8859_5,
        _ => return None,
    })
}

/// A graphic character set designated to G0 or G1.
#[derive(Debug, Clone, Copy)]
enum Set {
    /// Nothing designated: bytes in this half are invalid.
    Nothing,
    Ascii,
    /// JIS X 0201 Romaji (ISO-IR 14): ASCII with a yen sign and an overline.
    Romaji,
    /// JIS X 0201 Katakana (ISO-IR 13): half-width katakana.
    Katakana,
    /// JIS X 0208 (ISO-IR 87), two bytes per character.
    JisX0208,
    /// JIS X 0212 (ISO-IR 159), two bytes per character.
    JisX0212,
    /// KS X 1001 (ISO-IR 149), two bytes per character.
    KsX1001,
    /// GB 2312 (ISO-IR 58), two bytes per character.
    Gb2312,
    /// The upper half of ISO 8859-1 (ISO-IR 100): each byte is its own code point.
    Latin1,
    /// The upper half of another single-byte set, decoded by encoding_rs.
    Upper(&'static Encoding),
}

#[derive(Debug, Clone, Copy)]
struct State {
    g0: Set,
    g1: Set,
}

/// The initial designation for the first value of Specific Character Set.
fn initial_state(first: &str) -> State {
    let term = first.trim();
    let number = ["ISO 2022 IR ", "ISO_IR "]
        .iter()
        .find_map(|prefix| term.strip_prefix(prefix))
        .unwrap_or(term);
    let g1 = match number {
        "13" => {
            return State {
                g0: Set::Romaji,
                g1: Set::Katakana,
            }
        }
        "100" => Set::Latin1,
        "148" => Set::Upper(encoding_rs::WINDOWS_1254),
        "166" => Set::Upper(encoding_rs::WINDOWS_874),
        other => iso_8859_upper(other).map_or(Set::Nothing, Set::Upper),
    };
    State { g0: Set::Ascii, g1 }
}

/// The ISO 8859 upper half designated by `ESC - final`.
fn upper_set(final_byte: u8) -> Option<Set> {
    use encoding_rs::{ISO_8859_2, ISO_8859_3, ISO_8859_4, ISO_8859_5, ISO_8859_6};
    use encoding_rs::{ISO_8859_7, ISO_8859_8, WINDOWS_1254, WINDOWS_874};
    let encoding = match final_byte {
        b'A' => return Some(Set::Latin1),
        b'B' => ISO_8859_2,
        b'C' => ISO_8859_3,
        b'D' => ISO_8859_4,
        b'F' => ISO_8859_7,
        b'G' => ISO_8859_6,
        b'H' => ISO_8859_8,
        b'L' => ISO_8859_5,
        // ISO 8859-9 and TIS 620 agree with these in the upper half.
        b'M' => WINDOWS_1254,
        b'T' => WINDOWS_874,
        _ => return None,
    };
    Some(Set::Upper(encoding))
}

/// Reads the escape sequence after an ESC at `bytes[start - 1]`, applies the designation
/// it makes (if known) and returns the index after it.
fn escape(bytes: &[u8], start: usize, state: &mut State) -> usize {
    let intermediates = bytes[start..]
        .iter()
        .take_while(|b| (0x20..=0x2F).contains(*b))
        .count();
    let end = start + intermediates;
    let Some(&final_byte) = bytes.get(end).filter(|b| (0x30..=0x7E).contains(*b)) else {
        // Not an escape sequence: drop the ESC alone.
        return start;
    };
    match (&bytes[start..end], final_byte) {
        (b"(", b'B') => state.g0 = Set::Ascii,
        (b"(", b'J') => state.g0 = Set::Romaji,
        (b"(", b'I') => state.g0 = Set::Katakana,
        (b")", b'I') => state.g1 = Set::Katakana,
        (b"$", b'B') => state.g0 = Set::JisX0208,
        (b"$(", b'D') => state.g0 = Set::JisX0212,
        (b"$)", b'C') => state.g1 = Set::KsX1001,
        (b"$)", b'A') => state.g1 = Set::Gb2312,
        (b"-", f) => {
            if let Some(set) = upper_set(f) {
                state.g1 = set;
            }
        }
        _ => {}
    }
    end + 1
}

#[derive(Debug, Clone, Copy)]
struct Rules {
    /// `^` and `=` restore the initial designation (PN component delimiters).
    person_name: bool,
    /// A backslash in a single-byte G0 set ends the value.
    multi_valued: bool,
}

/// Decodes the bytes of one element into its values.
fn decode_values(bytes: &[u8], initial: State, rules: Rules) -> Vec<String> {
    let mut values = Vec::new();
    let mut out = Output::default();
    let mut state = initial;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        match b {
            ESC => i = escape(bytes, i, &mut state),
            0x00..=0x20 | 0x7F => {
                if matches!(b, TAB | LF | FF | CR) {
                    state = initial;
                }
                out.push_char(char::from(b));
            }
            0x21..=0x7E => match state.g0 {
                Set::JisX0208 | Set::JisX0212 => match bytes.get(i) {
                    Some(&second @ 0x21..=0x7E) => {
                        i += 1;
                        let (first, second) = (b | 0x80, second | 0x80);
                        if matches!(state.g0, Set::JisX0208) {
                            out.push_encoded(encoding_rs::EUC_JP, &[first, second]);
                        } else {
                            out.push_encoded(encoding_rs::EUC_JP, &[0x8F, first, second]);
                        }
                    }
                    _ => out.push_char(char::REPLACEMENT_CHARACTER),
                },
                _ => {
                    if b == b'\\' && rules.multi_valued {
                        values.push(out.take());
                        state = initial;
                        continue;
                    }
                    if rules.person_name && (b == b'^' || b == b'=') {
                        state = initial;
                    }
                    out.push_char(gl_char(state.g0, b));
                }
            },
            0x80..=0xFF => match state.g1 {
                Set::KsX1001 | Set::Gb2312 => match bytes.get(i) {
                    Some(&second @ 0xA1..=0xFE) if (0xA1..=0xFE).contains(&b) => {
                        i += 1;
                        let encoding = if matches!(state.g1, Set::KsX1001) {
                            encoding_rs::EUC_KR
                        } else {
                            encoding_rs::GBK
                        };
                        out.push_encoded(encoding, &[b, second]);
                    }
                    _ => out.push_char(char::REPLACEMENT_CHARACTER),
                },
                Set::Upper(encoding) if b >= 0xA0 => out.push_encoded(encoding, &[b]),
                set => out.push_char(gr_char(set, b)),
            },
        }
    }
    values.push(out.finish());
    values
}

/// A byte 0x21–0x7E in a single-byte G0 set.
fn gl_char(set: Set, b: u8) -> char {
    match (set, b) {
        (Set::Romaji, 0x5C) => '\u{A5}',
        (Set::Romaji, 0x7E) => '\u{203E}',
        (Set::Ascii | Set::Romaji, _) => char::from(b),
        (Set::Katakana, 0x21..=0x5F) => half_width_katakana(b - 0x21),
        _ => char::REPLACEMENT_CHARACTER,
    }
}

/// A byte 0x80–0xFF in a single-byte G1 set (except those decoded by encoding_rs).
fn gr_char(set: Set, b: u8) -> char {
    match (set, b) {
        (Set::Katakana, 0xA1..=0xDF) => half_width_katakana(b - 0xA1),
        (Set::Latin1, 0xA0..=0xFF) => char::from(b),
        _ => char::REPLACEMENT_CHARACTER,
    }
}

/// The JIS X 0201 katakana at `offset` from its first character, U+FF61.
fn half_width_katakana(offset: u8) -> char {
    char::from_u32(0xFF61 + u32::from(offset)).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// Decoded text, with runs of bytes for the same encoding_rs codec decoded together.
#[derive(Default)]
struct Output {
    text: String,
    pending: Vec<u8>,
    encoding: Option<&'static Encoding>,
}

impl Output {
    fn push_char(&mut self, c: char) {
        self.flush();
        self.text.push(c);
    }

    fn push_encoded(&mut self, encoding: &'static Encoding, bytes: &[u8]) {
        if self.encoding != Some(encoding) {
            self.flush();
            self.encoding = Some(encoding);
        }
        self.pending.extend_from_slice(bytes);
    }

    fn flush(&mut self) {
        if let Some(encoding) = self.encoding.take() {
            let (text, _) = encoding.decode_without_bom_handling(&self.pending);
            self.text.push_str(&text);
            self.pending.clear();
        }
    }

    /// The text so far, leaving the output empty.
    fn take(&mut self) -> String {
        self.flush();
        std::mem::take(&mut self.text)
    }

    fn finish(mut self) -> String {
        self.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::value::DataSetSequence;
    use dicom_core::Length;

    // PatientName bytes from pydicom's charset test files (pydicom/data/charset_files),
    // with pydicom's decoding as the expected text.
    const H31: &[u8] =
        b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
    const H32: &[u8] = b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J=\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J";
    const I2: &[u8] = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf";
    /// chrJapMultiExplicitIR6, Other Patient Names (0010,1001): two values.
    const JAP_MULTI: &[u8] =
        b"\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B\\\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B ";
    /// chrKoreanMulti, Patient Name.
    const KOREAN_MULTI: &[u8] = b"\x1b$)C\xb1\xe8\xc8\xf1\xc1\xdf\x1b(B ";

    /// The string dicom-rs makes of bytes it decodes as ISO 8859-1.
    fn latin1(bytes: &[u8]) -> String {
        bytes.iter().copied().map(char::from).collect()
    }

    /// The values dicom-rs makes of a multi-valued element: split at every 0x5C.
    fn latin1_values(bytes: &[u8]) -> PrimitiveValue {
        PrimitiveValue::Strs(bytes.split(|b| *b == b'\\').map(latin1).collect())
    }

    fn charset(values: &[&str]) -> DataElement<InMemDicomObject> {
        let values = values.iter().map(|v| v.to_string()).collect();
        DataElement::new(
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            PrimitiveValue::Strs(values),
        )
    }

    fn strs(object: &InMemDicomObject, tag: Tag) -> Vec<String> {
        match object.get(tag).expect("element").value() {
            Value::Primitive(PrimitiveValue::Strs(values)) => values.to_vec(),
            other => panic!("expected Strs, got {other:?}"),
        }
    }

    #[test]
    fn decodes_jis_x_0208_after_ascii() {
        assert_eq!(
            decode_iso2022(H31, &["", "ISO 2022 IR 87"]),
            "Yamada^Tarou=山田^太郎=やまだ^たろう"
        );
    }

    #[test]
    fn decodes_half_width_katakana_and_romaji() {
        assert_eq!(
            decode_iso2022(H32, &["ISO 2022 IR 13", "ISO 2022 IR 87"]),
            "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"
        );
    }

    #[test]
    fn decodes_korean_in_g1() {
        assert_eq!(
            decode_iso2022(I2, &["", "ISO 2022 IR 149"]),
            "Hong^Gildong=洪^吉洞=홍^길동"
        );
        assert_eq!(
            decode_iso2022(KOREAN_MULTI, &["", "ISO 2022 IR 149"]),
            "김희중 "
        );
    }

    #[test]
    fn splits_values_at_backslashes_outside_two_byte_sets() {
        let values = decode_values(
            JAP_MULTI,
            initial_state("ISO 2022 IR 6"),
            Rules {
                person_name: true,
                multi_valued: true,
            },
        );
        assert_eq!(values, ["やまだ^たろう", "やまだ^たろう "]);
    }

    #[test]
    fn backslash_inside_a_two_byte_character_is_not_a_delimiter() {
        // "ぼ" is 0x24 0x5C in JIS X 0208.
        let bytes = b"\x1b$B$\\\x1b(B\\A";
        let values = decode_values(
            bytes,
            initial_state(""),
            Rules {
                person_name: false,
                multi_valued: true,
            },
        );
        assert_eq!(values, ["ぼ", "A"]);
    }

    #[test]
    fn designations_reset_at_component_delimiters_and_control_characters() {
        // G1 is KS X 1001 until `^`; the second group has no designation of its own.
        assert_eq!(
            decode_iso2022(b"\x1b$)C\xb1\xe8^\xb1\xe8", &["", "ISO 2022 IR 149"]),
            "김^\u{FFFD}\u{FFFD}"
        );
        assert_eq!(
            decode_iso2022(b"\x1b$B$d\r\n$d", &["", "ISO 2022 IR 87"]),
            "や\r\n$d"
        );
    }

    #[test]
    fn decodes_single_byte_g1_sets_jis_x_0212_and_romaji() {
        assert_eq!(
            decode_iso2022(b"\x1b-F\xc4\xe9", &["", "ISO 2022 IR 126"]),
            "Δι"
        );
        assert_eq!(
            decode_iso2022(b"J\xe9r\xf4me", &["ISO 2022 IR 100"]),
            "Jérôme"
        );
        assert_eq!(decode_iso2022(b"\x1b-L\xbb", &[""]), "Л");
        // JIS X 0212 0x2237 is U+FF5E FULLWIDTH TILDE.
        assert_eq!(
            decode_iso2022(b"\x1b$(D\"7\x1b(B", &["", "ISO 2022 IR 159"]),
            "～"
        );
        assert_eq!(
            decode_iso2022(b"\\~", &["ISO 2022 IR 13", "ISO 2022 IR 87"]),
            "¥‾"
        );
        assert_eq!(
            decode_iso2022(b"\x1b(I1\x1b(B", &["", "ISO 2022 IR 87"]),
            "ｱ"
        );
    }

    #[test]
    fn skips_unknown_escapes_and_replaces_invalid_bytes() {
        assert_eq!(decode_iso2022(b"a\x1b$)Zb", &["", "ISO 2022 IR 87"]), "ab");
        assert_eq!(decode_iso2022(b"a\x1b", &[""]), "a");
        assert_eq!(
            decode_iso2022(b"a\xe9", &["", "ISO 2022 IR 87"]),
            "a\u{FFFD}"
        );
        // A lone first byte of a two-byte character.
        assert_eq!(
            decode_iso2022(b"\x1b$B$", &["", "ISO 2022 IR 87"]),
            "\u{FFFD}"
        );
    }

    #[test]
    fn fixes_top_level_and_nested_text() {
        let mut nested = InMemDicomObject::new_empty();
        nested.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            latin1_values(I2),
        ));
        let mut object = InMemDicomObject::new_empty();
        object.put(charset(&["", "ISO 2022 IR 149"]));
        object.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            latin1_values(KOREAN_MULTI),
        ));
        object.put(DataElement::new(
            tags::OTHER_PATIENT_NAMES,
            VR::PN,
            latin1_values(
                b"\x1b$)C\xb1\xe8\xc8\xf1\xc1\xdf\x1b(B\\\x1b$)C\xb1\xe8\xc8\xf1\xc1\xdf\x1b(B",
            ),
        ));
        object.put(DataElement::new(
            tags::PATIENT_COMMENTS,
            VR::LT,
            PrimitiveValue::Str(latin1(b"\x1b$)C\xb1\xe8\xc8\xf1\xc1\xdf\x1b(B\\x")),
        ));
        object.put(DataElement::new(tags::PATIENT_ID, VR::LO, "H31EXAMPLE"));
        object.put(DataElement::new(
            tags::REFERENCED_PATIENT_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(vec![nested], Length::UNDEFINED),
        ));

        fix_code_extensions(&mut object);

        assert_eq!(strs(&object, tags::PATIENT_NAME), ["김희중 "]);
        assert_eq!(
            strs(&object, tags::OTHER_PATIENT_NAMES),
            ["김희중", "김희중"]
        );
        assert_eq!(
            object
                .get(tags::PATIENT_COMMENTS)
                .unwrap()
                .value()
                .to_str()
                .unwrap(),
            "김희중\\x"
        );
        assert_eq!(
            object
                .get(tags::PATIENT_ID)
                .unwrap()
                .value()
                .to_str()
                .unwrap(),
            "H31EXAMPLE"
        );
        let sequence = object.get(tags::REFERENCED_PATIENT_SEQUENCE).unwrap();
        let item = &sequence.value().items().unwrap()[0];
        assert_eq!(
            strs(item, tags::PATIENT_NAME),
            ["Hong^Gildong=洪^吉洞=홍^길동"]
        );
    }

    #[test]
    fn recovers_shift_jis_strings_and_rejoins_split_two_byte_characters() {
        // dicom-rs decodes with windows-31j when the first value is ISO 2022 IR 13.
        let (shift_jis, _, _) = encoding_rs::SHIFT_JIS.decode(H32);
        let mut object = InMemDicomObject::new_empty();
        object.put(charset(&["ISO 2022 IR 13", "ISO 2022 IR 87"]));
        object.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            PrimitiveValue::Strs([shift_jis.into_owned()].into_iter().collect()),
        ));
        // "たぼ" in one value, which dicom-rs split into two at the 0x5C of "ぼ".
        object.put(DataElement::new(
            tags::PATIENT_BIRTH_NAME,
            VR::PN,
            latin1_values(b"\x1b$B$?$\\\x1b(J"),
        ));

        fix_code_extensions(&mut object);

        assert_eq!(
            strs(&object, tags::PATIENT_NAME),
            ["ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"]
        );
        assert_eq!(strs(&object, tags::PATIENT_BIRTH_NAME), ["たぼ"]);
    }

    #[test]
    fn item_with_its_own_extended_charset_is_fixed_under_a_single_valued_one() {
        // pydicom's chrSQEncoding: UTF-8 at the top, ISO 2022 IR 13 + 87 in the item.
        let (shift_jis, _, _) = encoding_rs::SHIFT_JIS.decode(H32);
        let mut nested = InMemDicomObject::new_empty();
        nested.put(charset(&["ISO 2022 IR 13", "ISO 2022 IR 87"]));
        nested.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            shift_jis.into_owned(),
        ));
        let mut object = InMemDicomObject::new_empty();
        object.put(charset(&["ISO_IR 192"]));
        object.put(DataElement::new(
            tags::REFERRING_PHYSICIAN_NAME,
            VR::PN,
            "Doctor^Who",
        ));
        object.put(DataElement::new(
            tags::REQUESTED_PROCEDURE_CODE_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(vec![nested], Length::UNDEFINED),
        ));

        fix_code_extensions(&mut object);

        let sequence = object.get(tags::REQUESTED_PROCEDURE_CODE_SEQUENCE).unwrap();
        let item = &sequence.value().items().unwrap()[0];
        assert_eq!(
            strs(item, tags::PATIENT_NAME),
            ["ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"]
        );
    }

    #[test]
    fn single_valued_or_absent_charset_is_left_alone() {
        let text = latin1(H31);
        let mut object = InMemDicomObject::new_empty();
        object.put(charset(&["ISO_IR 100"]));
        object.put(DataElement::new(tags::PATIENT_NAME, VR::PN, text.as_str()));
        let before = object.clone();
        fix_code_extensions(&mut object);
        assert_eq!(object, before);

        object.remove_element(tags::SPECIFIC_CHARACTER_SET);
        let before = object.clone();
        fix_code_extensions(&mut object);
        assert_eq!(object, before);
    }
}
