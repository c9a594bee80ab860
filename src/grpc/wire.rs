//! How the server decodes `IngestService` requests: `proto-server/ingest_wire.proto`,
//! the same bytes on the wire as the public `RecordRequest`, decoded cheaper.
//!
//! Decoding the public message builds, for every event, a map of owned strings for its
//! labels (and drops it again once the labels are checked): in a stream of completed
//! events that was a third of the service's CPU. Decoding it as generated `bytes`
//! fields instead still made a `Bytes` (a reference count on the request's buffer, set
//! and dropped) per field and a `Vec` per event's labels: the decoding was 23 % of the
//! service's CPU. So the request is not decoded as a whole: [`WireRecordRequest`] keeps
//! its bytes and where each event is in them, and each event is parsed from there
//! ([`WireEvent`]) as the server converts it ([`crate::grpc::convert::event`]), its
//! strings and its label entries slices of the request. The label entries, still
//! encoded, are decoded and checked once per distinct set in a request
//! ([`crate::grpc::convert::RequestCache`]).
//!
//! Both follow protobuf's rules as prost applies them (a singular field sent twice keeps
//! the last, a message field sent twice is merged, unknown fields are skipped); tests
//! check them against prost's decoding of the same bytes as a [`WireTaskEvent`].
//!
//! Nothing outside the server sees these types: clients, reflection and the docs use
//! [`crate::pb`].

pub use generated::*;

/// The code prost generates from `proto-server/ingest_wire.proto`.
#[allow(missing_docs, unreachable_pub, missing_debug_implementations, clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/wire/tasktime.v1.rs"));
}

use std::ops::Range;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::DecodeError;
use prost::encoding::{DecodeContext, WireType, check_wire_type, decode_key, decode_varint, skip_field};

/// The `events` field of `RecordRequest`.
const EVENTS: u32 = 1;
/// The fields of `TaskEvent`.
const TASK: u32 = 1;
const INSTANCE_ID: u32 = 2;
const AT: u32 = 3;
const LABELS: u32 = 4;

/// A `RecordRequest` as the server receives it: its bytes, and where in them each event
/// is (checked to be whole; each event is parsed when it is converted, [`WireEvent`]).
///
/// Bytes that are not a `RecordRequest` still make one, holding why
/// ([`Self::malformed`]): the service answers it `INVALID_ARGUMENT` naming the byte where
/// it broke, where a decoding error would have been `INTERNAL` (tonic's code for a
/// message the server cannot decode).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WireRecordRequest {
    raw: Bytes,
    /// Each event's encoded `TaskEvent`: its range in `raw`.
    events: Vec<Range<usize>>,
    /// Why `raw` is not a `RecordRequest`, if it is not; `events` is then empty.
    malformed: Option<String>,
}

impl WireRecordRequest {
    /// Indexes an encoded request: the range of every `events` entry. Other fields are
    /// skipped, as prost skips unknown fields.
    ///
    /// # Errors
    /// When the request is not a protobuf message, or `events` is not length-delimited:
    /// prost's error, and the offset of the field where it broke.
    pub fn index(raw: Bytes) -> Result<Self, (DecodeError, usize)> {
        let mut events = Vec::new();
        let mut rest: &[u8] = &raw;
        while !rest.is_empty() {
            let at = raw.len() - rest.len();
            let field = decode_key(&mut rest).and_then(|(tag, wire_type)| {
                if tag == EVENTS {
                    check_wire_type(WireType::LengthDelimited, wire_type)?;
                    let value = length_delimited(tag, &mut rest)?;
                    let start = raw.len() - rest.len() - value.len();
                    events.push(start..start + value.len());
                    Ok(())
                } else {
                    skip_field(wire_type, tag, &mut rest, DecodeContext::default())
                }
            });
            field.map_err(|e| (e, at))?;
        }
        Ok(WireRecordRequest {
            raw,
            events,
            malformed: None,
        })
    }

    /// Why the request's bytes are not a `RecordRequest` (`None`: they are).
    pub fn malformed(&self) -> Option<&str> {
        self.malformed.as_deref()
    }

    /// A request of these events, encoded as a client encodes a `RecordRequest`.
    pub fn from_events(events: &[WireTaskEvent]) -> Self {
        let mut raw = BytesMut::new();
        for e in events {
            prost::encoding::message::encode(EVENTS, e, &mut raw);
        }
        Self::index(raw.freeze()).unwrap_or_else(|(e, at)| panic!("an encoded request indexes, not {e} at byte {at}"))
    }

