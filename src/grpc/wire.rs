//! How the server decodes `IngestService` requests: `proto-server/ingest_wire.proto`,
//! the same bytes on the wire as the public `RecordRequest`, decoded cheaper.
//!
//! Decoding the public message builds, for every event, a map of owned strings for its
//! labels (and drops it again once the labels are checked): in a stream of completed
//! events that was a third of the service's CPU. Here the strings are `Bytes` slices
//! of the request and the labels stay the list of entries they are on the wire, each
//! still encoded (one slice per label, not a message of two); the server decodes and
//! checks them ([`crate::grpc::convert::event`]) once per distinct set in a request
//! ([`crate::grpc::convert::RequestCache`]).
//!
//! Nothing outside the server sees these types: clients, reflection and the docs use
//! [`crate::pb`].

#![allow(missing_docs, unreachable_pub, missing_debug_implementations, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/wire/tasktime.v1.rs"));

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

    proptest! {
        #[test]
        fn a_public_request_decodes_to_the_same_fields(events in proptest::collection::vec(public_event(), 0..6)) {
            let request = pb::RecordRequest { events: events.clone() };
            let wire = WireRecordRequest::decode(request.encode_to_vec().as_slice()).unwrap();
            prop_assert_eq!(wire.events.len(), events.len());
            for (w, p) in wire.events.iter().zip(&events) {
                prop_assert_eq!(&w.task[..], p.task.as_bytes());
                prop_assert_eq!(&w.instance_id[..], p.instance_id.as_bytes());
                prop_assert_eq!(&w.at, &p.at);
                let labels: BTreeMap<String, String> = w
                    .labels
                    .iter()
                    .map(|entry| {
                        let l = WireLabel::decode(entry.clone()).unwrap();
                        (String::from_utf8(l.key.to_vec()).unwrap(), String::from_utf8(l.value.to_vec()).unwrap())
                    })
                    .collect();
                prop_assert_eq!(&labels, &p.labels);
                let kind = w.kind.clone().map(|k| match k {
                    wire_task_event::Kind::Start(s) => pb::task_event::Kind::Start(s),
                    wire_task_event::Kind::Finish(f) => pb::task_event::Kind::Finish(f),
                    wire_task_event::Kind::Completed(c) => pb::task_event::Kind::Completed(c),
                });
                prop_assert_eq!(&kind, &p.kind);
            }
        }
    }

    #[test]
    fn a_key_sent_twice_arrives_twice_in_order() {
        // A map decoder keeps the last; the wire keeps both, and the server keeps the last
        // (see `convert::tests`). Two entries for one key, as another client may send them.
        let entry = |k: &str, v: &str| {
            WireLabel {
                key: k.as_bytes().to_vec().into(),
                value: v.as_bytes().to_vec().into(),
            }
            .encode_to_vec()
            .into()
        };
        let sent = WireTaskEvent {
            labels: vec![entry("release", "1"), entry("release", "2")],
            ..Default::default()
        };
        let public = pb::TaskEvent::decode(sent.encode_to_vec().as_slice()).unwrap();
        assert_eq!(public.labels.get("release").map(String::as_str), Some("2"));
        let wire = WireTaskEvent::decode(sent.encode_to_vec().as_slice()).unwrap();
        assert_eq!(wire.labels, sent.labels);
    }
}
