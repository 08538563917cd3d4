//! Where a recording goes unless the user says otherwise: a new, time-stamped file each
//! time, so one recording never overwrites the last.

use std::path::{Path, PathBuf};

/// `~/Videos/dreamwalk-<time>.mp4` when there is a Videos folder, else in the working folder.
pub fn default_record_path() -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = format!("dreamwalk-{}.mp4", format_timestamp(stamp));
    match dirs::video_dir().filter(|d| d.is_dir()) {
        Some(dir) => dir.join(name),
        None => Path::new(".").join(name),
    }
}

/// `YYYYMMDD-HHMMSS` (UTC) of a Unix time. The standard library has no calendar, and a date
/// crate for one file name is more than this takes.
fn format_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::format_timestamp;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(format_timestamp(0), "19700101-000000");
        // Leap days, and the last second of a year.
        assert_eq!(format_timestamp(951_782_400), "20000229-000000");
        assert_eq!(format_timestamp(1_704_067_199), "20231231-235959");
        assert_eq!(format_timestamp(1_709_210_096), "20240229-123456");
    }
}
