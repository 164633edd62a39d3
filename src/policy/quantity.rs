//! Kubernetes resource quantities (`500m`, `2`, `1.5Gi`, `1e3`) as integers, and back.
//!
//! Values are computed exactly (integer arithmetic on the decimal digits) and rounded up, as
//! Kubernetes' `Quantity::MilliValue`/`Value` do: `0.0001` CPU is 1 milli-CPU, `0.5` bytes is 1.

use thiserror::Error;

/// Why a string is not a usable quantity.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum QuantityError {
    /// Not a Kubernetes quantity at all.
    #[error("{0:?} is not a Kubernetes quantity")]
    Invalid(String),
    /// A negative amount (resources cannot be negative).
    #[error("{0:?} is negative")]
    Negative(String),
    /// Too large to represent.
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// Parses a CPU quantity into milli-CPUs (`"500m"` → 500, `"2"` → 2000, `"0.5"` → 500).
pub fn parse_cpu_millis(s: &str) -> Result<i64, QuantityError> {
    parse_scaled(s, 3)
}

/// Parses a byte quantity (`"2Gi"` → 2147483648, `"1.5G"` → 1500000000, `"1e3"` → 1000).
pub fn parse_bytes(s: &str) -> Result<i64, QuantityError> {
    parse_scaled(s, 0)
}

