//! Time buckets: minute, hour and day windows with their retention, and the choice of
//! buckets that covers a query range with as few reads as the retention allows.

use crate::domain::{MICROS_PER_SEC, Micros};

/// A bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolution {
    Minute,
    Hour,
    Day,
}

impl Resolution {
    /// Every resolution, finest first.
    pub const ALL: [Resolution; 3] = [Resolution::Minute, Resolution::Hour, Resolution::Day];

    /// Width in seconds.
    pub fn secs(self) -> i64 {
        match self {
            Resolution::Minute => 60,
            Resolution::Hour => 3600,
            Resolution::Day => 86_400,
        }
    }

    /// One-letter code used in storage keys.
    pub fn code(self) -> &'static str {
        match self {
            Resolution::Minute => "m",
            Resolution::Hour => "h",
            Resolution::Day => "d",
        }
    }

    /// Start (seconds since the epoch) of the bucket holding `at`.
    pub fn bucket_start(self, at: Micros) -> i64 {
        at.div_euclid(MICROS_PER_SEC).div_euclid(self.secs()) * self.secs()
    }
}

/// How long buckets of each resolution are kept after they close, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub minute_secs: i64,
    pub hour_secs: i64,
    pub day_secs: i64,
}

impl Retention {
    /// Minute buckets are kept 2 days.
    pub const DEFAULT_MINUTE_SECS: i64 = 2 * 86_400;
    /// Hour buckets are kept 35 days.
    pub const DEFAULT_HOUR_SECS: i64 = 35 * 86_400;
    /// Day buckets are kept 400 days.
    pub const DEFAULT_DAY_SECS: i64 = 400 * 86_400;

    /// Retention of one resolution, seconds.
    pub fn of(&self, res: Resolution) -> i64 {
        match res {
            Resolution::Minute => self.minute_secs,
            Resolution::Hour => self.hour_secs,
            Resolution::Day => self.day_secs,
        }
    }

    /// When a bucket expires, seconds since the epoch.
    pub fn expires_at(&self, res: Resolution, start: i64) -> i64 {
        start + res.secs() + self.of(res)
    }

    /// Whether the bucket is still kept at `now_secs`.
    pub fn is_kept(&self, res: Resolution, start: i64, now_secs: i64) -> bool {
        self.expires_at(res, start) > now_secs
    }
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            minute_secs: Self::DEFAULT_MINUTE_SECS,
            hour_secs: Self::DEFAULT_HOUR_SECS,
            day_secs: Self::DEFAULT_DAY_SECS,
        }
    }
}

/// One bucket: a resolution and its start, seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketRef {
    pub res: Resolution,
    pub start: i64,
}

impl BucketRef {
    /// End of the bucket (exclusive), seconds.
    pub fn end(&self) -> i64 {
        self.start + self.res.secs()
    }
}

/// The buckets an increment filed in the minute starting at `minute_start` (seconds) is
/// added to: the minute itself, the hour and the day holding it, those still kept at
/// `now_secs`, each with its expiry (seconds since the epoch). Increments travel per
/// minute and are rolled up into the coarser buckets only where they are applied.
pub fn roll_up(retention: &Retention, minute_start: i64, now_secs: i64) -> impl Iterator<Item = (BucketRef, i64)> + '_ {
    Resolution::ALL.into_iter().filter_map(move |res| {
        let start = minute_start.div_euclid(res.secs()) * res.secs();
        let expires = retention.expires_at(res, start);
        (expires > now_secs).then_some((BucketRef { res, start }, expires))
    })
}

/// The buckets that cover `[from_secs, to_secs)`, and the range they actually cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cover {
    pub buckets: Vec<BucketRef>,
    pub from: i64,
    pub to: i64,
}

