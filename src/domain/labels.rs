//! Labels on a task instance (`release`, `platform`, ...), the series they name, and
//! label filters for queries.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::error::{DomainError, quote};

const KEY_RULE: &str = "a label key is 1 to 64 characters of [a-z0-9_], starting with a letter or `_`";

/// A validated label set, sorted by key so that equal sets have equal [`SeriesId`]s.
///
/// It carries its series id, hashed when the set is built: that is when the gRPC handler
/// converts a freshly decoded event and the labels are in the CPU's cache. Hashed later,
/// when a commit round planned thousands of events, every set's map was a cache miss
/// (three quarters of the hashing's time went to reading the map's first node).
///
/// The map is shared: the events of one request that carry the same labels share one
/// set (see `grpc::convert::LabelCache`), so cloning is a reference count, and the
/// empty set (every finish event's) allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels {
    /// `None` for the empty set, never `Some` of an empty map (equality compares this).
    map: Option<Arc<BTreeMap<String, String>>>,
    id: SeriesId,
}

/// The map of the empty label set.
static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl Default for Labels {
    fn default() -> Self {
        Labels::from_trusted(BTreeMap::new())
    }
}

/// Stable 64-bit id of a label set: xxh3 of the sorted `key=value` pairs. It names a
/// series in storage keys, so it must never change for the same labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesId(pub u64);

impl SeriesId {
    /// Fixed-width lowercase hex, as used in storage keys.
    pub fn to_hex(self) -> String {
        let mut out = String::with_capacity(16);
        self.push_hex(&mut out);
        out
    }

    /// Appends [`Self::to_hex`] to `out` (without `fmt`: storage keys and records name a
    /// series for every event).
    pub fn push_hex(self, out: &mut String) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for shift in (0..16).rev() {
            out.push(char::from(DIGITS[((self.0 >> (shift * 4)) & 0xf) as usize]));
        }
    }

    /// Parses [`Self::to_hex`] output.
    pub fn from_hex(text: &str) -> Option<Self> {
        u64::from_str_radix(text, 16).ok().map(SeriesId)
    }
}

/// Longest label key, in bytes.
pub const MAX_LABEL_KEY_LEN: usize = 64;

/// Checks a label key; an error names it `<field> key`.
fn check_key(field: &str, key: &str) -> Result<(), DomainError> {
    let bytes = key.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_LABEL_KEY_LEN
        && (bytes[0].is_ascii_lowercase() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
    if ok {
        Ok(())
    } else {
        Err(DomainError::BadFormat {
            field: format!("{field} key"),
            value: quote(key),
            rule: KEY_RULE,
        })
    }
}

impl Labels {
    /// Validates a label map: at most `max_labels` entries, keys `[a-z_][a-z0-9_]{0,63}`,
    /// values at most `max_value_bytes` bytes. `field` names the map in errors
    /// (`events[3].labels`).
    ///
    /// # Errors
    /// The first violation found, naming the label.
    pub fn parse(
        field: &str,
        map: impl IntoIterator<Item = (String, String)>,
        max_labels: usize,
        max_value_bytes: usize,
    ) -> Result<Self, DomainError> {
        Self::parse_map(field, map.into_iter().collect(), max_labels, max_value_bytes)
    }

    /// [`Self::parse`] for labels already in a map (as protobuf decodes them): the map
    /// becomes the labels as it is.
    ///
    /// # Errors
    /// The first violation found, naming the label.
    pub fn parse_map(
        field: &str,
        map: BTreeMap<String, String>,
        max_labels: usize,
        max_value_bytes: usize,
    ) -> Result<Self, DomainError> {
        if map.len() > max_labels {
            return Err(DomainError::TooMany {
                field: field.to_owned(),
                count: map.len(),
                limit: max_labels,
            });
        }
        for (key, value) in &map {
            check_key(field, key)?;
            if value.len() > max_value_bytes {
                return Err(DomainError::TooLong {
                    field: format!("{field}[{key}]"),
                    len: value.len(),
                    limit: max_value_bytes,
                });
            }
        }
        Ok(Labels::from_trusted(map))
    }

    /// Builds labels that were validated before (read back from the store).
    pub fn from_trusted(map: BTreeMap<String, String>) -> Self {
        let id = series_id_of(&map);
        Labels {
            map: (!map.is_empty()).then(|| Arc::new(map)),
            id,
        }
    }

    /// The labels, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.as_map().iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The value of one label.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.as_map().get(key).map(String::as_str)
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.map.is_none()
    }

    /// The map itself.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        self.map.as_deref().unwrap_or(&NO_LABELS)
    }

    /// The stable id of this label set.
    pub fn series_id(&self) -> SeriesId {
        self.id
    }
}

