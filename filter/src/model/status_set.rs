//! Which HTTP status codes count as failures, written as `"5xx"`, `"429"`,
//! `"500-504"` or a bare number.

/// One entry of `failureStatusCodes` as written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusSpec {
    Code(u16),
    Text(String),
}

/// A set of status codes 100..=599, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusSet([u64; 10]);

impl StatusSet {
    /// 500-599, the default failure set.
    pub fn server_errors() -> StatusSet {
        let mut set = StatusSet::default();
        set.insert_range(500, 599);
        set
    }

    pub fn contains(&self, code: u16) -> bool {
        let code = usize::from(code);
        code < 640 && self.0[code / 64] & (1 << (code % 64)) != 0
    }

    fn insert_range(&mut self, from: u16, to: u16) {
        for code in from..=to {
            let code = usize::from(code);
            self.0[code / 64] |= 1 << (code % 64);
        }
    }

    /// Builds the set, naming the first entry that is not a valid code,
    /// class or range.
    pub fn compile(specs: &[StatusSpec]) -> Result<StatusSet, (usize, String)> {
        let mut set = StatusSet::default();
        for (index, spec) in specs.iter().enumerate() {
            let (from, to) = range_of(spec).map_err(|reason| (index, reason))?;
            set.insert_range(from, to);
        }
        Ok(set)
    }
}

fn range_of(spec: &StatusSpec) -> Result<(u16, u16), String> {
    let valid = |code: u16| (100..=599).contains(&code);
    match spec {
        StatusSpec::Code(code) if valid(*code) => Ok((*code, *code)),
        StatusSpec::Code(code) => Err(format!("{code} is not an HTTP status (100-599)")),
        StatusSpec::Text(text) => {
            let text = text.trim();
            let lower = text.to_ascii_lowercase();
            if let Some(class) = lower.strip_suffix("xx") {
                return match class.parse::<u16>() {
                    Ok(class @ 1..=5) => Ok((class * 100, class * 100 + 99)),
                    _ => Err(format!("`{text}` is not a status class (1xx-5xx)")),
                };
            }
            let parse = |part: &str| part.trim().parse::<u16>().ok().filter(|c| valid(*c));
            let bad =
                || format!("`{text}` is not a status, class (\"5xx\") or range (\"500-504\")");
            match text.split_once('-') {
                Some((from, to)) => match (parse(from), parse(to)) {
                    (Some(from), Some(to)) if from <= to => Ok((from, to)),
                    _ => Err(bad()),
                },
                None => parse(text).map(|code| (code, code)).ok_or_else(bad),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> StatusSpec {
        StatusSpec::Text(s.to_string())
    }

    #[test]
    fn classes_codes_and_ranges() {
        let set = StatusSet::compile(&[text("5xx"), text("429"), StatusSpec::Code(404)]).unwrap();
        assert!(set.contains(500) && set.contains(599) && set.contains(429) && set.contains(404));
        assert!(!set.contains(499) && !set.contains(200) && !set.contains(600));

        let range = StatusSet::compile(&[text("502-504")]).unwrap();
        assert!(!range.contains(501) && range.contains(502) && range.contains(504));
        assert!(!range.contains(505));
    }

    #[test]
    fn names_the_bad_entry() {
        let err = StatusSet::compile(&[text("5xx"), text("6xx")]).unwrap_err();
        assert_eq!(err.0, 1);
        assert!(err.1.contains("6xx"));
        assert!(StatusSet::compile(&[StatusSpec::Code(700)]).is_err());
        assert!(StatusSet::compile(&[text("504-502")]).is_err());
        assert!(StatusSet::compile(&[text("abc")]).is_err());
    }

    #[test]
    fn out_of_range_lookups_are_false() {
        let set = StatusSet::compile(&[text("5xx")]).unwrap();
        assert!(!set.contains(0) && !set.contains(u16::MAX));
    }
}
