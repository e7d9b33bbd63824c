//! Calendar dates for the pages, in UTC: Unix epoch seconds through the `time` crate's
//! calendar, never hand-written arithmetic.

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub(super) fn iso8601(epoch: u64) -> String {
    stamp(epoch, 'T', "Z")
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub(super) fn utc_clock(epoch: u64) -> String {
    stamp(epoch, ' ', " UTC")
}

/// The date, `between`, the time to the second, then `zone`.
fn stamp(epoch: u64, between: char, zone: &str) -> String {
    let t = utc(epoch);
    let (year, month, day) = (t.year(), u8::from(t.month()), t.day());
    let (hour, minute, second) = (t.hour(), t.minute(), t.second());
    format!("{year:04}-{month:02}-{day:02}{between}{hour:02}:{minute:02}:{second:02}{zone}")
}

/// Unix epoch seconds as a UTC date and time (the calendar is `time`'s); an instant past what
/// `time` represents (the year 9999) shows as its last second.
pub(super) fn utc(epoch: u64) -> time::OffsetDateTime {
    i64::try_from(epoch)
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .unwrap_or(time::PrimitiveDateTime::MAX.assume_utc())
}

/// `YYYY-MM-DD HH:MM`.
pub(super) fn utc_minute(epoch: u64) -> String {
    let t = utc(epoch);
    format!("{:04}-{:02}-{:02} {:02}:{:02}", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc_clock(4_102_444_799), "2099-12-31 23:59:59 UTC");
        assert_eq!(utc_clock(u64::MAX), "9999-12-31 23:59:59 UTC");
        assert_eq!(utc_minute(1_700_000_000), "2023-11-14 22:13");
    }
}
