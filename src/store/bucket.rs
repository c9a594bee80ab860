//! The stored form of one bucket in Redis: strings holding its fields, one `name value`
//! line each; its base sorted by name (`fin 3\ns 12\ns:1023 2\nstarted 14\nsum:s 40960000`).
//!
//! A bucket is two strings: its base, written whole by a fold ([`crate::store::journal`])
//! that read the bucket and added the journal's sums, and its tail, where folds that do
//! not read the bucket append their sums as more lines (`\nname value...`, each fold's
//! sorted, a name again in each). A fold appends while the tail is short next to the base,
//! so what it writes follows what it adds, not the bucket's size (a busy task's hour,
//! day and total buckets hold thousands of bins); once the tail has grown to half the
//! base, or once the bucket's minute, hour or day is over, the next fold writes the
//! bucket whole again (`store/redis.rs`). One string per part, however many
//! fields a fold changes. (As a Redis hash, each changed field cost Redis about a
//! microsecond of a script's time, and the fold writes nearly one bin per duration per
//! bucket: that was half of Redis' work per event.) It is text, so `redis-cli GET` shows
//! it as it is.

use super::{FieldMap, Fields, split_ascii};

/// Why a stored bucket could not be read.
#[derive(Debug, thiserror::Error)]
#[error("line {line} of the stored bucket is not `name value`: `{text}`")]
pub(crate) struct BadBucket {
    line: usize,
    text: String,
}

/// The stored form of `fields` (what [`add_deltas`] builds, field by field).
#[cfg(test)]
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

/// The stored bucket `stored` with `deltas` added, in stored form: a merge of the two in
/// name order, which copies every line no delta touches as it is (a hot bucket holds
/// thousands of bins, a fold changes a few of them).
///
/// # Errors
/// When a line of `stored` that a delta touches, or any line's name, is not what
/// this module writes, or `stored` is not sorted by name.
pub(crate) fn add_deltas<'a>(
    stored: &str,
    deltas: impl IntoIterator<Item = (&'a String, &'a i64)>,
) -> Result<String, BadBucket> {
    // Sorted by name, compared by their first eight bytes as one integer first: sorting a
    // fold's few hundred names with a `memcmp` per comparison was three fifths of this
    // function (callgrind, the `fold_entries` microbenchmark).
    let mut deltas: Vec<(u64, &str, i64)> = deltas
        .into_iter()
        .map(|(n, d)| (name_prefix(n), n.as_str(), *d))
        .collect();
    deltas.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    let mut out = String::with_capacity(stored.len() + 16 * deltas.len());
    let mut buf = itoa::Buffer::new();
    let line_out = |out: &mut String, name: &str, value: &str| {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(name);
        out.push(' ');
        out.push_str(value);
    };
    let mut pending = deltas.into_iter().map(|(_, n, d)| (n, d)).peekable();
    let mut previous: Option<&str> = None;
    for line in lines(stored) {
        let line = line?;
        let name = line.name();
        if previous.is_some_and(|p| p >= name) {
            return Err(line.bad());
        }
        previous = Some(name);
        // Fields only the deltas have, before this one.
        while let Some((n, d)) = pending.next_if(|(n, _)| *n < name) {
            line_out(&mut out, n, buf.format(d));
        }
        match pending.next_if(|(n, _)| *n == name) {
            Some((_, d)) => line_out(&mut out, name, buf.format(line.parse()? + d)),
            None => line_out(&mut out, name, line.value()),
        }
    }
    for (n, d) in pending {
        line_out(&mut out, n, buf.format(d));
    }
    Ok(out)
}

/// A bucket's base and tail as one text for [`decode`] (absent parts are empty): the
/// tail's lines follow the base's, so a name can occur more than once ([`Fields`] adds
/// them up).
pub(crate) fn join(base: Option<String>, tail: Option<String>) -> String {
    let tail = tail.unwrap_or_default();
    match base {
        Some(mut base) if !base.is_empty() => {
            base.push_str(&tail);
            base
        }
        _ => match tail.strip_prefix('\n') {
            Some(lines) => lines.to_owned(),
            None => tail,
        },
    }
}

/// The fields of a stored bucket, kept as its text with where each line's name is and its
/// value (see [`Fields`]).
///
/// # Errors
/// When `text` is not what this module writes.
pub(crate) fn decode(text: String) -> Result<Fields, BadBucket> {
    let mut found = Vec::with_capacity(text.len() / 10);
    for line in lines(&text) {
        let line = line?;
        let start = line.start;
        found.push((start, start + line.space, line.parse()?));
    }
    Ok(Fields {
        text,
        lines: found,
        added: FieldMap::default(),
    })
}