    /// How many events the request holds.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the request holds no event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Each event's encoded `TaskEvent`, in order.
    pub fn events(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.events.iter().map(|r| &self.raw[r.clone()])
    }
}

/// A length-delimited field's value, after its key: the slice `rest` starts with,
/// which it then no longer holds. Its length is read once; one that runs past the end
/// gets prost's error for it (from `skip_field`, which checks the same).
fn length_delimited<'a>(tag: u32, rest: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let mut after = *rest;
    let len = decode_varint(&mut after)?;
    match usize::try_from(len).ok().filter(|&len| len <= after.len()) {
        Some(len) => {
            let (value, tail) = after.split_at(len);
            *rest = tail;
            Ok(value)
        }
        None => Err(
            skip_field(WireType::LengthDelimited, tag, rest, DecodeContext::default())
                .expect_err("skip_field refuses a length past the end, as checked here"),
        ),
    }
}

/// The request is its bytes: encoding writes them back, and merging (protobuf's merge is
/// concatenation) appends and indexes the whole again.
impl prost::Message for WireRecordRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.raw);
    }

    /// An `events` entry is appended; any other field is skipped (prost keeps no
    /// unknown fields either).
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag != EVENTS {
            return skip_field(wire_type, tag, buf, ctx);
        }
        let mut event = Bytes::new();
        prost::encoding::bytes::merge(wire_type, &mut event, buf, ctx)?;
        let mut field = BytesMut::new();
        prost::encoding::bytes::encode(EVENTS, &event, &mut field);
        self.merge(field.freeze())
    }

    fn encoded_len(&self) -> usize {
        self.raw.len()
    }

    fn clear(&mut self) {
        *self = WireRecordRequest::default();
    }

    /// Takes `buf` whole (tonic's buffer hands over its bytes without a copy). Never
    /// fails: bytes that are not a `RecordRequest` are kept with the reason
    /// ([`WireRecordRequest::malformed`]).
    fn merge(&mut self, mut buf: impl Buf) -> Result<(), DecodeError> {
        let more = buf.copy_to_bytes(buf.remaining());
        let raw = if self.raw.is_empty() {
            more
        } else {
            let mut both = BytesMut::with_capacity(self.raw.len() + more.len());
            both.put_slice(&self.raw);
            both.put_slice(&more);
            both.freeze()
        };
        *self = WireRecordRequest::index(raw.clone()).unwrap_or_else(|(e, at)| WireRecordRequest {
            raw,
            events: Vec::new(),
            malformed: Some(format!(
                "the request is not a RecordRequest as protobuf encodes it: the field at byte {at} is broken ({e})"
            )),
        });
        Ok(())
    }
}

/// One event of a request, parsed from its bytes: the strings and label entries are
/// slices of them, unchecked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WireEvent<'a> {
    pub task: &'a [u8],
    pub instance_id: &'a [u8],
    pub at: Option<prost_types::Timestamp>,
    /// The event's label entries as sent, each still an encoded `WireLabel`: the bytes
    /// from the first `labels` field to the end of the last (with any other field sent
    /// between them; [`Self::label_entries`] skips those). Empty when it has none.
    pub labels: &'a [u8],
    pub kind: Option<wire_task_event::Kind>,
}

