//! Small value syntaxes: durations, sizes, ports and file modes.
//!
//! Each parser checks syntax only and returns a message without a field
//! path; the decoder adds the path, the position and the allowed range.

use std::time::Duration;

use super::types::PortRange;

/// Plain decimal digits (no sign, no `_`); `None` for anything else or on
/// overflow.
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Splits `123unit` into its number and unit.
fn number_and_unit(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text.split_at(end)
}

/// `<integer><unit>` with unit `s`, `m` or `h`, e.g. `30s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = number_and_unit(text);
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "" => {
            return Err(format!(
                "duration `{text}` needs a unit: s, m or h (e.g. 30s)"
            ))
        }
        _ => {
            return Err(format!(
                "`{text}` is not a duration; write an integer and a unit s, m or h (e.g. 30s, 5m)"
            ))
        }
    };
    let n = digits(number).ok_or_else(|| {
        format!("`{text}` is not a duration; write an integer and a unit s, m or h (e.g. 30s)")
    })?;
    n.checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration `{text}` is too large"))
}

/// Human form of a duration for range messages (`1s`, `24h`).
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

const KIB: u64 = 1024;

/// `<integer><unit>` with unit `B`, `KiB`, `MiB` or `GiB`, e.g. `16MiB`.
/// Only binary units exist: `MB` would be ambiguous between 10^6 and 2^20.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = number_and_unit(text);
    let factor = match unit {
        "B" => 1,
        "KiB" => KIB,
        "MiB" => KIB * KIB,
        "GiB" => KIB * KIB * KIB,
        "" => {
            return Err(format!(
                "size `{text}` needs a unit: B, KiB, MiB or GiB (e.g. 16MiB)"
            ))
        }
        other => {
            return Err(format!(
                "size `{text}` has unknown unit `{other}`; use B, KiB, MiB or GiB (e.g. 16MiB)"
            ))
        }
    };
    let n = digits(number).ok_or_else(|| {
        format!("`{text}` is not a size; write an integer and a unit (e.g. 16MiB)")
    })?;
    n.checked_mul(factor)
        .ok_or_else(|| format!("size `{text}` is too large"))
}

/// Human form of a byte count for range messages (`64KiB`, `4GiB`).
pub fn format_size(bytes: u64) -> String {
    for (factor, unit) in [(KIB * KIB * KIB, "GiB"), (KIB * KIB, "MiB"), (KIB, "KiB")] {
        if bytes >= factor && bytes.is_multiple_of(factor) {
            return format!("{}{unit}", bytes / factor);
        }
    }
    format!("{bytes}B")
}

/// One port number, 1..=65535 (port 0 is not a real destination).
pub fn check_port(n: i128) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("port {n} is out of range 1-65535")),
    }
}

/// `N` or `LOW-HIGH`, both inclusive.
pub fn parse_port_range(text: &str) -> Result<PortRange, String> {
    let bad = || format!("`{text}` is not a port or port range (e.g. 443 or 9000-9100)");
    let (lo, hi) = match text.split_once('-') {
        Some((lo, hi)) => (lo, hi),
        None => (text, text),
    };
    let first = check_port(digits(lo).ok_or_else(bad)?.into())?;
    let last = check_port(digits(hi).ok_or_else(bad)?.into())?;
    if first > last {
        return Err(format!(
            "port range {first}-{last} is reversed; write {last}-{first}"
        ));
    }
    Ok(PortRange { first, last })
}

/// Octal permission bits as a string, e.g. `"0600"` or `"660"`.
pub fn parse_file_mode(text: &str) -> Result<u32, String> {
    let octal = (3..=4).contains(&text.len()) && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
    let mode = if octal {
        u32::from_str_radix(text, 8).ok()
    } else {
        None
    }
    .ok_or_else(|| format!("`{text}` is not an octal file mode (e.g. \"0600\")"))?;
    if mode > 0o777 {
        return Err(format!(
            "mode {text} sets setuid/setgid/sticky bits; only permission bits (0-0777) are allowed"
        ));
    }
    // Anyone who can write to the control socket can change the policy.
    if mode & 0o002 != 0 {
        return Err(format!(
            "mode {text} lets every local user write to the control socket; remove the \
             others-write bit (e.g. \"0660\")"
        ));
    }
    Ok(mode)
}
