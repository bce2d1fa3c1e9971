//! RFC 8785 (JCS) canonical JSON, written straight into a byte buffer.
//!
//! The audit chain hashes the canonical form of every record; `serde_jcs` goes through a generic
//! serializer and re-sorts maps on every call, which made hashing a tenth of the store writer's
//! time. This writer handles `serde_json::Value` directly and delegates only non-integer numbers
//! (ECMAScript number formatting) to `serde_jcs`. A property test holds it byte-equal to
//! `serde_jcs` on arbitrary values.

use serde_json::Value;

/// Appends the JCS form of `value` to `out`.
pub fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64().filter(|i| i.unsigned_abs() <= MAX_SAFE) {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64().filter(|u| *u <= MAX_SAFE) {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                // Floats and integers beyond 2^53 follow ECMAScript's Number formatting.
                out.extend_from_slice(&serde_jcs::to_vec(n)?);
            }
        }
        Value::String(s) => write_str(s, out)?,
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // JCS orders members by the UTF-16 code units of their names.
            entries.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(key, out)?;
                out.push(b':');
                write(item, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// Appends a JSON string. serde_json's escaping (`\"`, `\\`, `\b\f\n\r\t`, other controls as
/// lowercase `\u00xx`, nothing else) is exactly what JCS prescribes.
pub fn write_str(s: &str, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    serde_json::to_writer(&mut *out, s)
}

/// 2^53 - 1: integers up to this are exact in IEEE 754 and print as plain digits.
const MAX_SAFE: u64 = (1 << 53) - 1;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn jcs(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        write(v, &mut out).expect("canonical");
        out
    }

    #[test]
    fn known_forms() {
        let v = json!({"b": 1, "a": [true, null, "x\n\u{1}é"], "€": 1.5, "\u{10000}": 0, "\u{e000}": 2});
        assert_eq!(jcs(&v), serde_jcs::to_vec(&v).expect("serde_jcs"));
        assert_eq!(jcs(&json!(1e21)), b"1e+21");
        assert_eq!(
            jcs(&json!(9007199254740993u64)),
            serde_jcs::to_vec(&json!(9007199254740993u64)).expect("jcs")
        );
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            (-1e12f64..1e12).prop_map(|f| json!(f)),
            "\\PC{0,12}".prop_map(Value::String),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn equals_serde_jcs(v in arb_value()) {
            prop_assert_eq!(jcs(&v), serde_jcs::to_vec(&v).expect("serde_jcs"));
        }
    }
}