/// XXH3 of the length-prefixed keys and values (so that ("a", "b=c") and ("a=b", "c")
/// differ), hashed in one call: the streaming hasher gives the same digest but sets up a
/// large state for every event. Most label sets fit a stack buffer: no allocation per
/// event for them.
fn series_id_of(map: &BTreeMap<String, String>) -> SeriesId {
    const STACK: usize = 512;
    let len: usize = map.iter().map(|(k, v)| 16 + k.len() + v.len()).sum();
    let mut stack = [0u8; STACK];
    let mut heap = Vec::new();
    let bytes: &mut [u8] = if len <= STACK {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    let mut at = 0;
    for (k, v) in map {
        for part in [
            &(k.len() as u64).to_le_bytes()[..],
            k.as_bytes(),
            &(v.len() as u64).to_le_bytes(),
            v.as_bytes(),
        ] {
            bytes[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
    }
    SeriesId(xxhash_rust::xxh3::xxh3_64(bytes))
}

/// Labels a series must carry to be read by a query or gate arm; empty = every series.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelFilter(BTreeMap<String, String>);

impl LabelFilter {
    /// Validates a filter with the same key rules as labels.
    ///
    /// # Errors
    /// When a key is not a valid label key.
    pub fn parse(field: &str, map: impl IntoIterator<Item = (String, String)>) -> Result<Self, DomainError> {
        let map: BTreeMap<String, String> = map.into_iter().collect();
        for key in map.keys() {
            check_key(field, key)?;
        }
        Ok(LabelFilter(map))
    }

    /// Whether a series with `labels` is selected.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v.as_str()))
    }

    /// The required labels.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether every series matches.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::parse(
            "labels",
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            16,
            128,
        )
        .unwrap()
    }

    #[test]
    fn equal_label_sets_have_equal_series_ids_whatever_the_order() {
        let a = Labels::parse("l", [("b".into(), "2".into()), ("a".into(), "1".into())], 16, 128).unwrap();
        let b = labels(&[("a", "1"), ("b", "2")]);
        assert_eq!(a.series_id(), b.series_id());
        assert_ne!(labels(&[("a", "b=c")]).series_id(), labels(&[("a_b", "c")]).series_id());
    }

    #[test]
    fn series_ids_are_stable_across_versions() {
        // Storage keys contain this id: changing the hash would orphan every stored series.
        assert_eq!(labels(&[]).series_id().to_hex(), "2d06800538d394c2");
        // Built any way, a label set carries the id of its map.
        assert_eq!(Labels::default().series_id(), labels(&[]).series_id());
        let map: BTreeMap<String, String> = [("release".to_owned(), "2.4.0".to_owned())].into();
        assert_eq!(
            Labels::from_trusted(map).series_id(),
            labels(&[("release", "2.4.0")]).series_id()
        );
        // The id of a label set is what the streaming hasher of earlier versions gave.
        let streamed = |l: &Labels| {
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            for (k, v) in l.iter() {
                hasher.update(&(k.len() as u64).to_le_bytes());
                hasher.update(k.as_bytes());
                hasher.update(&(v.len() as u64).to_le_bytes());
                hasher.update(v.as_bytes());
            }
            SeriesId(hasher.digest())
        };
        let long = "x".repeat(128);
        for l in [
            labels(&[]),
            labels(&[("release", "2.4.0")]),
            labels(&[("platform", "ios"), ("release", "2.4.0"), ("segment", "pro")]),
            labels(&[("a", &long), ("b", &long), ("c", &long), ("d", &long)]),
        ] {
            assert_eq!(l.series_id(), streamed(&l), "{l:?}");
        }
        let id = labels(&[("release", "2.4.0")]).series_id();
        assert_eq!(SeriesId::from_hex(&id.to_hex()), Some(id));
        for id in [0, 7, 0xdead_beef, u64::MAX, id.0] {
            assert_eq!(SeriesId(id).to_hex(), format!("{id:016x}"));
        }
    }

    #[test]
    fn label_limits_name_the_label() {
        let long = Labels::parse("events[1].labels", [("release".into(), "x".repeat(300))], 16, 128);
        assert_eq!(
            long.unwrap_err().to_string(),
            "events[1].labels[release] is 300 bytes; the limit is 128"
        );
        let many = Labels::parse("l", (0..17).map(|i| (format!("k{i}"), "v".into())), 16, 128);
        assert_eq!(many.unwrap_err().to_string(), "l has 17 entries; the limit is 16");
        let bad_key = Labels::parse("l", [("Release".into(), "1".into())], 16, 128);
        assert!(bad_key.unwrap_err().to_string().contains("`Release`"));
    }

    #[test]
    fn a_filter_selects_series_carrying_all_its_labels() {
        let filter = LabelFilter::parse("filter", [("release".into(), "2".into())]).unwrap();
        assert!(filter.matches(&labels(&[("release", "2"), ("platform", "ios")])));
        assert!(!filter.matches(&labels(&[("release", "1")])));
        assert!(!filter.matches(&labels(&[])));
        assert!(LabelFilter::default().matches(&labels(&[])));
    }
}