/// The first eight bytes of `name` as a big-endian integer, zero-padded: ordering by it
/// agrees with ordering by name wherever it differs (a name that ends sorts before one
/// that goes on, and a zero byte sorts before every other byte).
fn name_prefix(name: &str) -> u64 {
    let mut bytes = [0; 8];
    let n = name.len().min(8);
    bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
    u64::from_be_bytes(bytes)
}

/// One line of a stored bucket: `name value`, split at its first space.
struct Line<'a> {
    /// Its number, from 1 (for errors).
    number: usize,
    /// Where it starts in the bucket's text.
    start: usize,
    /// The line, without its '\n'.
    text: &'a str,
    /// Where its first space is: after a name of at least one byte.
    space: usize,
}

impl<'a> Line<'a> {
    fn name(&self) -> &'a str {
        &self.text[..self.space]
    }

    fn value(&self) -> &'a str {
        &self.text[self.space + 1..]
    }

    fn parse(&self) -> Result<i64, BadBucket> {
        self.value().parse().map_err(|_| self.bad())
    }

    fn bad(&self) -> BadBucket {
        bad_line(self.number, self.text)
    }
}

fn bad_line(number: usize, text: &str) -> BadBucket {
    BadBucket {
        line: number,
        text: text.chars().take(80).collect(),
    }
}

