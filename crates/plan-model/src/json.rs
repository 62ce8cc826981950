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
pub fn object_from_str<'de, T: Deserialize<'de>>(text: &'de str) -> Result<T, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = from_object(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
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
    fn errors_inside_keep_their_position() {
        let err = object_from_str::<Outer>("{\n \"inner\": {\"x\": {\"b\": 1}}}").unwrap_err();
        assert_eq!(err.line(), 2, "{err}");
        assert!(err.to_string().contains("unknown field `b`"), "{err}");
        let err = object_from_str::<Outer>("{} x").unwrap_err();
        assert!(err.to_string().contains("trailing characters"), "{err}");
    }
}
