//! `tasktime gate`: asks the server for a release gate's verdict, prints it (a table,
//! the proto JSON mapping, JUnit XML or Markdown) and exits with it: 0 pass, 1 fail,
//! 3 inconclusive (or as `--inconclusive-as` says); errors exit 2 (see `main.rs`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};

use super::client::{self, fmt_time, parse_time};
use super::stats::{human, parse_label};
use crate::grpc::convert::micros_timestamp;
use crate::pb;
use crate::pb::gate_service_client::GateServiceClient;

/// Exit code of a passed gate.
pub const EXIT_PASS: u8 = 0;
/// Exit code of a failed gate.
pub const EXIT_FAIL: u8 = 1;
/// Exit code of a usage or connection error (and of every other error; see `main.rs`).
pub const EXIT_ERROR: u8 = 2;
/// Exit code of an inconclusive gate, unless `--inconclusive-as` maps it.
pub const EXIT_INCONCLUSIVE: u8 = 3;

/// Attempts of the RPC while the server answers with a retryable status.
const MAX_ATTEMPTS: u32 = 5;

/// How the verdict is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table for people.
    Text,
    /// The proto JSON mapping of `GateVerdict`.
    Json,
    /// A JUnit XML test suite: one test case per task and check.
    Junit,
    /// A Markdown table, e.g. for `$GITHUB_STEP_SUMMARY`.
    Markdown,
}

/// What an INCONCLUSIVE verdict exits as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InconclusiveAs {
    /// Exit 0, as a pass.
    Pass,
    /// Exit 1, as a failure.
    Fail,
}

/// An allowed increase of one percentile: `p90=10%` or `p99=500ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaxIncrease {
    /// The percentile, e.g. 90.
    pub percentile: f64,
    /// How much it may rise.
    pub allowance: Allowance,
}

/// A relative or an absolute allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Allowance {
    /// `candidate / baseline − 1`, e.g. 0.10 for `10%`.
    Ratio(f64),
    /// An absolute increase, e.g. `500ms`.
    Absolute(Duration),
}

/// Flags of `tasktime gate`.
#[derive(Debug, Args)]
pub struct GateArgs {
    /// Task to judge (repeatable or comma-separated); the gate covers them all.
    #[arg(long = "task", env = "TASKTIME_TASK", value_delimiter = ',', required = true)]
    pub tasks: Vec<String>,
    /// Label the baseline's series must carry (repeatable): --baseline release=2.3.1
    #[arg(long, env = "TASKTIME_GATE_BASELINE", value_parser = parse_label)]
    pub baseline: Vec<(String, String)>,
    /// Label the candidate's series must carry (repeatable): --candidate release=2.4.0
    #[arg(long, env = "TASKTIME_GATE_CANDIDATE", value_parser = parse_label)]
    pub candidate: Vec<(String, String)>,
    /// Start of the baseline window: RFC 3339, `now`, or a duration ago (`7d`). Default: 24 h before its end.
    #[arg(long, env = "TASKTIME_GATE_BASELINE_FROM")]
    pub baseline_from: Option<String>,
    /// End of the baseline window (exclusive), same forms. Default: now.
    #[arg(long, env = "TASKTIME_GATE_BASELINE_TO")]
    pub baseline_to: Option<String>,
    /// Start of the candidate window, same forms. Default: 24 h before its end.
    #[arg(long, env = "TASKTIME_GATE_CANDIDATE_FROM")]
    pub candidate_from: Option<String>,
    /// End of the candidate window (exclusive), same forms. Default: now.
    #[arg(long, env = "TASKTIME_GATE_CANDIDATE_TO")]
    pub candidate_to: Option<String>,
    /// Largest allowed rise of a duration percentile (repeatable or comma-separated):
    /// relative `p90=10%` or absolute `p99=500ms`; both for one percentile are both checked.
    #[arg(long = "max-increase", env = "TASKTIME_GATE_MAX_INCREASE", value_delimiter = ',', value_parser = parse_max_increase)]
    pub max_increase: Vec<MaxIncrease>,
    /// Largest allowed drop of the success rate, in percentage points: 1pp.
    #[arg(long, env = "TASKTIME_GATE_MAX_SUCCESS_DROP", value_parser = parse_pp)]
    pub max_success_drop: Option<f64>,
    /// Largest allowed rise of the abandonment rate, in percentage points: 2pp.
    #[arg(long, env = "TASKTIME_GATE_MAX_ABANDONMENT_RISE", value_parser = parse_pp)]
    pub max_abandonment_rise: Option<f64>,
    /// Fewest samples per arm for a check to PASS or FAIL. Default (server): 100.
    #[arg(long, env = "TASKTIME_GATE_MIN_SAMPLES", value_parser = clap::value_parser!(u64).range(1..))]
    pub min_samples: Option<u64>,
    /// Confidence of each one-sided bound, in (0.5, 1): 0.95 or 95%. Default (server): 0.95.
    #[arg(long, env = "TASKTIME_GATE_CONFIDENCE", value_parser = parse_confidence)]
    pub confidence: Option<f64>,
    /// Output format.
    #[arg(long, env = "TASKTIME_GATE_FORMAT", value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Exit code of an INCONCLUSIVE verdict: as a pass (0) or a failure (1). Default: 3.
    #[arg(long, env = "TASKTIME_GATE_INCONCLUSIVE_AS", value_enum)]
    pub inconclusive_as: Option<InconclusiveAs>,
    /// The tasktime server.
    #[arg(long, env = "TASKTIME_SERVER", default_value = super::DEFAULT_SERVER)]
    pub server: String,
}

