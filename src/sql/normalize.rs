//! Normalised shape of a query for statistics and the slow-query log.
//!
//! [`normalize`] runs the lexer of [`super::classify`] over the text and writes the tokens back
//! with every literal (numbers, strings of every kind, dollar-quoted bodies) replaced by `?`.
//! `$n` parameters, identifiers and keywords stay as written; comments are dropped and any
//! whitespace or comment between two tokens becomes one space. Nothing else is rewritten (lists
//! such as `IN (1, 2, 3)` keep their length). Bytes that are not UTF-8 (LATIN1 identifiers, for
//! instance) come out as U+FFFD: the result is only meant for logs and the admin console.
//! Work stops as soon as the output is full, so a huge query costs no more than `max_len`.

use super::classify::{Lexer, TokenKind};

/// Normalised shape of a query for statistics/slow log: literals (numbers, strings of every
/// kind, dollar-quoted bodies) replaced by `?`, `$n` parameters kept, runs of whitespace
/// collapsed to one space, comments dropped, keywords kept as written; at most `max_len` bytes
/// of output (cut at a char boundary, with "…" appended when cut; the "…" counts towards
/// `max_len` and is left out when `max_len` is below its 3 bytes).
pub fn normalize(sql: &[u8], max_len: usize) -> String {
    const ELLIPSIS: &str = "…";
    let mut out = String::with_capacity(sql.len().min(max_len).saturating_add(ELLIPSIS.len()));
    let mut prev_end: Option<usize> = None;
    let mut cut = false;
    for t in Lexer::new(sql) {
        if prev_end.is_some_and(|e| t.start > e) {
            out.push(' ');
        }
        match t.kind {
            TokenKind::String | TokenKind::DollarString | TokenKind::Number => out.push('?'),
            _ => push_lossy(&mut out, &sql[t.start..t.end]),
        }
        prev_end = Some(t.end);
        if out.len() > max_len {
            cut = true;
            break;
        }
    }
    if cut {
        let keep = if max_len >= ELLIPSIS.len() {
            max_len - ELLIPSIS.len()
        } else {
            max_len
        };
        out.truncate(floor_char_boundary(&out, keep));
        if max_len >= ELLIPSIS.len() {
            out.push_str(ELLIPSIS);
        }
    }
    out
}

fn push_lossy(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => out.push_str(s),
        Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(sql: &str) -> String {
        normalize(sql.as_bytes(), 1000)
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            n("SELECT * FROM t WHERE a = 1 AND b = 'x''y' AND c = E'\\'' AND d = $$q$$"),
            "SELECT * FROM t WHERE a = ? AND b = ? AND c = ? AND d = ?"
        );
        assert_eq!(
            n("select 1.5e3, .5, 0x1F, B'01', X'ff', U&'a', N'n', $t$ x $t$"),
            "select ?, ?, ?, ?, ?, ?, ?, ?"
        );
    }

    #[test]
    fn params_identifiers_and_keywords_kept() {
        assert_eq!(
            n("SeLeCt \"Col\", x FROM s.t WHERE id=$1 AND y::int > -2"),
            "SeLeCt \"Col\", x FROM s.t WHERE id=$1 AND y::int > -?"
        );
    }

    #[test]
    fn whitespace_collapsed_and_comments_dropped() {
        assert_eq!(
            n("  SELECT\n\t 1 -- one\n ,  /* two /* nested */ */ 2  \n"),
            "SELECT ? , ?"
        );
        assert_eq!(n("a/**/b"), "a b");
        assert_eq!(n(""), "");
        assert_eq!(n("-- only a comment"), "");
    }

    #[test]
    fn continuation_literal_is_one_placeholder() {
        assert_eq!(n("SELECT 'a'\n  'b' FROM t"), "SELECT ? FROM t");
    }

    #[test]
    fn cut_at_char_boundary_with_ellipsis() {
        let sql = b"SELECT col_\xc3\xa9\xc3\xa9\xc3\xa9 FROM t";
        assert_eq!(normalize(sql, 16), "SELECT col_é…");
        // 12 bytes would split the é: cut before it.
        assert_eq!(normalize(sql, 15), "SELECT col_…");
        for max in 0..40 {
            assert!(normalize(sql, max).len() <= max);
        }
        assert_eq!(normalize(b"SELECT 1", 8), "SELECT ?");
        assert_eq!(normalize(b"SELECT 1", 2), "SE");
        assert_eq!(normalize(b"SELECT 1", 0), "");
    }

    #[test]
    fn latin1_and_unterminated_input() {
        assert_eq!(
            normalize(b"SELECT caf\xe9 FROM t", 100),
            "SELECT caf\u{fffd} FROM t"
        );
        assert_eq!(normalize(b"SELECT 'abc", 100), "SELECT ?");
        assert_eq!(normalize(b"SELECT $a$ abc", 100), "SELECT ?");
        assert_eq!(normalize(b"SELECT 1 /* open", 100), "SELECT ?");
        assert_eq!(normalize(b"SELECT \"open", 100), "SELECT \"open");
    }

    #[test]
    fn huge_input_stops_early() {
        let mut sql = b"SELECT ".to_vec();
        sql.extend(std::iter::repeat_n(b"a + 1 ".iter().copied(), 200_000).flatten());
        let s = normalize(&sql, 64);
        assert!(s.len() <= 64);
        assert!(s.starts_with("SELECT a + ? a + ?"), "{s}");
    }
}
