//! `*` wildcards for route and VirtualService selectors.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Glob(pattern.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `*` matches any run of characters (also none); everything else is literal.
    pub fn matches(&self, text: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or("");
        let Some(mut rest) = text.strip_prefix(first) else {
            return false;
        };
        let pieces: Vec<&str> = parts.collect();
        let Some((last, middle)) = pieces.split_last() else {
            return rest.is_empty();
        };
        for piece in middle {
            match rest.find(piece) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(Glob::new("payments").matches("payments"));
        assert!(!Glob::new("payments").matches("payments-v2"));
        assert!(Glob::new("pay*").matches("payments"));
        assert!(Glob::new("*").matches(""));
        assert!(Glob::new("*-batch").matches("reports-batch"));
        assert!(!Glob::new("*-batch").matches("reports-batch-2"));
        assert!(Glob::new("a*b*c").matches("axxbyyc"));
        assert!(!Glob::new("a*b*c").matches("axxcyyb"));
        assert!(Glob::new("shop/*").matches("shop/reviews"));
        assert!(!Glob::new("ab*ba").matches("aba"), "pieces may not overlap");
    }
}