/// Runs the gate and returns the process exit code its verdict maps to.
///
/// # Errors
/// Bad flags, no server, an error from the server (e.g. INVALID_ARGUMENT naming the bad
/// field): all exit 2.
pub async fn run(args: GateArgs) -> anyhow::Result<u8> {
    let request = request(&args)?;
    let mut client = GateServiceClient::new(client::connect(&args.server).await?);
    let mut attempt = 0;
    let verdict = loop {
        match client.evaluate_gate(request.clone()).await {
            Ok(response) => break response.into_inner(),
            Err(status) => match client::retry_after(&status, attempt) {
                Some(wait) if attempt + 1 < MAX_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
                _ => anyhow::bail!(
                    "the server could not evaluate the gate: {:?}: {}",
                    status.code(),
                    status.message()
                ),
            },
        }
    };
    let code = exit_code(verdict.verdict(), args.inconclusive_as)?;
    let out = match args.format {
        Format::Text => text(&verdict),
        Format::Json => format!("{}\n", to_json(&verdict)?),
        Format::Junit => junit(&verdict),
        Format::Markdown => markdown(&verdict),
    };
    print!("{out}");
    Ok(code)
}

/// The exit code of a verdict.
///
/// # Errors
/// When the server sent no verdict (VERDICT_UNSPECIFIED).
pub fn exit_code(verdict: pb::Verdict, inconclusive_as: Option<InconclusiveAs>) -> anyhow::Result<u8> {
    Ok(match (verdict, inconclusive_as) {
        (pb::Verdict::Pass, _) | (pb::Verdict::Inconclusive, Some(InconclusiveAs::Pass)) => EXIT_PASS,
        (pb::Verdict::Fail, _) | (pb::Verdict::Inconclusive, Some(InconclusiveAs::Fail)) => EXIT_FAIL,
        (pb::Verdict::Inconclusive, None) => EXIT_INCONCLUSIVE,
        (pb::Verdict::Unspecified, _) => anyhow::bail!("the server answered without a verdict"),
    })
}