impl<'a> WireEvent<'a> {
    /// Parses an encoded `TaskEvent`.
    ///
    /// # Errors
    /// As prost's decoding of a [`WireTaskEvent`] from the same bytes.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut event = WireEvent::default();
        let mut labels: Option<Range<usize>> = None;
        let mut rest = bytes;
        while !rest.is_empty() {
            let field_start = bytes.len() - rest.len();
            let (tag, wire_type) = decode_key(&mut rest)?;
            let ctx = DecodeContext::default();
            match tag {
                TASK | INSTANCE_ID | LABELS => {
                    check_wire_type(WireType::LengthDelimited, wire_type)?;
                    let value = length_delimited(tag, &mut rest)?;
                    match tag {
                        TASK => event.task = value,
                        INSTANCE_ID => event.instance_id = value,
                        _ => {
                            let end = bytes.len() - rest.len();
                            labels = Some(labels.map_or(field_start..end, |r| r.start..end));
                        }
                    }
                }
                AT => prost::encoding::message::merge(
                    wire_type,
                    event.at.get_or_insert_with(Default::default),
                    &mut rest,
                    ctx,
                )?,
                10..=12 => wire_task_event::Kind::merge(&mut event.kind, tag, wire_type, &mut rest, ctx)?,
                _ => skip_field(wire_type, tag, &mut rest, ctx)?,
            }
        }
        if let Some(r) = labels {
            event.labels = &bytes[r];
        }
        Ok(event)
    }

    /// Each label entry, in the order sent, still encoded.
    pub fn label_entries(&self) -> impl Iterator<Item = Result<&'a [u8], DecodeError>> + 'a {
        let mut rest = self.labels;
        std::iter::from_fn(move || {
            while !rest.is_empty() {
                let field = decode_key(&mut rest).and_then(|(tag, wire_type)| {
                    if tag == LABELS {
                        length_delimited(tag, &mut rest).map(Some)
                    } else {
                        skip_field(wire_type, tag, &mut rest, DecodeContext::default()).map(|()| None)
                    }
                });
                match field {
                    Ok(None) => continue,
                    Ok(Some(entry)) => return Some(Ok(entry)),
                    Err(e) => {
                        rest = &[];
                        return Some(Err(e));
                    }
                }
            }
            None
        })
    }
}

/// The encoded `FileDescriptorSet` of `proto-server/ingest_wire.proto`.
#[cfg(test)]
const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/wire/descriptor.bin"));

