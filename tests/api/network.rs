//! What generic gRPC tooling sees with no .proto file: `grpc.health.v1` (Kubernetes
//! probes) and server reflection v1 and v1alpha (grpcurl, Postman).

use std::time::Duration;

use prost::Message as _;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::{v1, v1alpha};

use crate::helpers::{Backend, spawn_app};

/// Every test here is over in well under this.
const BOUND: Duration = Duration::from_secs(30);

const OUR_SERVICES: [&str; 4] = [
    "tasktime.v1.IngestService",
    "tasktime.v1.QueryService",
    "tasktime.v1.GateService",
    "grpc.health.v1.Health",
];

crate::both_stores!(health_answers_serving_for_liveness_and_every_readiness_service);

/// The names a Kubernetes probe or a load balancer may ask about: liveness (`""`) and the
/// readiness of every tasktime service, the gate included.
const HEALTH_NAMES: [&str; 4] = [
    "",
    "tasktime.v1.IngestService",
    "tasktime.v1.QueryService",
    "tasktime.v1.GateService",
];

async fn health_answers_serving_for_liveness_and_every_readiness_service(backend: Backend) {
    tokio::time::timeout(BOUND, async {
        let app = spawn_app(backend).await;
        let mut health = HealthClient::new(app.channel.clone());
        // The service's own list, so a service added there is not forgotten here.
        for service in tasktime::app::READINESS_SERVICES {
            assert!(HEALTH_NAMES.contains(&service), "{service} is checked here too");
        }
        for service in HEALTH_NAMES {
            let status = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap_or_else(|e| panic!("Check({service:?}) failed: {e}"))
                .into_inner()
                .status;
            assert_eq!(
                status,
                ServingStatus::Serving as i32,
                "{backend:?}: Check({service:?}) should be SERVING"
            );
        }
        let unknown = health
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .expect_err("an unknown service is NOT_FOUND, as grpc.health.v1 says");
        assert_eq!(unknown.code(), tonic::Code::NotFound);
        app.stop().await;
    })
    .await
    .expect("test finished in time");
}

/// What a reflection client asks; the same for v1 and v1alpha.
enum Ask {
    ListServices,
    FileContainingSymbol(&'static str),
    FileByFilename(String),
}

/// What it gets back, in a shape common to both versions.
enum Answer {
    Services(Vec<String>),
    Files(Vec<prost_types::FileDescriptorProto>),
    Error(i32, String),
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Services(s) => write!(f, "services {s:?}"),
            Answer::Files(files) => write!(f, "files {:?}", files.iter().map(|x| x.name()).collect::<Vec<_>>()),
            Answer::Error(code, message) => write!(f, "error {code}: {message}"),
        }
    }
}

fn decode_files(raw: Vec<Vec<u8>>) -> Vec<prost_types::FileDescriptorProto> {
    raw.into_iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("a FileDescriptorProto"))
        .collect()
}

/// The two reflection versions have identical messages in different packages; this
/// writes the client side once per version and the checks once.
macro_rules! reflection_client {
    ($name:ident, $version:ident) => {
        async fn $name(channel: tonic::transport::Channel, ask: Ask) -> Answer {
            use $version::ServerReflectionRequest;
            use $version::server_reflection_client::ServerReflectionClient;
            use $version::server_reflection_request::MessageRequest;
            use $version::server_reflection_response::MessageResponse;

            let message_request = match ask {
                Ask::ListServices => MessageRequest::ListServices(String::new()),
                Ask::FileContainingSymbol(symbol) => MessageRequest::FileContainingSymbol(symbol.into()),
                Ask::FileByFilename(file) => MessageRequest::FileByFilename(file),
            };
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(message_request),
            };
            let mut answers = ServerReflectionClient::new(channel)
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .expect(concat!("ServerReflectionInfo ", stringify!($version), " opens"))
                .into_inner();
            let answer = answers
                .message()
                .await
                .expect("a reflection answer")
                .expect("one answer per request");
            match answer.message_response.expect("a response") {
                MessageResponse::ListServicesResponse(list) => {
                    Answer::Services(list.service.into_iter().map(|s| s.name).collect())
                }
                MessageResponse::FileDescriptorResponse(files) => {
                    Answer::Files(decode_files(files.file_descriptor_proto))
                }
                MessageResponse::ErrorResponse(e) => Answer::Error(e.error_code, e.error_message),
                other => panic!("unexpected reflection answer: {other:?}"),
            }
        }
    };
}

reflection_client!(ask_v1, v1);
reflection_client!(ask_v1alpha, v1alpha);

/// Lists the services, fetches the file declaring IngestService, and resolves its
/// imports by file name the way grpcurl does.
async fn check_reflection<F, Fut>(version: &str, ask: F)
where
    F: Fn(Ask) -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    let services = match ask(Ask::ListServices).await {
        Answer::Services(s) => s,
        other => panic!("reflection {version}: ListServices answered {other}"),
    };
    for service in OUR_SERVICES {
        assert!(
            services.iter().any(|s| s == service),
            "reflection {version} lists {service}; it listed {services:?}"
        );
    }

    let files = match ask(Ask::FileContainingSymbol("tasktime.v1.IngestService")).await {
        Answer::Files(f) => f,
        other => panic!("reflection {version}: FileContainingSymbol answered {other}"),
    };
    let declaring = files
        .iter()
        .find(|f| f.package() == "tasktime.v1" && f.service.iter().any(|s| s.name() == "IngestService"))
        .unwrap_or_else(|| {
            panic!(
                "reflection {version}: no returned file declares tasktime.v1.IngestService; got {:?}",
                files.iter().map(|f| f.name()).collect::<Vec<_>>()
            )
        });
    let methods: Vec<&str> = declaring
        .service
        .iter()
        .find(|s| s.name() == "IngestService")
        .map(|s| s.method.iter().map(|m| m.name()).collect())
        .unwrap_or_default();
    assert!(
        methods.contains(&"Record") && methods.contains(&"RecordStream"),
        "reflection {version}: IngestService has Record and RecordStream; got {methods:?}"
    );

    // A client with no .proto needs every import too (Timestamp, Duration, ...): each is
    // either sent along or answered by file name.
    for dep in &declaring.dependency {
        if files.iter().any(|f| f.name() == dep) {
            continue;
        }
        match ask(Ask::FileByFilename(dep.clone())).await {
            Answer::Files(f) => assert!(
                f.iter().any(|f| f.name() == dep),
                "reflection {version}: FileByFilename({dep}) did not return {dep}"
            ),
            other => panic!(
                "reflection {version}: the import {dep} of {} cannot be resolved: {other}",
                declaring.name()
            ),
        }
    }
}

#[tokio::test]
async fn reflection_v1_lists_the_services_and_describes_ingest() {
    tokio::time::timeout(BOUND, async {
        let app = spawn_app(Backend::Memory).await;
        let channel = app.channel.clone();
        check_reflection("v1", |ask| ask_v1(channel.clone(), ask)).await;
        app.stop().await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_services_and_describes_ingest() {
    tokio::time::timeout(BOUND, async {
        let app = spawn_app(Backend::Memory).await;
        let channel = app.channel.clone();
        check_reflection("v1alpha", |ask| ask_v1alpha(channel.clone(), ask)).await;
        app.stop().await;
    })
    .await
    .expect("test finished in time");
}