/// The request the flags describe.
///
/// # Errors
/// A time flag that is not a time, or two allowances of one kind for one percentile.
pub fn request(args: &GateArgs) -> anyhow::Result<pb::EvaluateGateRequest> {
    let time = |flag: &str, value: &Option<String>| -> anyhow::Result<Option<prost_types::Timestamp>> {
        Ok(value
            .as_deref()
            .map(|t| parse_time(flag, t))
            .transpose()?
            .map(micros_timestamp))
    };
    let baseline = pb::Selector {
        filter: args.baseline.iter().cloned().collect(),
        from: time("--baseline-from", &args.baseline_from)?,
        to: time("--baseline-to", &args.baseline_to)?,
    };
    let candidate = pb::Selector {
        filter: args.candidate.iter().cloned().collect(),
        from: time("--candidate-from", &args.candidate_from)?,
        to: time("--candidate-to", &args.candidate_to)?,
    };
    Ok(pb::EvaluateGateRequest {
        tasks: args.tasks.clone(),
        baseline: Some(baseline),
        candidate: Some(candidate),
        percentiles: percentile_criteria(&args.max_increase)?,
        max_success_drop_pp: args.max_success_drop,
        max_abandonment_rise_pp: args.max_abandonment_rise,
        min_samples: args.min_samples.unwrap_or(0),
        confidence: args.confidence.unwrap_or(0.0),
    })
}

/// Merges `--max-increase` flags into one criterion per percentile, in flag order.
///
/// # Errors
/// When one percentile gets two relative or two absolute allowances.
pub fn percentile_criteria(flags: &[MaxIncrease]) -> anyhow::Result<Vec<pb::PercentileCriterion>> {
    let mut out: Vec<pb::PercentileCriterion> = Vec::new();
    for flag in flags {
        let index = match out.iter().position(|c| c.percentile == flag.percentile) {
            Some(i) => i,
            None => {
                out.push(pb::PercentileCriterion {
                    percentile: flag.percentile,
                    ..Default::default()
                });
                out.len() - 1
            }
        };
        let c = &mut out[index];
        let p = flag.percentile;
        match flag.allowance {
            Allowance::Ratio(r) => {
                if c.max_increase_ratio.is_some() {
                    anyhow::bail!("--max-increase gives p{p} two relative allowances; give one");
                }
                c.max_increase_ratio = Some(r);
            }
            Allowance::Absolute(d) => {
                if c.max_increase.is_some() {
                    anyhow::bail!("--max-increase gives p{p} two absolute allowances; give one");
                }
                c.max_increase = Some(prost_types::Duration {
                    seconds: i64::try_from(d.as_secs()).context("--max-increase duration is too long")?,
                    nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
                });
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- flag parsers

/// Parses `p90=10%` (relative) or `p99=500ms` (absolute); `90=...` and `P90=...` work too.
///
/// # Errors
/// When it is not `pNN=<percent or duration>` with NN in (0, 100).
pub fn parse_max_increase(text: &str) -> Result<MaxIncrease, String> {
    let usage = "use p90=10% (relative) or p99=500ms (absolute)";
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not pNN=<allowance>: {usage}"))?;
    let key = key.trim();
    let number = key.strip_prefix(['p', 'P']).unwrap_or(key);
    let percentile: f64 = number
        .parse()
        .map_err(|_| format!("`{key}` is not a percentile like p90: {usage}"))?;
    if !(percentile > 0.0 && percentile < 100.0) {
        return Err(format!("percentile {percentile} in `{text}` is outside (0, 100)"));
    }
    let value = value.trim();
    let value = value.strip_prefix('+').unwrap_or(value);
    let allowance = if let Some(percent) = value.strip_suffix('%') {
        let percent: f64 = percent
            .trim()
            .parse()
            .map_err(|_| format!("`{value}` is not a percentage like 10%: {usage}"))?;
        if !(percent.is_finite() && percent >= 0.0) {
            return Err(format!("`{value}` must be a percentage of at least 0%"));
        }
        Allowance::Ratio(percent / 100.0)
    } else {
        Allowance::Absolute(parse_allowed_duration(value).map_err(|e| format!("{e}: {usage}"))?)
    };
    Ok(MaxIncrease { percentile, allowance })
}

/// A duration like `500ms`, `1.5s`, `2m` or `1m 30s`.
fn parse_allowed_duration(text: &str) -> Result<Duration, String> {
    if let Ok(d) = humantime::parse_duration(text) {
        return Ok(d);
    }
    // humantime has no fractions: `1.5s`, `0.25 s`.
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds_per_unit = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("`{text}` is neither a percentage nor a duration")),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is neither a percentage nor a duration"))?;
    Duration::try_from_secs_f64(n * seconds_per_unit).map_err(|_| format!("`{text}` is not a usable duration"))
}

/// Parses percentage points: `1pp`, `0.5 pp` or `1`.
///
/// # Errors
/// When it is not a number of percentage points in [0, 100]; `1%` is refused as
/// ambiguous (relative or absolute?).
pub fn parse_pp(text: &str) -> Result<f64, String> {
    let t = text.trim();
    if t.ends_with('%') {
        return Err(format!(
            "`{text}` is ambiguous: rates are compared in percentage points; write e.g. 1pp"
        ));
    }
    let t = t.strip_suffix("pp").unwrap_or(t).trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    let value: f64 = t
        .parse()
        .map_err(|_| format!("`{text}` is not percentage points like 1pp"))?;
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("`{text}` must be between 0pp and 100pp"));
    }
    Ok(value)
}

/// Parses a confidence: `0.95` or `95%`.
///
/// # Errors
/// When it is not in (0.5, 1).
pub fn parse_confidence(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let value = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("`{text}` is not a confidence like 0.95 or 95%"))?;
    if !(value > 0.5 && value < 1.0) {
        return Err(format!("confidence `{text}` must be between 0.5 and 1 (exclusive)"));
    }
    Ok(value)
}