/// A public event as the server decodes it: encoded, then decoded as a [`WireTaskEvent`]
/// (for tests and benchmarks of the conversion).
pub fn from_public(event: &crate::pb::TaskEvent) -> WireTaskEvent {
    let bytes = prost::Message::encode_to_vec(event);
    <WireTaskEvent as prost::Message>::decode(bytes.as_slice()).expect("a public event decodes as a wire event")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use prost::Message as _;
    use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};

    use super::*;
    use crate::pb;

    fn pools() -> (DescriptorPool, DescriptorPool) {
        let public = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).expect("the public descriptor set decodes");
        let wire = DescriptorPool::decode(DESCRIPTOR_SET).expect("the wire descriptor set decodes");
        (public, wire)
    }

    /// The protobuf wire type of a field: what the decoder goes by.
    fn wire_type(field: &prost_reflect::FieldDescriptor) -> &'static str {
        if field.is_map() {
            return "len";
        }
        match field.kind() {
            Kind::String | Kind::Bytes | Kind::Message(_) => "len",
            Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => "i64",
            Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => "i32",
            _ => "varint",
        }
    }

    /// Every field of `public` is in `wire` with the same number, wire type,
    /// cardinality and oneof, and the same recursively for message fields (by name for
    /// the messages the wire file takes from `crate::pb`); and `wire` has no other field.
    fn assert_same_on_the_wire(public: &MessageDescriptor, wire: &MessageDescriptor) {
        let name = public.full_name();
        assert_eq!(
            public.fields().map(|f| f.number()).collect::<Vec<_>>(),
            wire.fields().map(|f| f.number()).collect::<Vec<_>>(),
            "{name}: field numbers differ from {}",
            wire.full_name()
        );
        for p in public.fields() {
            let w = wire.get_field(p.number()).expect("the numbers are the same");
            let what = format!("{name}.{} (field {})", p.name(), p.number());
            assert_eq!(p.name(), w.name(), "{what}: named differently");
            assert_eq!(wire_type(&p), wire_type(&w), "{what}: wire types differ");
            assert_eq!(
                p.is_list() || p.is_map(),
                w.is_list() || w.is_map(),
                "{what}: repeated in one only"
            );
            assert_eq!(
                p.containing_oneof().map(|o| o.name().to_owned()),
                w.containing_oneof().map(|o| o.name().to_owned()),
                "{what}: oneofs differ"
            );
            match (p.kind(), w.kind()) {
                (Kind::Message(pm), Kind::Message(wm)) if !wm.full_name().starts_with("tasktime.v1.Wire") => {
                    assert_eq!(pm.full_name(), wm.full_name(), "{what}: message types differ");
                }
                (Kind::Message(pm), Kind::Message(wm)) => assert_same_on_the_wire(&pm, &wm),
                (Kind::Enum(pe), Kind::Enum(we)) => assert_eq!(pe.full_name(), we.full_name(), "{what}"),
                // Anything else: a scalar, or a map's entries left encoded (`labels`),
                // whose entry message the caller checks against WireLabel.
                _ => {}
            }
        }
    }

    #[test]
    fn the_wire_requests_are_the_public_requests_on_the_wire() {
        let (public, wire) = pools();
        let get = |pool: &DescriptorPool, name: &str| {
            pool.get_message_by_name(name)
                .unwrap_or_else(|| panic!("{name} is not in the descriptor set"))
        };
        assert_same_on_the_wire(
            &get(&public, "tasktime.v1.RecordRequest"),
            &get(&wire, "tasktime.v1.WireRecordRequest"),
        );
        // The wire event keeps each label entry encoded (`bytes`) and decodes it as a
        // WireLabel: the public map's entry message.
        assert_same_on_the_wire(
            &get(&public, "tasktime.v1.TaskEvent.LabelsEntry"),
            &get(&wire, "tasktime.v1.WireLabel"),
        );
        // The public messages the wire file declares for the compiler only, and the
        // service: the same as the public ones.
        for name in [
            "tasktime.v1.Start",
            "tasktime.v1.Finish",
            "tasktime.v1.Completed",
            "tasktime.v1.RecordResponse",
            "tasktime.v1.EventError",
        ] {
            assert_same_on_the_wire(&get(&public, name), &get(&wire, name));
        }
        let service = |pool: &DescriptorPool| {
            let s = pool
                .get_service_by_name("tasktime.v1.IngestService")
                .expect("IngestService is declared");
            s.methods()
                .map(|m| (m.name().to_owned(), m.is_client_streaming(), m.is_server_streaming()))
                .collect::<Vec<_>>()
        };
        assert_eq!(service(&public), service(&wire), "IngestService's methods differ");
    }

    #[test]
    fn the_check_catches_a_field_that_differs() {
        // The check above must be able to fail: a label value of another type.
        let (public, _) = pools();
        let event = public.get_message_by_name("tasktime.v1.TaskEvent").expect("declared");
        let outcome_is_varint = public.get_message_by_name("tasktime.v1.Finish").expect("declared");
        let result = std::panic::catch_unwind(|| assert_same_on_the_wire(&event, &outcome_is_varint));
        assert!(result.is_err(), "TaskEvent passed as Finish");
    }

    fn public_event() -> impl Strategy<Value = pb::TaskEvent> {
        let kind = prop_oneof![
            Just(pb::task_event::Kind::Start(pb::Start {})),
            (0..4i32).prop_map(|outcome| pb::task_event::Kind::Finish(pb::Finish { outcome })),
            (0..1_000_000i64, 0..4i32).prop_map(|(s, outcome)| pb::task_event::Kind::Completed(pb::Completed {
                duration: Some(prost_types::Duration { seconds: s, nanos: 7 }),
                outcome,
            })),
        ];
        (
            "[a-z0-9._-]{0,12}",
            "\\PC{0,40}",
            proptest::option::of((0..2_000_000_000i64, 0..1_000_000_000i32)),
            proptest::collection::btree_map("[a-z_]{1,8}", "\\PC{0,12}", 0..5),
            proptest::option::of(kind),
        )
            .prop_map(|(task, instance_id, at, labels, kind)| pb::TaskEvent {
                task,
                instance_id,
                at: at.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
                labels,
                kind,
            })
    }

    /// What prost makes of an event's bytes, in the parser's terms: the label entries
    /// listed (the parser keeps them as the bytes they are sent in).
    type Fields = (
        Vec<u8>,
        Vec<u8>,
        Option<prost_types::Timestamp>,
        Vec<Vec<u8>>,
        Option<wire_task_event::Kind>,
    );

    fn parsed(bytes: &[u8]) -> Result<Fields, DecodeError> {
        let e = WireEvent::parse(bytes)?;
        let labels = e
            .label_entries()
            .map(|l| l.map(<[u8]>::to_vec))
            .collect::<Result<_, _>>()?;
        Ok((e.task.to_vec(), e.instance_id.to_vec(), e.at, labels, e.kind))
    }

    fn decoded_by_prost(bytes: &[u8]) -> Result<Fields, DecodeError> {
        let e = WireTaskEvent::decode(bytes)?;
        Ok((
            e.task.to_vec(),
            e.instance_id.to_vec(),
            e.at,
            e.labels.iter().map(|l| l.to_vec()).collect(),
            e.kind,
        ))
    }

    /// Bytes near an encoded event: cut short, with a byte changed, with fields sent
    /// again or unknown fields added (each a protobuf key and value).
    fn mangled_event() -> impl Strategy<Value = Vec<u8>> {
        let extra_field = prop_oneof![
            // A field of the event sent again, or an unknown one, of any wire type.
            (1u32..16, 0u8..6, proptest::collection::vec(any::<u8>(), 0..12)).prop_map(|(tag, wire_type, value)| {
                let mut out = Vec::new();
                prost::encoding::encode_varint(u64::from(tag << 3 | u32::from(wire_type)), &mut out);
                if wire_type == 2 {
                    prost::encoding::encode_varint(value.len() as u64, &mut out);
                }
                out.extend(value);
                out
            }),
            public_event().prop_map(|e| e.encode_to_vec()),
            // `at` again with one of its fields: prost merges it into the one sent.
            (any::<bool>(), 1..1_000i32).prop_map(|(seconds, n)| {
                let at = if seconds {
                    prost_types::Timestamp {
                        seconds: n.into(),
                        nanos: 0,
                    }
                } else {
                    prost_types::Timestamp { seconds: 0, nanos: n }
                };
                let mut out = Vec::new();
                prost::encoding::message::encode(AT, &at, &mut out);
                out
            }),
        ];
        (
            public_event(),
            proptest::collection::vec(extra_field, 0..3),
            any::<prop::sample::Index>(),
            proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
            any::<bool>(),
        )
            .prop_map(|(e, extra, cut, flip, cut_it)| {
                let mut bytes = e.encode_to_vec();
                for x in extra {
                    bytes.extend(x);
                }
                if let Some((at, to)) = flip {
                    if !bytes.is_empty() {
                        let i = at.index(bytes.len());
                        bytes[i] = to;
                    }
                }
                if cut_it {
                    bytes.truncate(cut.index(bytes.len() + 1));
                }
                bytes
            })
    }

    proptest! {
        #[test]
        fn a_public_request_decodes_to_the_same_fields(events in proptest::collection::vec(public_event(), 0..6)) {
            let request = pb::RecordRequest { events: events.clone() };
            let encoded = request.encode_to_vec();
            let wire = WireRecordRequest::decode(encoded.as_slice()).unwrap();
            prop_assert_eq!(wire.len(), events.len());
            prop_assert_eq!(wire.encode_to_vec(), encoded, "its bytes are the request's");
            for (bytes, p) in wire.events().zip(&events) {
                let w = WireEvent::parse(bytes).unwrap();
                prop_assert_eq!(w.task, p.task.as_bytes());
                prop_assert_eq!(w.instance_id, p.instance_id.as_bytes());
                prop_assert_eq!(&w.at, &p.at);
                let labels: BTreeMap<String, String> = w
                    .label_entries()
                    .map(|entry| {
                        let l = WireLabel::decode(entry.unwrap()).unwrap();
                        (String::from_utf8(l.key.to_vec()).unwrap(), String::from_utf8(l.value.to_vec()).unwrap())
                    })
                    .collect();
                prop_assert_eq!(&labels, &p.labels);
                let kind = w.kind.map(|k| match k {
                    wire_task_event::Kind::Start(s) => pb::task_event::Kind::Start(s),
                    wire_task_event::Kind::Finish(f) => pb::task_event::Kind::Finish(f),
                    wire_task_event::Kind::Completed(c) => pb::task_event::Kind::Completed(c),
                });
                prop_assert_eq!(&kind, &p.kind);
            }
        }

        /// The parser and prost agree on any bytes near an event: the same fields, or
        /// both fail.
        #[test]
        fn an_event_parses_as_prost_decodes_it(bytes in mangled_event()) {
            let ours = parsed(&bytes);
            let prost = decoded_by_prost(&bytes);
            match (&ours, &prost) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                _ => prop_assert!(false, "parser {:?}, prost {:?}", ours, prost),
            }
        }

        /// A request indexes as prost decodes it: the same events, or both fail; and
        /// merging one into another is their concatenation.
        #[test]
        fn a_request_indexes_as_prost_decodes_it(
            events in proptest::collection::vec(mangled_event(), 0..4),
            noise in proptest::collection::vec(any::<u8>(), 0..3),
        ) {
            let mut raw = Vec::new();
            for e in &events {
                prost::encoding::bytes::encode(EVENTS, e, &mut raw);
            }
            raw.extend(&noise);
            #[derive(Clone, PartialEq, prost::Message)]
            struct Events {
                #[prost(bytes = "vec", repeated, tag = "1")]
                events: Vec<Vec<u8>>,
            }
            let ours = WireRecordRequest::decode(raw.as_slice()).expect("decoding a request never fails");
            match (ours.malformed(), Events::decode(raw.as_slice())) {
                (None, Ok(p)) => {
                    let w = &ours;
                    prop_assert_eq!(w.events().map(<[u8]>::to_vec).collect::<Vec<_>>(), p.events);
                    let mut twice = w.clone();
                    twice.merge(raw.as_slice()).unwrap();
                    prop_assert_eq!(twice.len(), 2 * w.len());
                    let mut field_by_field = WireRecordRequest::default();
                    for e in w.events() {
                        let mut field = Vec::new();
                        prost::encoding::bytes::encode(EVENTS, &e.to_vec(), &mut field);
                        let mut buf = &field[..];
                        let (tag, wire_type) = decode_key(&mut buf).unwrap();
                        field_by_field.merge_field(tag, wire_type, &mut buf, DecodeContext::default()).unwrap();
                    }
                    prop_assert_eq!(field_by_field.events().collect::<Vec<_>>(), w.events().collect::<Vec<_>>());
                }
                (Some(reason), Err(_)) => {
                    prop_assert!(ours.is_empty());
                    prop_assert!(reason.starts_with("the request is not a RecordRequest as protobuf encodes it: the field at byte "), "{}", reason);
                }
                (a, b) => prop_assert!(false, "index {:?}, prost {:?}", a, b),
            }
        }
    }

    #[test]
    fn a_request_that_is_not_a_record_request_says_at_which_byte_it_broke() {
        let mut raw = Vec::new();
        prost::encoding::bytes::encode(EVENTS, &b"\x12\x01a".to_vec(), &mut raw);
        let broken_at = raw.len();
        // An `events` entry whose length runs past the end of the request.
        raw.extend_from_slice(b"\x0a\x40ab");
        let request = WireRecordRequest::decode(raw.as_slice()).expect("decoding a request never fails");
        assert!(request.is_empty());
        let reason = request.malformed().expect("it is malformed");
        assert!(
            reason.starts_with(&format!(
                "the request is not a RecordRequest as protobuf encodes it: the field at byte {broken_at} is broken ("
            )),
            "{reason}"
        );
        // The first field alone is a request of one event.
        let whole = WireRecordRequest::decode(&raw[..broken_at]).unwrap();
        assert_eq!((whole.malformed(), whole.len()), (None, 1));
    }

    #[test]
    fn the_labels_are_the_bytes_from_the_first_entry_to_the_end_of_the_last() {
        let entry = |k: &str| {
            WireLabel {
                key: k.as_bytes().to_vec().into(),
                value: Bytes::from_static(b"v"),
            }
            .encode_to_vec()
        };
        let mut bytes = Vec::new();
        prost::encoding::bytes::encode(INSTANCE_ID, &b"id".to_vec(), &mut bytes);
        let first = bytes.len();
        prost::encoding::bytes::encode(LABELS, &entry("a"), &mut bytes);
        prost::encoding::bytes::encode(TASK, &b"t".to_vec(), &mut bytes);
        prost::encoding::bytes::encode(LABELS, &entry("b"), &mut bytes);
        let end = bytes.len();
        prost::encoding::message::encode(11, &pb::Finish { outcome: 1 }, &mut bytes);
        let e = WireEvent::parse(&bytes).unwrap();
        assert_eq!(e.labels, &bytes[first..end]);
        assert_eq!(e.task, b"t");
        assert_eq!(
            e.label_entries().map(Result::unwrap).collect::<Vec<_>>(),
            vec![entry("a").as_slice(), entry("b").as_slice()],
            "the task between them is skipped"
        );
        assert!(WireEvent::parse(&[]).unwrap().labels.is_empty());
    }
}