/// The lines of the stored bucket `text` (none when it is empty), each an error when it
/// has no space after a non-empty name. Lines and spaces are found byte by byte
/// ([`split_ascii`]): `str::split` with a `char` set up a searcher per line, a fifth of
/// the service's CPU in a query over a month of buckets.
fn lines(text: &str) -> impl Iterator<Item = Result<Line<'_>, BadBucket>> {
    let mut start = 0;
    // `split` gives one empty piece for an empty text; an empty bucket has no line.
    let pieces = if text.is_empty() { 0 } else { usize::MAX };
    split_ascii(text, b'\n').take(pieces).enumerate().map(move |(i, line)| {
        let at = start;
        start += line.len() + 1;
        match line.bytes().position(|b| b == b' ') {
            Some(space) if space > 0 => Ok(Line {
                number: i + 1,
                start: at,
                text: line,
                space,
            }),
            _ => Err(bad_line(i + 1, line)),
        }
    })
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
        assert_eq!(decode(text).unwrap().to_map(), fields);
        assert_eq!(encode(&FieldMap::default()), "");
        assert!(decode("".to_owned()).unwrap().is_empty());
    }

    #[test]
    fn fields_added_to_a_stored_bucket_sum_with_its_own() {
        let mut fields = decode("s 2\ns:10 1".to_owned()).unwrap();
        fields.add("s", 5);
        fields.add("fin", 1);
        fields.add("fin", 2);
        assert_eq!(fields.get("s"), Some(7));
        assert_eq!(fields.get("s:10"), Some(1));
        assert_eq!(fields.get("fin"), Some(3));
        assert_eq!(fields.get("started"), None);
        let want: FieldMap = [("s", 7), ("s:10", 1), ("fin", 3)]
            .map(|(n, v)| (n.to_owned(), v))
            .into_iter()
            .collect();
        assert_eq!(fields.to_map(), want);
    }

    #[test]
    fn a_damaged_bucket_is_refused_naming_the_line() {
        let err = decode("s 2\ns:10\nstarted 1".to_owned()).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("`s:10`"), "{err}");
        assert!(decode("s x".to_owned()).is_err());
        assert!(decode(" 3".to_owned()).is_err(), "a field needs a name");
        let err = decode("s 2\n".to_owned()).unwrap_err().to_string();
        assert!(err.contains("line 2"), "an empty last line is refused too: {err}");
        let err = decode("s 2\nß 1\né".to_owned()).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("`é`"), "{err}");
        assert_eq!(decode("s 2\nß -1".to_owned()).unwrap().get("ß"), Some(-1));
    }

    #[test]
    fn a_tail_adds_to_its_base() {
        let text = join(
            Some("fin 3\ns:10 2".to_owned()),
            Some("\ns:10 1\nz 4\ns:10 5".to_owned()),
        );
        assert_eq!(text, "fin 3\ns:10 2\ns:10 1\nz 4\ns:10 5");
        let fields = decode(text).unwrap();
        assert_eq!(fields.get("s:10"), Some(8));
        assert_eq!(fields.get("z"), Some(4));
        assert_eq!(fields.get("fin"), Some(3));
        // A tail without its base (the base expired first), a base without a tail, neither.
        assert_eq!(join(None, Some("\nz 4\ns 1".to_owned())), "z 4\ns 1");
        assert_eq!(join(Some(String::new()), Some("\nz 4".to_owned())), "z 4");
        assert_eq!(join(Some("s 1".to_owned()), None), "s 1");
        assert_eq!(join(None, None), "");
        // Only what this module and the fold script write is read.
        let err = decode(join(Some("s 1".to_owned()), Some("\nbroken".to_owned())))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("`broken`"), "{err}");
    }

    #[test]
    fn adding_deltas_merges_in_name_order_and_copies_the_rest() {
        let d = |pairs: &[(&str, i64)]| -> FieldMap { pairs.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect() };
        let stored = "fin 3\ns:1023 2\nstarted 14";
        let out = add_deltas(stored, &d(&[("s:1023", 1), ("a", 5), ("s:2000", 1), ("z", 2)])).unwrap();
        assert_eq!(out, "a 5\nfin 3\ns:1023 3\ns:2000 1\nstarted 14\nz 2");
        assert_eq!(add_deltas("", &d(&[("s", 1)])).unwrap(), "s 1");
        assert_eq!(add_deltas(stored, &FieldMap::default()).unwrap(), stored);
        let err = add_deltas("s 1\ns:10 x", &d(&[("s:10", 1)])).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(add_deltas("s 1\nfin 2", &FieldMap::default()).is_err(), "not sorted");
        assert!(add_deltas("s 1\nbroken", &FieldMap::default()).is_err(), "no value");
    }

    proptest! {
        #[test]
        fn ordering_by_prefix_then_name_is_ordering_by_name(
            a in "(s:10|s:1|sum:)?[a-z:0-9\\x00]{0,12}",
            b in "(s:10|s:1|sum:)?[a-z:0-9\\x00]{0,12}",
        ) {
            // What `add_deltas` sorts by; the shared beginnings make ties of the first
            // eight bytes common, so the whole names decide too.
            let by_prefix = (name_prefix(&a), a.as_str()).cmp(&(name_prefix(&b), b.as_str()));
            prop_assert_eq!(by_prefix, a.cmp(&b));
        }

        #[test]
        fn adding_deltas_is_decode_add_encode(
            stored in proptest::collection::hash_map("[a-z:0-9]{1,6}", -1_000_000i64..1_000_000, 0..40),
            deltas in proptest::collection::hash_map("[a-z:0-9]{1,6}", -1_000i64..1_000, 0..20),
        ) {
            let stored: FieldMap = stored.into_iter().collect();
            let deltas: FieldMap = deltas.into_iter().collect();
            let mut want = stored.clone();
            for (n, d) in &deltas {
                *want.entry(n.clone()).or_default() += d;
            }
            let got = add_deltas(&encode(&stored), &deltas).unwrap();
            prop_assert_eq!(&got, &encode(&want));
        }

        #[test]
        fn a_base_and_the_tails_appended_to_it_read_as_their_sum(
            base in proptest::collection::hash_map("[a-z:0-9]{1,6}", -1_000_000i64..1_000_000, 0..30),
            chunks in proptest::collection::vec(
                proptest::collection::hash_map("[a-z:0-9]{1,6}", -1_000i64..1_000, 1..10),
                0..5,
            ),
        ) {
            // What the fold script stores: the base as written whole, then each fold's
            // sums appended to the tail as sorted lines after a '\n'.
            let base: FieldMap = base.into_iter().collect();
            let mut want = base.clone();
            let mut tail = String::new();
            for chunk in &chunks {
                let chunk: FieldMap = chunk.clone().into_iter().collect();
                tail.push('\n');
                tail.push_str(&encode(&chunk));
                for (n, d) in &chunk {
                    *want.entry(n.clone()).or_default() += d;
                }
            }
            let stored_base = (!base.is_empty()).then(|| encode(&base));
            let stored_tail = (!tail.is_empty()).then_some(tail);
            let got = decode(join(stored_base, stored_tail)).unwrap().to_map();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn decode_inverts_encode(fields in proptest::collection::hash_map("[a-z:0-9]{1,12}", any::<i64>(), 0..64)) {
            let fields: FieldMap = fields.into_iter().collect();
            prop_assert_eq!(decode(encode(&fields)).unwrap().to_map(), fields);
        }
    }
}