// ---------------------------------------------------------------- output

/// The proto JSON mapping of a GateVerdict.
///
/// # Errors
/// Only if the embedded descriptor set is broken.
pub fn to_json(verdict: &pb::GateVerdict) -> anyhow::Result<String> {
    let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).context("embedded descriptor set")?;
    let desc = pool
        .get_message_by_name("tasktime.v1.GateVerdict")
        .context("GateVerdict descriptor")?;
    let message = DynamicMessage::decode(desc, verdict.encode_to_vec().as_slice())?;
    let options = prost_reflect::SerializeOptions::new().skip_default_fields(false);
    let mut out = serde_json::Serializer::pretty(Vec::new());
    message.serialize_with_options(&mut out, &options)?;
    Ok(String::from_utf8(out.into_inner())?)
}

fn verdict_word(v: pb::Verdict) -> &'static str {
    match v {
        pb::Verdict::Pass => "PASS",
        pb::Verdict::Fail => "FAIL",
        pb::Verdict::Inconclusive => "INCONCLUSIVE",
        pb::Verdict::Unspecified => "UNSPECIFIED",
    }
}

/// The check's name, unique within a task: `p90 duration (relative)`, `success rate`.
fn check_name(c: &pb::CriterionResult) -> String {
    match c.kind() {
        pb::CriterionKind::PercentileRelative => format!("{} (relative)", c.name),
        pb::CriterionKind::PercentileAbsolute => format!("{} (absolute)", c.name),
        _ => c.name.clone(),
    }
}

/// A signed duration for people: `+1.2s`, `-850ms`.
fn signed_seconds(s: f64) -> String {
    let sign = if s < 0.0 { "-" } else { "+" };
    format!("{sign}{}", human(s.abs()))
}

/// A signed change in its unit: `+24.8%`, `-1.2s`, `+0.35pp`, `+inf`.
fn change_text(unit: &str, x: f64) -> String {
    if x.is_infinite() {
        return if x > 0.0 { "+inf" } else { "-inf" }.to_owned();
    }
    match unit {
        "ratio" => format!("{:+.1}%", 100.0 * x),
        "s" => signed_seconds(x),
        "pp" => format!("{x:+.2}pp"),
        _ => format!("{x:+}"),
    }
}

fn allowance_text(unit: &str, a: f64) -> String {
    match unit {
        "ratio" => format!("+{}%", trim(100.0 * a)),
        "s" => format!("+{}", human(a)),
        "pp" => format!("+{}pp", trim(a)),
        _ => format!("{a}"),
    }
}

/// A number with at most 4 decimals and no trailing zeros.
fn trim(x: f64) -> String {
    format!("{}", (x * 1e4).round() / 1e4)
}

