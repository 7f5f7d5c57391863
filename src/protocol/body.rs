//! A message body's rules, written once for every transport: how it is
//! measured (compact JSON, so a client's formatting changes nothing), how
//! deep it may nest, and what a refusal says.
//!
//! A body nested deeper than [`MAX_BODY_DEPTH`] arrays and objects is
//! refused (`too_large`): many readers' JSON parsers (Python's, Jackson's
//! default, Go's) stop well before the depth a sender can reach, and one
//! stored body would break every reader of its room.

use std::borrow::Cow;

/// Deepest nesting of arrays and objects a body may have.
pub const MAX_BODY_DEPTH: usize = 32;

/// Why a body cannot be stored or sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyRefusal {
    /// Over the size limit, measured as stored.
    #[error("body is {bytes} bytes serialized; the limit is {limit}")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// Nested deeper than [`MAX_BODY_DEPTH`].
    #[error(
        "body nests arrays and objects {depth} deep; the limit is {MAX_BODY_DEPTH} (deeper JSON breaks common parsers of the room's readers)"
    )]
    TooDeep {
        /// Its depth (at least the first depth past the limit).
        depth: usize,
    },
}

/// Checks a body given as valid JSON text: compacted (see
/// [`compact_json`]), at most `limit` bytes and [`MAX_BODY_DEPTH`] deep.
///
/// # Errors
/// [`BodyRefusal`] saying which rule it breaks.
pub fn checked_body(json: &str, limit: usize) -> Result<Cow<'_, str>, BodyRefusal> {
    check_depth(json)?;
    let body = compact_json(json);
    if body.len() > limit {
        return Err(BodyRefusal::TooLarge {
            bytes: body.len(),
            limit,
        });
    }
    Ok(body)
}

/// Refuses text whose arrays and objects nest deeper than
/// [`MAX_BODY_DEPTH`] (brackets inside strings do not count). Works on any
/// text, valid JSON or not, so a body too deep for a JSON parser to read
/// is still told apart from one that is not JSON.
///
/// # Errors
/// [`BodyRefusal::TooDeep`].
pub fn check_depth(text: &str) -> Result<(), BodyRefusal> {
    let depth = nesting_depth(text);
    if depth > MAX_BODY_DEPTH {
        return Err(BodyRefusal::TooDeep { depth });
    }
    Ok(())
}

/// The deepest nesting of `[`/`{` outside strings in `text`.
#[must_use]
pub fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in text.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Removes the whitespace outside strings from valid JSON text, so that a
/// body's size is measured the same way whatever the client's formatting.
/// Borrows when there is nothing to do.
#[must_use]
pub fn compact_json(json: &str) -> Cow<'_, str> {
    let is_space = |b: u8| matches!(b, b' ' | b'\n' | b'\r' | b'\t');
    let mut in_string = false;
    let mut escaped = false;
    let mut needs_work = false;
    for &byte in json.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if byte == b'"' {
            in_string = true;
        } else if is_space(byte) {
            needs_work = true;
            break;
        }
    }
    if !needs_work {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for ch in json.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_string = false;
            }
            out.push(ch);
        } else if ch == '"' {
            in_string = true;
            out.push(ch);
        } else if !ch.is_ascii() || !is_space(ch as u8) {
            out.push(ch);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn thirty_two_levels_pass_and_thirty_three_are_too_deep() {
        assert!(checked_body(&nested(32), 1000).is_ok());
        assert_eq!(checked_body(&nested(33), 1000), Err(BodyRefusal::TooDeep { depth: 33 }));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(33), "}".repeat(33));
        assert_eq!(nesting_depth(&objects), 33);
        assert_eq!(
            nesting_depth(r#"{"a":"[[[[[[","b":[1,{"c":[]}]}"#),
            4,
            "brackets in strings do not count"
        );
        assert_eq!(
            nesting_depth(r#""\"[[[""#),
            0,
            "an escaped quote does not end the string"
        );
        assert_eq!(nesting_depth("42"), 0);
        // 32,000 deep: too deep for serde_json to parse, still measured.
        assert_eq!(
            check_depth(&nested(32_000)),
            Err(BodyRefusal::TooDeep { depth: 32_000 })
        );
    }

    #[test]
    fn size_is_measured_compacted() {
        assert_eq!(checked_body(r#"{ "a" : 1 }"#, 7).unwrap(), r#"{"a":1}"#);
        assert_eq!(
            checked_body(r#"{ "a" : 12 }"#, 7),
            Err(BodyRefusal::TooLarge { bytes: 8, limit: 7 })
        );
    }

    #[test]
    fn compact_json_keeps_strings_and_drops_other_whitespace() {
        assert_eq!(
            compact_json(r#"{ "a b" : "c\" d" , "e":[ 1 ,2 ] }"#),
            r#"{"a b":"c\" d","e":[1,2]}"#
        );
        assert!(matches!(compact_json(r#"{"a":"x y"}"#), Cow::Borrowed(_)));
        assert_eq!(compact_json("\"\\\\\" "), "\"\\\\\"");
    }

    proptest! {
        #[test]
        fn depth_matches_serde_for_arrays(depth in 0usize..60) {
            let text = nested(depth);
            prop_assert_eq!(nesting_depth(&text), depth);
            prop_assert_eq!(checked_body(&text, usize::MAX).is_ok(), depth <= MAX_BODY_DEPTH);
        }

        #[test]
        fn compacted_json_parses_to_the_same_value(value in arbitrary_json()) {
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            let compact = compact_json(&pretty);
            prop_assert_eq!(serde_json::from_str::<serde_json::Value>(&compact).unwrap(), value.clone());
            prop_assert_eq!(compact.as_ref(), serde_json::to_string(&value).unwrap());
        }
    }

    fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i32>().prop_map(serde_json::Value::from),
            "\\PC{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-z ]{0,4}", inner, 0..4)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }
}
