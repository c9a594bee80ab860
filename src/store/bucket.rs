//! The stored form of one bucket in Redis: a string holding its fields, one `name value`
//! line each, sorted by name (`fin 3\ns 12\ns:1023 2\nstarted 14\nsum:s 40960000`).
//!
//! A bucket is written whole by a fold ([`crate::store::journal`]), which reads it, adds
//! the journal's sums and writes it back: one string per bucket, however many of its
//! fields a fold changes. (As a Redis hash, each changed field cost Redis about a
//! microsecond of a script's time, and the fold writes nearly one bin per duration per
//! bucket: that was half of Redis' work per event.) It is text, so `redis-cli GET` shows
//! it as it is.

use super::FieldMap;

/// Why a stored bucket could not be read.
#[derive(Debug, thiserror::Error)]
#[error("line {line} of the stored bucket is not `name value`: `{text}`")]
pub(crate) struct BadBucket {
    line: usize,
    text: String,
}

/// The stored form of `fields`.
pub(crate) fn encode(fields: &FieldMap) -> String {
    let mut sorted: Vec<(&String, &i64)> = fields.iter().collect();
    sorted.sort_unstable();
    let mut out = String::with_capacity(sorted.len() * 12);
    let mut buf = itoa::Buffer::new();
    for (name, value) in sorted {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(name);
        out.push(' ');
        out.push_str(buf.format(*value));
    }
    out
}

/// Adds the fields of a stored bucket to `into`.
///
/// # Errors
/// When `text` is not what [`encode`] writes; `into` may then hold part of it.
pub(crate) fn add_to(into: &mut FieldMap, text: &str) -> Result<(), BadBucket> {
    if text.is_empty() {
        return Ok(());
    }
    for (i, line) in text.split('\n').enumerate() {
        let parsed = line
            .split_once(' ')
            .and_then(|(name, value)| Some((name, value.parse::<i64>().ok()?)))
            .filter(|(name, _)| !name.is_empty());
        let Some((name, value)) = parsed else {
            return Err(BadBucket {
                line: i + 1,
                text: line.chars().take(80).collect(),
            });
        };
        match into.get_mut(name) {
            Some(v) => *v += value,
            None => {
                into.insert(name.to_owned(), value);
            }
        }
    }
    Ok(())
}

/// The fields of a stored bucket.
///
/// # Errors
/// When `text` is not what [`encode`] writes.
pub(crate) fn decode(text: &str) -> Result<FieldMap, BadBucket> {
    let mut out = FieldMap::with_capacity(text.len() / 10);
    add_to(&mut out, text)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_bucket_is_sorted_name_value_lines() {
        let fields: FieldMap = [("started", 14), ("s:1023", 2), ("sum:s", 40_960_000), ("fin", -3)]
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect();
        let text = encode(&fields);
        assert_eq!(text, "fin -3\ns:1023 2\nstarted 14\nsum:s 40960000");
        assert_eq!(decode(&text).unwrap(), fields);
        assert_eq!(encode(&FieldMap::new()), "");
        assert!(decode("").unwrap().is_empty());
    }

    #[test]
    fn adding_a_stored_bucket_sums_field_by_field() {
        let mut into: FieldMap = [("s".to_owned(), 5)].into_iter().collect();
        add_to(&mut into, "s 2\ns:10 1").unwrap();
        assert_eq!(into["s"], 7);
        assert_eq!(into["s:10"], 1);
    }

    #[test]
    fn a_damaged_bucket_is_refused_naming_the_line() {
        let err = decode("s 2\ns:10\nstarted 1").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("`s:10`"), "{err}");
        assert!(decode("s x").is_err());
        assert!(decode(" 3").is_err(), "a field needs a name");
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(fields in proptest::collection::hash_map("[a-z:0-9]{1,12}", any::<i64>(), 0..64)) {
            let fields: FieldMap = fields;
            prop_assert_eq!(decode(&encode(&fields)).unwrap(), fields);
        }
    }
}
