//! Positions in a text as people read them. Errors in plan and configuration files name the line and column of
//! what is wrong; the parsers report a byte offset, which this turns into those.

/// The line and column (both from 1; the column counts characters, not bytes) of byte `offset` in `text`. An offset
/// past the end is the end.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::line_column;

    #[test]
    fn lines_and_columns_count_from_one_in_characters() {
        let text = "a: 1\nbé: x\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 5), (2, 1));
        assert_eq!(line_column(text, 9), (2, 4)); // after "bé:", the é being two bytes
        assert_eq!(line_column(text, 7), (2, 2)); // inside the é: its start
        assert_eq!(line_column(text, 999), (3, 1));
    }
}