/// Formats milli-CPUs as Kubernetes writes them: whole cores plain (`"2"`), else millis (`"1500m"`).
pub fn format_cpu_millis(millis: i64) -> String {
    if millis % 1000 == 0 {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// Formats milli-CPUs as cores with a decimal point, as KubeSpawner's `CPU_LIMIT` (`"2.0"`, `"0.5"`).
pub fn format_cpu_cores(millis: i64) -> String {
    let whole = millis / 1000;
    let frac = (millis % 1000).abs();
    if frac == 0 {
        format!("{whole}.0")
    } else {
        let digits = format!("{frac:03}");
        format!("{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// Formats bytes with the largest binary suffix that divides them exactly (`"2Gi"`, `"1536Mi"`),
/// else the largest exact decimal suffix (`"1G"`), else plain bytes.
pub fn format_bytes(bytes: i64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    const BINARY: [(&str, u32); 6] = [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ];
    for (suffix, shift) in BINARY {
        let unit = 1i64 << shift;
        if bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    const DECIMAL: [(&str, u32); 6] = [
        ("E", 18),
        ("P", 15),
        ("T", 12),
        ("G", 9),
        ("M", 6),
        ("k", 3),
    ];
    for (suffix, exp) in DECIMAL {
        let unit = 10i64.pow(exp);
        if bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// `s` × 10^`target_exp`, rounded up, as an `i64`.
fn parse_scaled(s: &str, target_exp: i32) -> Result<i64, QuantityError> {
    let invalid = || QuantityError::Invalid(s.to_owned());
    let too_large = || QuantityError::TooLarge(s.to_owned());
    let t = s.trim();
    let (negative, rest) = match t.as_bytes().first() {
        Some(b'+') => (false, &t[1..]),
        Some(b'-') => (true, &t[1..]),
        _ => (false, t),
    };
    // The number: digits, an optional point and more digits.
    let number_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(invalid());
    }
    let (binary_shift, decimal_exp) = parse_suffix(suffix).ok_or_else(invalid)?;

    let mut mantissa: i128 = 0;
    for d in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(d - b'0')))
            .ok_or_else(too_large)?;
    }
    if mantissa == 0 {
        return Ok(0);
    }
    if negative {
        return Err(QuantityError::Negative(s.to_owned()));
    }
    let frac_len = i32::try_from(frac_part.len()).map_err(|_| too_large())?;
    let exp = decimal_exp
        .checked_add(target_exp)
        .and_then(|e| e.checked_sub(frac_len))
        .ok_or_else(too_large)?;
    let mut num = mantissa
        .checked_mul(1i128 << binary_shift)
        .ok_or_else(too_large)?;
    let value = if exp >= 0 {
        for _ in 0..exp {
            num = num.checked_mul(10).ok_or_else(too_large)?;
        }
        num
    } else {
        let mut den: i128 = 1;
        for _ in 0..(-exp) {
            match den.checked_mul(10) {
                Some(d) => den = d,
                // The denominator exceeds any numerator: a positive value this small rounds up to 1.
                None => return Ok(1),
            }
        }
        // Rounded up; `(num + den - 1) / den` overflows when `num` is near `i128::MAX`.
        num / den + i128::from(num % den != 0)
    };
    i64::try_from(value).map_err(|_| too_large())
}

/// (binary shift, decimal exponent) of a suffix; `None` when it is not one.
fn parse_suffix(suffix: &str) -> Option<(u32, i32)> {
    let pair = match suffix {
        "" => (0, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        _ => {
            // A decimal exponent: `e3`, `E-2`, `e+6` (integral, as the API server accepts).
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (0, exp.parse::<i32>().ok()?)
        }
    };
    Some(pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        let cases: &[(&str, i64)] = &[
            ("1", 1000),
            ("2", 2000),
            ("500m", 500),
            ("0.5", 500),
            (".5", 500),
            ("1.", 1000),
            ("1.25", 1250),
            ("+3", 3000),
            ("0", 0),
            ("-0", 0),
            ("0.0001", 1),
            ("1n", 1),
            ("1500000u", 1500),
            ("1e3", 1_000_000),
            ("1E3", 1_000_000),
            ("2e-3", 2),
            ("1e+1", 10_000),
            ("1k", 1_000_000),
            ("1Ki", 1_024_000),
            (" 4 ", 4000),
        ];
        for (input, want) in cases {
            assert_eq!(parse_cpu_millis(input), Ok(*want), "{input}");
        }
    }

    #[test]
    fn byte_quantities() {
        let cases: &[(&str, i64)] = &[
            ("0", 0),
            ("1", 1),
            ("1k", 1000),
            ("1Ki", 1024),
            ("1M", 1_000_000),
            ("1Mi", 1 << 20),
            ("2Gi", 2 << 30),
            ("1.5Gi", 3 << 29),
            ("1.5G", 1_500_000_000),
            ("1T", 1_000_000_000_000),
            ("1Ti", 1 << 40),
            ("1P", 10i64.pow(15)),
            ("1Pi", 1 << 50),
            ("1E", 10i64.pow(18)),
            ("1Ei", 1 << 60),
            ("1e3", 1000),
            ("1.5e3", 1500),
            ("0.5", 1),
            ("100m", 1),
            ("1000m", 1),
            ("1001m", 2),
        ];
        for (input, want) in cases {
            assert_eq!(parse_bytes(input), Ok(*want), "{input}");
        }
    }

    #[test]
    fn invalid_quantities() {
        for input in [
            "", "abc", "1.2.3", "1Gb", "1ki", "1 Gi", "Gi", ".", "1e", "1e1.5", "1ee3", "--1",
            "1m2",
        ] {
            assert_eq!(
                parse_bytes(input),
                Err(QuantityError::Invalid(input.into())),
                "{input:?}"
            );
        }
        assert_eq!(
            parse_cpu_millis("-1"),
            Err(QuantityError::Negative("-1".into()))
        );
        assert_eq!(
            parse_bytes("9Ei"),
            Err(QuantityError::TooLarge("9Ei".into()))
        );
        assert_eq!(
            parse_cpu_millis("1e400"),
            Err(QuantityError::TooLarge("1e400".into()))
        );
        assert_eq!(parse_cpu_millis("1e-400"), Ok(1));
    }

    #[test]
    fn long_mantissas_round_up_without_overflow() {
        // Found by tests/fuzz_props.rs (`quantities_never_panic`): a 39-digit mantissa with 38
        // decimals overflowed while rounding up, a panic in debug builds (a hub handler's, from
        // `user_options.resources.memory`).
        let zeros = "0".repeat(37);
        assert_eq!(parse_bytes(&format!("1.0{zeros}")), Ok(1));
        assert_eq!(parse_bytes(&format!("1.{zeros}1")), Ok(2));
        assert_eq!(parse_bytes(&format!("1.6{zeros}")), Ok(2));
        assert_eq!(parse_cpu_millis(&format!("0.001{zeros}1")), Ok(2));
        assert_eq!(parse_cpu_millis(&format!("0.001{zeros}0")), Ok(1));
    }

    #[test]
    fn formatting() {
        assert_eq!(format_cpu_millis(2000), "2");
        assert_eq!(format_cpu_millis(1500), "1500m");
        assert_eq!(format_cpu_millis(0), "0");
        assert_eq!(format_cpu_cores(2000), "2.0");
        assert_eq!(format_cpu_cores(500), "0.5");
        assert_eq!(format_cpu_cores(1250), "1.25");
        assert_eq!(format_cpu_cores(1), "0.001");
        assert_eq!(format_bytes(0), "0");
        assert_eq!(format_bytes(2 << 30), "2Gi");
        assert_eq!(format_bytes(3 << 29), "1536Mi");
        assert_eq!(format_bytes(1_000_000_000), "1G");
        assert_eq!(format_bytes(1500), "1500");
        assert_eq!(format_bytes(1024), "1Ki");
        assert_eq!(format_bytes(1000), "1k");
    }

    #[test]
    fn round_trip() {
        for q in ["2Gi", "1536Mi", "1G", "7", "1Ki", "3Ti"] {
            assert_eq!(format_bytes(parse_bytes(q).unwrap()), q);
        }
        for q in ["2", "1500m", "1m", "64"] {
            assert_eq!(format_cpu_millis(parse_cpu_millis(q).unwrap()), q);
        }
    }
}
