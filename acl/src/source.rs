//! Positions in a policy file: turning byte offsets into `FILE:LINE:COL`.

use std::fmt;
use std::sync::Arc;

/// A place in a policy file. Displays as `FILE:LINE:COL`, lines and columns from 1, the
/// column counted in characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// The file name given to the parser.
    pub file: Arc<str>,
    /// Line, from 1.
    pub line: u32,
    /// Column in characters, from 1.
    pub col: u32,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// The text of a policy file with an index of its line starts.
#[derive(Debug)]
pub(crate) struct SourceText<'a> {
    pub(crate) file: Arc<str>,
    pub(crate) text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> SourceText<'a> {
    pub(crate) fn new(file: &str, text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(
            text.char_indices()
                .filter(|(_, c)| *c == '\n')
                .map(|(i, _)| i + 1),
        );
        SourceText {
            file: Arc::from(file),
            text,
            line_starts,
        }
    }

    /// The position of a byte offset (clamped to the text).
    pub(crate) fn position(&self, offset: usize) -> Position {
        let offset = offset.min(self.text.len());
        let line_index = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let line_start = self.line_starts.get(line_index).copied().unwrap_or(0);
        let col = self
            .text
            .get(line_start..offset)
            .map_or(offset - line_start, |s| s.chars().count());
        Position {
            file: self.file.clone(),
            line: u32::try_from(line_index + 1).unwrap_or(u32::MAX),
            col: u32::try_from(col + 1).unwrap_or(u32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters_from_one() {
        let src = SourceText::new("p.hujson", "{\n  \"é\": 1,\n}\n");
        assert_eq!(src.position(0).to_string(), "p.hujson:1:1");
        assert_eq!(src.position(2).to_string(), "p.hujson:2:1");
        // after `"é"` (é is two bytes) the colon is the 6th character of line 2.
        let colon = src.text.find(':').unwrap();
        assert_eq!(src.position(colon).to_string(), "p.hujson:2:6");
        assert_eq!(src.position(10_000).line, 4);
    }
}
