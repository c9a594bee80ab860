//! `tasktime record`: sends events from JSON lines, one `TaskEvent` per line in the
//! proto JSON mapping (`{"task":"checkout","instanceId":"a1","start":{}}`), in batches,
//! retrying retryable failures with the same events (safe: duplicates are recognised).

use std::io::BufRead as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

use super::client;
use crate::pb;
use crate::pb::ingest_service_client::IngestServiceClient;

/// Attempts per batch before giving up on retryable failures.
const MAX_ATTEMPTS: u32 = 8;

/// Flags of `tasktime record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// File of JSON lines; `-` or nothing reads standard input.
    pub file: Option<PathBuf>,
    /// The tasktime server.
    #[arg(long, env = "TASKTIME_SERVER", default_value = super::DEFAULT_SERVER)]
    pub server: String,
    /// Events per Record call.
    #[arg(long, env = "TASKTIME_BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: usize,
}

/// The descriptor of `tasktime.v1.TaskEvent`, for the JSON mapping.
///
/// # Errors
/// Only if the embedded descriptor set is broken (a build defect).
pub fn task_event_descriptor() -> anyhow::Result<MessageDescriptor> {
    let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).context("embedded descriptor set")?;
    pool.get_message_by_name("tasktime.v1.TaskEvent")
        .context("tasktime.v1.TaskEvent is missing from the descriptor set")
}

/// Parses one JSON line into a `TaskEvent`.
///
/// # Errors
/// When the line is not a TaskEvent in the proto JSON mapping; the message says why.
pub fn parse_line(descriptor: &MessageDescriptor, line: &str) -> anyhow::Result<pb::TaskEvent> {
    let mut de = serde_json::Deserializer::from_str(line);
    let message = DynamicMessage::deserialize(descriptor.clone(), &mut de)?;
    de.end()?;
    Ok(message.transcode_to::<pb::TaskEvent>()?)
}

/// Totals over a whole run.
#[derive(Debug, Default)]
struct Totals {
    sent: u64,
    accepted: u64,
    duplicates: u64,
    over_range: u64,
    rejected: Vec<(usize, String)>,
}

/// Reads, sends and reports; `Ok(false)` when any line was rejected (the rest were sent).
///
/// # Errors
/// Unreadable input, no server, or a batch that kept failing.
pub async fn run(args: RecordArgs) -> anyhow::Result<bool> {
    if args.batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    let descriptor = task_event_descriptor()?;
    let reader: Box<dyn std::io::BufRead> = match &args.file {
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
        Some(p) if p.as_os_str() == "-" => Box::new(std::io::BufReader::new(std::io::stdin())),
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        )),
    };
    let mut client = IngestServiceClient::new(client::connect(&args.server).await?);
    let mut totals = Totals::default();
    let mut batch: Vec<pb::TaskEvent> = Vec::with_capacity(args.batch_size);
    let mut lines: Vec<usize> = Vec::with_capacity(args.batch_size);
    for (n, line) in reader.lines().enumerate() {
        let line_no = n + 1;
        let line = line.with_context(|| format!("cannot read line {line_no}"))?;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match parse_line(&descriptor, trimmed) {
            Ok(event) => {
                batch.push(event);
                lines.push(line_no);
            }
            Err(e) => totals.rejected.push((line_no, format!("not a TaskEvent: {e}"))),
        }
        if batch.len() == args.batch_size {
            send(&mut client, &mut batch, &mut lines, &mut totals).await?;
        }
    }
    if !batch.is_empty() {
        send(&mut client, &mut batch, &mut lines, &mut totals).await?;
    }
    println!(
        "sent {} events: {} accepted, {} duplicates, {} rejected{}",
        totals.sent,
        totals.accepted,
        totals.duplicates,
        totals.rejected.len(),
        if totals.over_range > 0 {
            format!(", {} over range (clamped)", totals.over_range)
        } else {
            String::new()
        }
    );
    totals.rejected.sort();
    for (line, reason) in &totals.rejected {
        println!("  line {line}: {reason}");
    }
    Ok(totals.rejected.is_empty())
}

async fn send(
    client: &mut IngestServiceClient<tonic::transport::Channel>,
    batch: &mut Vec<pb::TaskEvent>,
    lines: &mut Vec<usize>,
    totals: &mut Totals,
) -> anyhow::Result<()> {
    let request = pb::RecordRequest {
        events: std::mem::take(batch),
    };
    let mut attempt = 0;
    let response = loop {
        match client.record(request.clone()).await {
            Ok(r) => break r.into_inner(),
            Err(status) => match client::retry_after(&status, attempt) {
                Some(wait) if attempt + 1 < MAX_ATTEMPTS => {
                    tracing::warn!(code = ?status.code(), message = status.message(), ?wait, "retrying the batch");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => anyhow::bail!(
                    "the server refused the batch: {:?}: {}",
                    status.code(),
                    status.message()
                ),
            },
        }
    };
    totals.sent += request.events.len() as u64;
    totals.accepted += u64::from(response.accepted);
    totals.duplicates += u64::from(response.duplicates);
    totals.over_range += u64::from(response.over_range);
    for r in response.rejected {
        let line = lines.get(r.index as usize).copied().unwrap_or(0);
        totals.rejected.push((line, r.reason));
    }
    lines.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_use_the_proto_json_mapping() {
        let d = task_event_descriptor().unwrap();
        let e = parse_line(
            &d,
            r#"{"task":"checkout","instanceId":"a1","at":"2026-11-25T10:00:00Z","labels":{"release":"2.4.0"},"completed":{"duration":"1.5s","outcome":"OUTCOME_SUCCEEDED"}}"#,
        )
        .unwrap();
        assert_eq!(e.task, "checkout");
        assert_eq!(e.instance_id, "a1");
        let Some(pb::task_event::Kind::Completed(c)) = e.kind else {
            panic!("completed")
        };
        assert_eq!(
            c.duration,
            Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        assert_eq!(c.outcome, pb::Outcome::Succeeded as i32);
        // The proto field names work too.
        assert!(parse_line(&d, r#"{"task":"x","instance_id":"b","start":{}}"#).is_ok());
    }

    #[test]
    fn a_bad_line_says_what_is_wrong() {
        let d = task_event_descriptor().unwrap();
        let err = parse_line(&d, r#"{"task":"x","instanceId":"b","finish":{"outcome":"DONE"}}"#).unwrap_err();
        assert!(err.to_string().contains("DONE"), "{err}");
        assert!(parse_line(&d, "{not json").is_err());
    }
}