/// Chooses the fewest buckets that cover `[from_secs, to_secs)` (whole minutes; callers
/// round outward first): day buckets for whole days, hour buckets for whole hours, minute
/// buckets for the rest. Where minute (or hour) buckets of that age have expired, the
/// enclosing coarser bucket is read instead and the covered range grows to include it,
/// so counts stay exact for the range reported back.
pub fn cover(from_secs: i64, to_secs: i64, now_secs: i64, retention: &Retention) -> Cover {
    let mut buckets = Vec::new();
    let mut t = from_secs;
    let mut covered_from = from_secs;
    while t < to_secs {
        let mut chosen = None;
        // Aligned buckets that fit inside the range, coarsest first.
        for res in [Resolution::Day, Resolution::Hour, Resolution::Minute] {
            let w = res.secs();
            if t % w == 0 && t + w <= to_secs && retention.is_kept(res, t, now_secs) {
                chosen = Some(BucketRef { res, start: t });
                break;
            }
        }
        // Otherwise the enclosing bucket of the finest resolution still kept.
        if chosen.is_none() {
            for res in Resolution::ALL {
                let start = t.div_euclid(res.secs()) * res.secs();
                if retention.is_kept(res, start, now_secs) {
                    chosen = Some(BucketRef { res, start });
                    break;
                }
            }
        }
        let Some(bucket) = chosen else {
            // Older than every retention: nothing is kept for this time.
            t = (t.div_euclid(86_400) + 1) * 86_400;
            continue;
        };
        if buckets.is_empty() {
            covered_from = covered_from.min(bucket.start);
        }
        t = bucket.end();
        buckets.push(bucket);
    }
    let covered_to = buckets.last().map_or(to_secs, |b| b.end().max(to_secs));
    Cover {
        buckets,
        from: covered_from,
        to: covered_to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_800_000_000 - 1_800_000_000 % DAY + 12 * 3600; // noon, some day

    fn count(c: &Cover, res: Resolution) -> usize {
        c.buckets.iter().filter(|b| b.res == res).count()
    }

    fn assert_contiguous(c: &Cover) {
        for pair in c.buckets.windows(2) {
            assert_eq!(pair[0].end(), pair[1].start, "{:?}", c.buckets);
        }
        assert_eq!(c.buckets.first().map(|b| b.start), Some(c.from));
        assert_eq!(c.buckets.last().map(|b| b.end()), Some(c.to));
    }

    #[test]
    fn thirty_days_read_a_few_hundred_buckets_not_43200_minutes() {
        let to = NOW - 7 * 60; // not aligned to an hour
        let from = to - 30 * DAY;
        let c = cover(from, to, NOW, &Retention::default());
        assert_contiguous(&c);
        // Minutes 30 days ago have expired: the enclosing hour is read instead.
        assert_eq!((c.from, c.to), (from - 53 * 60, to));
        assert!(c.buckets.len() < 250, "{} buckets", c.buckets.len());
        assert_eq!(count(&c, Resolution::Day), 29);
        assert!(count(&c, Resolution::Minute) <= 2 * 59);
    }

    #[test]
    fn a_recent_range_on_whole_minutes_is_covered_exactly() {
        let from = NOW - 3 * 3600 - 17 * 60;
        let to = NOW - 5 * 60;
        let c = cover(from, to, NOW, &Retention::default());
        assert_contiguous(&c);
        assert_eq!((c.from, c.to), (from, to));
        assert_eq!(count(&c, Resolution::Hour), 2);
    }

    #[test]
    fn expired_minutes_fall_back_to_the_enclosing_hour_and_say_so() {
        let from = NOW - 10 * DAY + 17 * 60;
        let to = NOW - 10 * DAY + 3 * 3600 + 5 * 60;
        let c = cover(from, to, NOW, &Retention::default());
        assert_contiguous(&c);
        assert_eq!(c.from, from - 17 * 60);
        assert_eq!(c.to, to + 55 * 60);
        assert!(c.buckets.iter().all(|b| b.res == Resolution::Hour));
    }

    #[test]
    fn older_than_every_retention_reads_nothing() {
        let from = NOW - 500 * DAY;
        let c = cover(from, from + 3600, NOW, &Retention::default());
        assert!(c.buckets.is_empty());
    }

    #[test]
    fn bucket_starts_round_down_also_before_the_epoch() {
        assert_eq!(Resolution::Minute.bucket_start(61_000_000), 60);
        assert_eq!(Resolution::Minute.bucket_start(-1), -60);
        assert_eq!(Resolution::Day.bucket_start(DAY * MICROS_PER_SEC + 5), DAY);
    }
}
