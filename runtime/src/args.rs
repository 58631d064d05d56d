//! Flag values that are not plain scalars.

/// Parses `key=value` (clap value parser for `-X`).
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_pairs_are_trimmed_and_need_a_key() {
        assert_eq!(
            parse_kv(" linger.ms = 5 "),
            Ok(("linger.ms".into(), "5".into()))
        );
        assert_eq!(parse_kv("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_kv("=1").is_err());
        assert!(parse_kv("novalue").is_err());
    }
}
