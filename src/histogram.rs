//! HDR histogram arithmetic: which bin a duration falls in, rebuilding a histogram from
//! stored bins, and the V2+DEFLATE export every HdrHistogram library reads.
//!
//! Durations are microseconds. A bin is named by its lowest equivalent value, so
//! recording `count` at the bin's name rebuilds exactly the histogram that recorded the
//! original values.

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer as _, V2DeflateSerializer};

/// The histogram configuration. It is part of the storage namespace: data written under
/// one configuration is never mixed with another.
#[derive(Debug, Clone)]
pub struct HistogramConfig {
    highest_us: u64,
    sigfig: u8,
    /// An empty histogram with this configuration, used for bin arithmetic.
    template: Histogram<u64>,
}

impl HistogramConfig {
    /// Highest trackable duration by default: 30 days.
    pub const DEFAULT_HIGHEST_US: u64 = 30 * 24 * 3600 * 1_000_000;
    /// Significant decimal digits by default: 2 (values within 1%).
    pub const DEFAULT_SIGFIG: u8 = 2;

    /// Builds a configuration; lowest trackable value is always 1 µs.
    ///
    /// # Errors
    /// When `sigfig` is not 2 or 3, or `highest_us` is below 2 s.
    pub fn new(highest_us: u64, sigfig: u8) -> Result<Self, String> {
        if !(2..=3).contains(&sigfig) {
            return Err(format!("significant digits must be 2 or 3, not {sigfig}"));
        }
        if highest_us < 2_000_000 {
            return Err(format!(
                "the highest trackable duration must be at least 2 s, not {highest_us} µs"
            ));
        }
        let template = Histogram::new_with_bounds(1, highest_us, sigfig)
            .map_err(|e| format!("histogram bounds 1..{highest_us} µs, {sigfig} digits: {e:?}"))?;
        Ok(HistogramConfig {
            highest_us,
            sigfig,
            template,
        })
    }

    /// Highest trackable duration, µs.
    pub fn highest_us(&self) -> u64 {
        self.highest_us
    }

    /// Significant decimal digits.
    pub fn sigfig(&self) -> u8 {
        self.sigfig
    }

    /// The storage namespace of this configuration, e.g. `d2r2592000000000`.
    pub fn namespace(&self) -> String {
        format!("d{}r{}", self.sigfig, self.highest_us)
    }

    /// The bin a duration falls in, and whether it was above the highest trackable value
    /// (then it is clamped to the highest bin).
    pub fn bin(&self, duration_us: u64) -> (u64, bool) {
        let over = duration_us > self.highest_us;
        let value = duration_us.min(self.highest_us);
        (self.template.lowest_equivalent(value), over)
    }

    /// An empty histogram with this configuration.
    pub fn empty(&self) -> Histogram<u64> {
        let mut h = self.template.clone();
        h.reset();
        h
    }

    /// Adds stored `(bin, count)` pairs to `into`. Bins outside the range (written under
    /// another configuration) are clamped rather than lost.
    pub fn add_bins(&self, into: &mut Histogram<u64>, bins: impl IntoIterator<Item = (u64, u64)>) {
        for (bin, count) in bins {
            if count == 0 {
                continue;
            }
            let value = bin.min(self.highest_us);
            // Cannot fail: the value is within the configured bounds.
            let _ = into.record_n(value, count);
        }
    }

    /// The value reported for a quantile in [0, 1]: the highest value equivalent to the
    /// recorded values at that rank, as HdrHistogram reports it.
    pub fn value_at_quantile(hist: &Histogram<u64>, quantile: f64) -> u64 {
        hist.value_at_quantile(quantile)
    }
}

/// Encodes a histogram as HdrHistogram V2+DEFLATE in base64 (`HISTF...`).
///
/// # Errors
/// Only if compression fails, which does not happen for in-memory buffers.
pub fn to_base64_v2_deflate(hist: &Histogram<u64>) -> Result<String, String> {
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(hist, &mut buf)
        .map_err(|e| format!("cannot encode histogram: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> HistogramConfig {
        HistogramConfig::new(HistogramConfig::DEFAULT_HIGHEST_US, 2).unwrap()
    }

    #[test]
    fn a_duration_above_the_highest_value_is_clamped_and_flagged() {
        let c = config();
        let (bin, over) = c.bin(c.highest_us() * 2);
        assert!(over);
        assert_eq!(bin, c.bin(c.highest_us()).0);
        assert!(!c.bin(5).1);
    }

    #[test]
    fn the_export_is_a_v2_deflate_histogram() {
        let c = config();
        let mut h = c.empty();
        h.record(1234).unwrap();
        let text = to_base64_v2_deflate(&h).unwrap();
        assert!(text.starts_with("HISTF"), "{text}");
    }

    #[test]
    fn bad_configurations_are_refused_with_the_value() {
        assert!(HistogramConfig::new(1_000, 2).unwrap_err().contains("1000"));
        assert!(HistogramConfig::new(10_000_000, 5).unwrap_err().contains('5'));
    }

    proptest! {
        /// Rebuilding from (bin, count) pairs gives the same histogram as recording the
        /// raw values: the storage format loses nothing HDR keeps.
        #[test]
        fn rebuilding_from_bins_equals_recording_the_values(values in prop::collection::vec(0u64..5_000_000_000, 1..300)) {
            let c = config();
            let mut direct = c.empty();
            let mut bins = std::collections::BTreeMap::<u64, u64>::new();
            for v in &values {
                direct.record(*v).unwrap();
                *bins.entry(c.bin(*v).0).or_default() += 1;
            }
            let mut rebuilt = c.empty();
            c.add_bins(&mut rebuilt, bins);
            prop_assert_eq!(direct.len(), rebuilt.len());
            for q in [0.0, 0.1, 0.5, 0.9, 0.99, 1.0] {
                prop_assert_eq!(direct.value_at_quantile(q), rebuilt.value_at_quantile(q));
            }
            prop_assert_eq!(direct.min(), rebuilt.min());
            prop_assert_eq!(direct.max(), rebuilt.max());
        }
    }
}