fn value_text(c: &pb::CriterionResult, value: f64, samples: u64) -> String {
    if samples == 0 {
        return "-".into();
    }
    match c.value_unit.as_str() {
        "s" => human(value),
        "%" => format!("{value:.2}%"),
        _ => format!("{value}"),
    }
}

/// The cells of one check: baseline, candidate, change, bounds, allowed, samples.
fn cells(c: &pb::CriterionResult) -> [String; 6] {
    let change = if c.has_change {
        change_text(&c.unit, c.change)
    } else {
        "-".into()
    };
    let bounds = if c.has_interval {
        format!(
            "{} .. {}",
            change_text(&c.unit, c.change_lower),
            change_text(&c.unit, c.change_upper)
        )
    } else {
        "-".into()
    };
    [
        value_text(c, c.baseline_value, c.baseline_samples),
        value_text(c, c.candidate_value, c.candidate_samples),
        change,
        bounds,
        allowance_text(&c.unit, c.allowance),
        format!("{} / {}", c.baseline_samples, c.candidate_samples),
    ]
}

fn arm_text(s: Option<&pb::Selector>) -> String {
    let Some(s) = s else {
        return String::new();
    };
    let filter: BTreeMap<_, _> = s.filter.iter().collect();
    let filter = if filter.is_empty() {
        "every series".to_owned()
    } else {
        filter
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let ts =
        |t: &Option<prost_types::Timestamp>| t.as_ref().map_or_else(String::new, |t| fmt_time(t.seconds * 1_000_000));
    format!("{filter}  {} .. {}", ts(&s.from), ts(&s.to))
}

fn confidence_text(v: &pb::GateVerdict) -> String {
    format!(
        "one-sided {}% bounds; at least {} samples per arm; {SIGN_NOTE}",
        trim(100.0 * v.confidence),
        v.min_samples
    )
}

/// How to read the sign of every change and bound.
const SIGN_NOTE: &str = "+ is worse for customers (slower, less success, more abandonment)";

/// What a task costs or saves customers, in a sentence; `None` without the data.
fn customer_time(t: &pb::TaskVerdict) -> Option<String> {
    if !t.has_customer_hours {
        return None;
    }
    let verb = if t.customer_hours_per_week > 0.0 {
        "lose"
    } else {
        "save"
    };
    Some(format!(
        "customers {verb} {:.1} customer-hours per week (mean {} per task over {} candidate instances)",
        t.customer_hours_per_week.abs(),
        signed_seconds(t.mean_delta_seconds),
        t.candidate_instances
    ))
}

/// The table `tasktime gate` prints by default.
pub fn text(v: &pb::GateVerdict) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "gate        {}", verdict_word(v.verdict()));
    let _ = writeln!(out, "baseline    {}", arm_text(v.baseline.as_ref()));
    let _ = writeln!(out, "candidate   {}", arm_text(v.candidate.as_ref()));
    let _ = writeln!(out, "statistics  {}", confidence_text(v));
    let _ = writeln!(out);
    let mut rows = vec![
        [
            "TASK",
            "CHECK",
            "VERDICT",
            "BASELINE",
            "CANDIDATE",
            "CHANGE",
            "BOUNDS",
            "ALLOWED",
            "SAMPLES",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for c in &v.criteria {
        let mut row = vec![c.task.clone(), check_name(c), verdict_word(c.verdict()).to_owned()];
        row.extend(cells(c));
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell}{}", " ".repeat(w - cell.chars().count())))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    let _ = writeln!(out);
    for t in &v.tasks {
        let _ = writeln!(out, "{}: {}", t.task, verdict_word(t.verdict()));
        for c in v.criteria.iter().filter(|c| c.task == t.task) {
            let _ = writeln!(out, "  {}: {}", check_name(c), c.reason);
        }
        if let Some(time) = customer_time(t) {
            let _ = writeln!(out, "  customer time: {time}");
        }
    }
    out
}

/// Escapes text for XML content and attribute values, dropping characters XML 1.0
/// cannot carry at all (most control characters).
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// A JUnit XML report: one test suite, one test case per task and check; FAIL is a
/// `<failure>`, INCONCLUSIVE is `<skipped>`, and every case carries its reason.
pub fn junit(v: &pb::GateVerdict) -> String {
    let count = |verdict: pb::Verdict| v.criteria.iter().filter(|c| c.verdict() == verdict).count();
    let (tests, failures, skipped) = (
        v.criteria.len(),
        count(pb::Verdict::Fail),
        count(pb::Verdict::Inconclusive),
    );
    let counts = format!(r#"tests="{tests}" failures="{failures}" errors="0" skipped="{skipped}""#);
    let mut out = String::new();
    let _ = writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(out, r#"<testsuites name="tasktime gate" {counts}>"#);
    let _ = writeln!(out, r#"  <testsuite name="tasktime gate" {counts}>"#);
    let _ = writeln!(out, "    <properties>");
    let properties = [
        ("verdict", verdict_word(v.verdict()).to_owned()),
        ("baseline", arm_text(v.baseline.as_ref())),
        ("candidate", arm_text(v.candidate.as_ref())),
        ("statistics", confidence_text(v)),
    ];
    for (name, value) in properties {
        let _ = writeln!(out, r#"      <property name="{name}" value="{}"/>"#, xml_escape(&value));
    }
    let _ = writeln!(out, "    </properties>");
    for c in &v.criteria {
        let [baseline, candidate, change, bounds, allowed, samples] = cells(c);
        let detail = format!(
            "{}\nbaseline {baseline}, candidate {candidate}, change {change}, bounds {bounds}, allowed {allowed}, samples {samples}",
            c.reason
        );
        let _ = write!(
            out,
            r#"    <testcase classname="tasktime.gate.{}" name="{}" time="0""#,
            xml_escape(&c.task),
            xml_escape(&check_name(c))
        );
        match c.verdict() {
            pb::Verdict::Fail => {
                let _ = writeln!(out, ">");
                let _ = writeln!(
                    out,
                    r#"      <failure type="FAIL" message="{}">{}</failure>"#,
                    xml_escape(&c.reason),
                    xml_escape(&detail)
                );
                let _ = writeln!(out, "    </testcase>");
            }
            pb::Verdict::Inconclusive | pb::Verdict::Unspecified => {
                let _ = writeln!(out, ">");
                let _ = writeln!(
                    out,
                    r#"      <skipped message="{}"/>"#,
                    xml_escape(&format!("INCONCLUSIVE: {}", c.reason))
                );
                let _ = writeln!(out, "      <system-out>{}</system-out>", xml_escape(&detail));
                let _ = writeln!(out, "    </testcase>");
            }
            pb::Verdict::Pass => {
                let _ = writeln!(out, ">");
                let _ = writeln!(out, "      <system-out>{}</system-out>", xml_escape(&detail));
                let _ = writeln!(out, "    </testcase>");
            }
        }
    }
    let _ = writeln!(out, "  </testsuite>");
    let _ = writeln!(out, "</testsuites>");
    out
}

/// Escapes text for a Markdown table cell or line: backslash before Markdown and HTML
/// punctuation, newlines as spaces.
pub fn md_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#' | '~' | '&' | '!' => {
                out.push('\\');
                out.push(ch);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn verdict_badge(v: pb::Verdict) -> &'static str {
    match v {
        pb::Verdict::Pass => "✅ PASS",
        pb::Verdict::Fail => "❌ FAIL",
        pb::Verdict::Inconclusive => "⚠️ INCONCLUSIVE",
        pb::Verdict::Unspecified => "UNSPECIFIED",
    }
}

/// A Markdown report for `$GITHUB_STEP_SUMMARY` or a pull-request comment.
pub fn markdown(v: &pb::GateVerdict) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### tasktime gate: {}", verdict_badge(v.verdict()));
    let _ = writeln!(out);
    let _ = writeln!(out, "- baseline: {}", md_escape(&arm_text(v.baseline.as_ref())));
    let _ = writeln!(out, "- candidate: {}", md_escape(&arm_text(v.candidate.as_ref())));
    let _ = writeln!(out, "- {}", md_escape(&confidence_text(v)));
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| task | check | verdict | baseline | candidate | change | bounds | allowed | samples (baseline / candidate) |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---|---:|---:|");
    for c in &v.criteria {
        let mut row = vec![
            md_escape(&c.task),
            md_escape(&check_name(c)),
            verdict_badge(c.verdict()).to_owned(),
        ];
        row.extend(cells(c).iter().map(|cell| md_escape(cell)));
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    let _ = writeln!(out);
    for t in &v.tasks {
        let _ = writeln!(out, "**{}**: {}", md_escape(&t.task), verdict_badge(t.verdict()));
        let _ = writeln!(out);
        for c in v.criteria.iter().filter(|c| c.task == t.task) {
            let _ = writeln!(out, "- {}: {}", md_escape(&check_name(c)), md_escape(&c.reason));
        }
        if let Some(time) = customer_time(t) {
            let _ = writeln!(out, "- customer time: {}", md_escape(&time));
        }
        let _ = writeln!(out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_increase_reads_percent_as_relative_and_durations_as_absolute() {
        assert_eq!(
            parse_max_increase("p90=10%").unwrap(),
            MaxIncrease {
                percentile: 90.0,
                allowance: Allowance::Ratio(0.10)
            }
        );
        assert_eq!(
            parse_max_increase("P99.9=500ms").unwrap(),
            MaxIncrease {
                percentile: 99.9,
                allowance: Allowance::Absolute(Duration::from_millis(500))
            }
        );
        assert_eq!(
            parse_max_increase("50=+1.5s").unwrap().allowance,
            Allowance::Absolute(Duration::from_millis(1500))
        );
        for bad in ["p90", "p100=10%", "px=10%", "p90=-5%", "p90=fast"] {
            assert!(parse_max_increase(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn both_allowances_of_one_percentile_merge_into_one_criterion() {
        let flags: Vec<MaxIncrease> = ["p90=10%", "p99=2s", "p90=500ms"]
            .iter()
            .map(|f| parse_max_increase(f).unwrap())
            .collect();
        let c = percentile_criteria(&flags).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].percentile, 90.0);
        assert_eq!(c[0].max_increase_ratio, Some(0.10));
        assert_eq!(
            c[0].max_increase,
            Some(prost_types::Duration {
                seconds: 0,
                nanos: 500_000_000
            })
        );
        assert_eq!(c[1].max_increase_ratio, None);
        let twice = [
            parse_max_increase("p90=10%").unwrap(),
            parse_max_increase("p90=5%").unwrap(),
        ];
        assert!(percentile_criteria(&twice).is_err());
    }

    #[test]
    fn rate_allowances_are_percentage_points_and_percent_is_refused() {
        assert_eq!(parse_pp("1pp"), Ok(1.0));
        assert_eq!(parse_pp("0.5 pp"), Ok(0.5));
        assert_eq!(parse_pp("2"), Ok(2.0));
        assert!(parse_pp("1%").unwrap_err().contains("ambiguous"));
        assert!(parse_pp("101pp").is_err());
        assert_eq!(parse_confidence("95%"), Ok(0.95));
        assert!(parse_confidence("1").is_err());
    }

    #[test]
    fn exit_codes_follow_the_verdict_and_inconclusive_as() {
        use pb::Verdict::*;
        assert_eq!(exit_code(Pass, None).unwrap(), 0);
        assert_eq!(exit_code(Fail, Some(InconclusiveAs::Pass)).unwrap(), 1);
        assert_eq!(exit_code(Inconclusive, None).unwrap(), 3);
        assert_eq!(exit_code(Inconclusive, Some(InconclusiveAs::Fail)).unwrap(), 1);
        assert_eq!(exit_code(Inconclusive, Some(InconclusiveAs::Pass)).unwrap(), 0);
        assert!(exit_code(Unspecified, None).is_err());
    }

    #[test]
    fn xml_and_markdown_escape_what_would_break_them() {
        assert_eq!(xml_escape("a<b & \"c\"\u{1}\n"), "a&lt;b &amp; &quot;c&quot;&#10;");
        assert_eq!(md_escape("a|b <i>\n"), "a\\|b \\<i\\> ");
    }
}
