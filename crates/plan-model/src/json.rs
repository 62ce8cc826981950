//! JSON objects only, for the structs read from untrusted files.
//!
//! serde's derived `Deserialize` for a struct also accepts a JSON array
//! holding the fields in order, so `[]` reads as a struct whose fields all
//! have defaults (an empty live state). No input of safe-switch is written
//! that way; [`Object`] and [`from_object`] accept a JSON object and
//! nothing else, and keep serde_json's line and column in errors.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

/// A `T` that was given as a JSON object (use it as a field's or a map
/// value's type, then unwrap with `.0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Object<T>, D::Error> {
        from_object(deserializer).map(Object)
    }
}

/// Deserializes a `T` (a struct) from a JSON object only; anything else,
/// an array included, is an "invalid type" error.
pub fn from_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    struct ObjectVisitor<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map))
        }
    }
    deserializer.deserialize_map(ObjectVisitor(PhantomData))
}

/// Parses JSON text holding one object as a `T`.
pub fn object_from_str<'de, T: Deserialize<'de>>(text: &'de str) -> Result<T, JsonError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = from_object(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// A JSON error from an untrusted file, as serde_json reports it (what was
/// expected, the line and the column) but without the string values it
/// would quote: `invalid type: string "<a token>"` reads `invalid type:
/// a string`. A file named by mistake (a credentials file given as
/// `--live`) must not be echoed into a CI log.
#[derive(Debug)]
pub struct JsonError(serde_json::Error);

impl JsonError {
    /// The line of the error (1-based), 0 when unknown.
    pub fn line(&self) -> usize {
        self.0.line()
    }

    /// The column of the error (1-based), 0 when unknown.
    pub fn column(&self) -> usize {
        self.0.column()
    }
}

impl From<serde_json::Error> for JsonError {
    fn from(e: serde_json::Error) -> JsonError {
        JsonError(e)
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_strings(&self.0.to_string()))
    }
}

impl std::error::Error for JsonError {}

/// Replaces each `string "..."` of a serde message (a value quoted from
/// the input) with `a string`.
pub fn redact_strings(message: &str) -> String {
    const QUOTED: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(QUOTED) {
        out.push_str(&rest[..at]);
        out.push_str("a string");
        let after = &rest[at + QUOTED.len()..];
        // The value is quoted as Rust's Debug does: up to the first quote
        // that no backslash escapes.
        let mut escaped = false;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = i + 1;
                    break;
                }
                _ => escaped = false,
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        a: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(default)]
        inner: BTreeMap<String, Object<Inner>>,
    }

    #[test]
    fn objects_are_read_as_before() {
        let outer: Outer = object_from_str(r#"{"inner": {"x": {"a": 1}}}"#).unwrap();
        assert_eq!(outer.inner["x"].0, Inner { a: 1 });
        // serde's own derive takes an array for the same struct.
        assert!(serde_json::from_str::<Inner>("[]").is_ok());
    }

    #[test]
    fn arrays_and_other_values_are_refused() {
        for text in ["[]", "[{}]", "null", "1", "\"x\"", "true"] {
            let err = object_from_str::<Outer>(text).unwrap_err();
            assert!(err.to_string().contains("expected a JSON object at line 1"), "{text}: {err}");
        }
        let err = object_from_str::<Outer>(r#"{"inner": {"x": [7]}}"#).unwrap_err();
        assert!(err.to_string().starts_with("invalid type: sequence, expected a JSON object"), "{err}");
    }

    #[test]
    fn quoted_values_are_not_echoed() {
        let err = object_from_str::<Outer>(r#"{"inner": {"x": "tok\"en-123"}}"#).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("en-123"), "{text}");
        assert!(text.starts_with("invalid type: a string, expected a JSON object at line 1"), "{text}");
        assert_eq!(redact_strings("a string \"x\\\\\" y"), "a a string y");
    }

    #[test]
    fn errors_inside_keep_their_position() {
        let err = object_from_str::<Outer>("{\n \"inner\": {\"x\": {\"b\": 1}}}").unwrap_err();
        assert_eq!(err.line(), 2, "{err}");
        assert!(err.to_string().contains("unknown field `b`"), "{err}");
        let err = object_from_str::<Outer>("{} x").unwrap_err();
        assert!(err.to_string().contains("trailing characters"), "{err}");
    }
}
