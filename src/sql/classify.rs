//! Fast SQL lexer and statement classifier for the text of a `Query` or `Parse` message.
//!
//! [`analyze`] tells the pooler what a SQL string does to the server session (transaction
//! control, session-level `SET`, role changes, prepared statements, temporary objects, held
//! cursors, `LISTEN`, session advisory locks, `DISCARD`, `COPY`, statements that cannot run in
//! a transaction block) and whether it touches a setting the tenant is not allowed to change.
//!
//! # The lexer
//!
//! The crate-private `Lexer` follows PostgreSQL's own scanner closely enough that it agrees
//! with the server on where every literal, quoted identifier and comment starts and ends:
//!
//! * `-- line` and nested `/* block /* comments */ */`;
//! * `'...'` with `''`, `E'...'` with backslash escapes, `N'...'`, `U&'...'`, `B'...'`, `X'...'`,
//!   and the SQL-standard continuation of a literal over a newline (`'a'` newline `'b'`), which
//!   keeps the escape rules of the first segment;
//! * `"..."` and `U&"..."` identifiers with `""`;
//! * `$$...$$` and `$tag$...$tag$` (a tag follows the identifier rules; `$1` is a parameter);
//! * numbers as PostgreSQL splits them (`1e'x'` is the number `1` then an `E'...'` literal);
//! * operators stop at `--` and `/*`, and lose a trailing `+`/`-` like in PostgreSQL (`=-1`).
//!
//! Bytes are never decoded as UTF-8: any ASCII-compatible server encoding (UTF8, LATIN1, ...)
//! works, bytes >= 0x80 are identifier characters outside literals, and no input panics. An
//! unterminated literal, identifier or comment runs to the end of the input.
//!
//! Because a client may turn `standard_conforming_strings` off, in which case `'...'` literals
//! treat `\` as an escape, [`analyze`] scans a second time in that mode whenever a plain literal
//! contains a backslash, and reports the union of both readings.
//!
//! # What the classifier recognises
//!
//! Statements are split on every `;` outside literals and comments. Leading keywords decide the
//! statement kind (see [`Flags`] for the list). A few things are recognised anywhere in the text
//! (outside literals and comments): calls of `set_config(...)` (also schema-qualified, quoted or
//! written with `U&"..."`), of the session-level advisory lock functions, `SELECT ... INTO TEMP`,
//! and `UPDATE pg_settings` (which is `set_config` in disguise; reported as
//! `UNCERTAIN | SET_SESSION`). The bodies of SQL-standard functions (`BEGIN ATOMIC ... END`) are
//! followed so that their final `END` is not taken for a `COMMIT`, and so they count as one
//! statement; the statements inside such a body are still classified, which errs on the safe
//! side (PostgreSQL rejects `SET` and the like there anyway).
//!
//! Recognition errs on the side of reporting: a `set_config(...)` or `UPDATE pg_settings` is
//! reported even where it would not run (inside `PREPARE`, `EXPLAIN` without `ANALYZE`, a `WHERE
//! false` branch), and a text the server would reject with a syntax error (which then runs
//! nothing at all) may still be reported.
//!
//! # Limits
//!
//! * Text cannot show what functions, procedures, triggers, rules, views, `EXECUTE` of a
//!   prepared statement or `DO` bodies do: `DO`, `CALL` and `LOAD` are reported as `UNCERTAIN`,
//!   the rest is not reported. `ALTER ROLE/DATABASE ... SET` (defaults for future sessions) is
//!   not reported either.
//! * `;` inside the parentheses of a multi-action `CREATE RULE ... DO (a; b)` splits the text
//!   like any other `;`: the actions are classified (and counted) as statements of their own.
//! * Unqualified `CREATE TABLE x` lands in `pg_temp` when `search_path` starts with `pg_temp`;
//!   only an explicit `pg_temp.` qualifier is seen (protect `search_path` to close that).
//! * Client encodings whose multibyte characters can contain the byte `\` (SJIS, BIG5, GBK, UHC,
//!   GB18030, JOHAB) are lexed as if they were ASCII-compatible, which they are not: the server
//!   converts them before lexing and may then disagree on where an `E'...'` literal or a dollar
//!   quote ends. A caller that relies on [`analyze`] for security must refuse those client
//!   encodings (or protect `client_encoding`, which `SET NAMES` is reported as).
//! * `SET SESSION AUTHORIZATION`/`SET ROLE` are only reported as [`Violation::Role`] when
//!   `guard_role_and_reset` is true; otherwise `protected` is asked about `"role"` or
//!   `"session_authorization"`.
//! * A setting name that is not valid UTF-8 (a LATIN1 byte, say) reaches `protected` and the
//!   violation with U+FFFD in place of each bad byte.
//! * The work is linear in the input (two passes at most, plus bounded look-ahead), with no
//!   recursion. Nothing is allocated except the `String` of a violation and, rarely, a setting
//!   name longer than 128 bytes or one that is not valid UTF-8.

use std::ops::{BitOr, BitOrAssign};

/// Bit set of what a SQL string (one Query message text, or one Parse text; may contain several
/// statements separated by `;`) does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags(pub u32);

impl Flags {
    /// `BEGIN`, `START TRANSACTION` (also `COMMIT/ROLLBACK/END/ABORT AND CHAIN`).
    pub const TXN_BEGIN: Flags = Flags(1 << 0);
    /// `COMMIT`, `END`, `ROLLBACK` (not `ROLLBACK TO SAVEPOINT`), `ABORT`,
    /// `PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK PREPARED`.
    pub const TXN_END: Flags = Flags(1 << 1);
    /// Cannot run inside a transaction block: `VACUUM`, `CREATE/DROP DATABASE`,
    /// `CREATE/DROP TABLESPACE`, `CREATE/DROP INDEX CONCURRENTLY`, `REINDEX ... CONCURRENTLY`,
    /// `REINDEX SYSTEM/DATABASE/SCHEMA`, `ALTER SYSTEM`, `CREATE/DROP SUBSCRIPTION`,
    /// `ALTER SUBSCRIPTION ... REFRESH/PUBLICATION`, `ALTER DATABASE ... SET TABLESPACE`,
    /// `DISCARD ALL`, `COMMIT PREPARED`, `ROLLBACK PREPARED`, `CLUSTER` without a table.
    pub const NON_TXN: Flags = Flags(1 << 2);
    /// Session-level `SET` (not `SET LOCAL`), `RESET x`, `RESET ALL`, `SET TIME ZONE/NAMES/
    /// SCHEMA`, `SET SESSION CHARACTERISTICS`, `set_config(.., .., false)` or with a third
    /// argument that is not a literal true, `UPDATE pg_settings`.
    pub const SET_SESSION: Flags = Flags(1 << 3);
    /// `SET [SESSION] ROLE`, `SET SESSION AUTHORIZATION`, `RESET ROLE`,
    /// `RESET SESSION AUTHORIZATION`, session-level `set_config('role', ...)`.
    pub const SET_ROLE: Flags = Flags(1 << 4);
    /// SQL-level `PREPARE name AS ...`.
    pub const PREPARE: Flags = Flags(1 << 5);
    /// `DEALLOCATE [PREPARE] name`.
    pub const DEALLOCATE: Flags = Flags(1 << 6);
    /// `DEALLOCATE [PREPARE] ALL`, `DISCARD ALL`.
    pub const DEALLOCATE_ALL: Flags = Flags(1 << 7);
    /// `CREATE TEMP/TEMPORARY TABLE/VIEW/SEQUENCE`, `CREATE ... pg_temp.x`,
    /// `SELECT ... INTO TEMP/TEMPORARY` or `INTO pg_temp.x`.
    pub const TEMP_OBJECT: Flags = Flags(1 << 8);
    /// `DECLARE ... WITH HOLD`.
    pub const WITH_HOLD: Flags = Flags(1 << 9);
    /// `LISTEN x`.
    pub const LISTEN: Flags = Flags(1 << 10);
    /// A call of `pg_advisory_lock`, `pg_advisory_lock_shared`, `pg_try_advisory_lock` or
    /// `pg_try_advisory_lock_shared` anywhere in the text.
    pub const ADVISORY_LOCK: Flags = Flags(1 << 11);
    /// `DISCARD TEMP/PLANS/SEQUENCES/ALL`.
    pub const DISCARD: Flags = Flags(1 << 12);
    /// May change session state in ways text can't show: `DO`, `CALL`, `LOAD`,
    /// `set_config(...)` whose first argument is not a string literal, `UPDATE pg_settings`.
    pub const UNCERTAIN: Flags = Flags(1 << 13);
    /// A `COPY` statement.
    pub const COPY: Flags = Flags(1 << 14);
    /// A statement follows a transaction end (`COMMIT; SELECT …`) in the same text.
    pub const AFTER_TXN_END: Flags = Flags(1 << 15);
    /// Transaction characteristics that PostgreSQL accepts only before the transaction's
    /// first query: `BEGIN`/`START TRANSACTION` with modes, `SET TRANSACTION …`.
    pub const TXN_MODES: Flags = Flags(1 << 16);
    /// Never set by [`analyze`]: the session adds it to the flags it keeps for a statement
    /// whose text reads nothing ([`Analysis::control_only`]), for when it is bound later.
    pub const CONTROL_ONLY: Flags = Flags(1 << 17);

    /// True if every bit of `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}

/// A statement that would change the tenant's protected context, found by `analyze`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// SET / SET LOCAL / RESET / set_config of a protected setting; holds the setting name as
    /// written, lower-cased, unquoted (e.g. "search_path", "app.tenant_id", "role").
    Setting(String),
    /// `SET [SESSION] ROLE` / `RESET ROLE` / `SET SESSION AUTHORIZATION` /
    /// `RESET SESSION AUTHORIZATION` (also `set_config('role', ...)`).
    Role,
    /// RESET ALL or DISCARD ALL.
    ResetAll,
}

/// Result of [`analyze`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Analysis {
    pub flags: Flags,
    /// Number of non-empty statements (0 for "", ";", "  -- comment").
    pub statements: u32,
    /// Every statement only controls the transaction or a setting (BEGIN/START,
    /// COMMIT/END/ABORT, ROLLBACK [TO], SAVEPOINT, RELEASE, SET …, RESET …): nothing is read,
    /// and nothing takes a snapshot (`SET TRANSACTION ISOLATION LEVEL` may still follow).
    pub control_only: bool,
    /// The first violation found, if `protected` said a name is protected.
    pub violation: Option<Violation>,
}

/// The first keyword of `sql` (after comments, whitespace and opening parentheses), or an
/// empty slice: what a statement is, for labelling one that failed before a command tag.
pub fn first_word(sql: &[u8]) -> &[u8] {
    let mut lx = Lexer::new(sql);
    while let Some(t) = lx.next_token() {
        match t.kind {
            TokenKind::Punct(b'(') => continue,
            TokenKind::Ident => return &sql[t.start..t.end],
            _ => break,
        }
    }
    &[]
}

/// Scan `sql` (bytes as received from the client; may be any ASCII-compatible server encoding
/// such as UTF8 or LATIN1 — never assumed to be valid UTF-8; never panics on any input).
///
/// `protected(name)` is asked, with the lower-cased unquoted setting name, whether the setting
/// is protected for this client; `role`/session authorization changes and RESET ALL/DISCARD ALL
/// count as violations only when `guard_role_and_reset` is true (i.e. the client is in a tenant).
/// "search_path" is also reported for `SET SCHEMA 'x'` (PostgreSQL's alias).
pub fn analyze(
    sql: &[u8],
    guard_role_and_reset: bool,
    protected: &dyn Fn(&str) -> bool,
) -> Analysis {
    let mut pass = Pass::new(sql, true, guard_role_and_reset, protected);
    pass.run();
    if pass.backslash_in_standard {
        // With standard_conforming_strings = off a backslash escapes the quote in '...': read
        // the text that way too and keep whatever either reading finds.
        let mut other = Pass::new(sql, false, guard_role_and_reset, protected);
        other.run();
        pass.flags |= other.flags;
        pass.all_control &= other.all_control;
        if pass.violation.is_none() {
            pass.violation = other.violation;
        }
    }
    Analysis {
        flags: pass.flags,
        statements: pass.statements,
        control_only: pass.statements > 0 && pass.all_control,
        violation: pass.violation,
    }
}

// ------------------------------------------------------------------------------------------
// Lexer
// ------------------------------------------------------------------------------------------

const C_IDENT_START: u8 = 1;
const C_IDENT_CONT: u8 = 2;
const C_DIGIT: u8 = 4;
const C_SPACE: u8 = 8;
const C_OP: u8 = 16;
const C_HEX: u8 = 32;

static CLASS: [u8; 256] = build_class();

const fn build_class() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut c = 0;
        if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            c |= C_IDENT_START | C_IDENT_CONT;
        }
        if b.is_ascii_digit() {
            c |= C_DIGIT | C_IDENT_CONT | C_HEX;
        }
        if b == b'$' {
            c |= C_IDENT_CONT;
        }
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            c |= C_SPACE;
        }
        if matches!(
            b,
            b'~' | b'!'
                | b'@'
                | b'#'
                | b'^'
                | b'&'
                | b'|'
                | b'`'
                | b'?'
                | b'+'
                | b'-'
                | b'*'
                | b'/'
                | b'%'
                | b'<'
                | b'>'
                | b'='
        ) {
            c |= C_OP;
        }
        if matches!(b, b'a'..=b'f' | b'A'..=b'F') {
            c |= C_HEX;
        }
        table[i] = c;
        i += 1;
    }
    table
}

#[inline]
fn class(b: u8) -> u8 {
    CLASS[b as usize]
}

#[inline]
fn is_ident_start(b: u8) -> bool {
    class(b) & C_IDENT_START != 0
}

/// Characters allowed in a dollar-quote tag after the first: identifier characters except `$`.
#[inline]
fn is_dolq_cont(b: u8) -> bool {
    class(b) & (C_IDENT_START | C_DIGIT) != 0
}

/// What kind of token the lexer found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// Unquoted identifier or keyword.
    Ident,
    /// `"..."` or `U&"..."`.
    QuotedIdent,
    /// `'...'`, `E'...'`, `N'...'`, `U&'...'`, `B'...'` or `X'...'`, with any continuation
    /// segments.
    String,
    /// `$tag$...$tag$`.
    DollarString,
    Number,
    /// `$1`.
    Param,
    /// A run of operator characters (`=`, `<>`, `||`, ...) or one of `::`, `:=`, `..`.
    Operator,
    /// Any other single byte: `( ) [ ] , ; . : $` and bytes PostgreSQL does not lex.
    Punct(u8),
}

/// One token: its kind and byte range in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) kind: TokenKind,
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// False for a literal, quoted identifier or dollar quote cut off by the end of input.
    pub(crate) terminated: bool,
}

/// Splits SQL text into tokens, skipping whitespace and comments. Copy it to look ahead.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    standard_strings: bool,
    backslash_in_standard: bool,
}

impl<'a> Lexer<'a> {
    /// A lexer with `standard_conforming_strings = on` (PostgreSQL's default).
    pub(crate) fn new(src: &'a [u8]) -> Self {
        Self::with_standard_strings(src, true)
    }

    /// A lexer for the given `standard_conforming_strings` setting.
    pub(crate) fn with_standard_strings(src: &'a [u8], standard_conforming_strings: bool) -> Self {
        Lexer {
            src,
            pos: 0,
            standard_strings: standard_conforming_strings,
            backslash_in_standard: false,
        }
    }

    /// The next token, or `None` at the end of input.
    pub(crate) fn next_token(&mut self) -> Option<Token> {
        self.next_token_inline()
    }

    /// [`Lexer::next_token`] for the one hot loop: inlined, the token stays in registers.
    #[inline(always)]
    fn next_token_inline(&mut self) -> Option<Token> {
        let s = self.src;
        let len = s.len();
        let mut i = self.pos;
        loop {
            if i >= len {
                self.pos = len;
                return None;
            }
            let b = s[i];
            if class(b) & C_SPACE != 0 {
                i += 1;
            } else if b != b'-' && b != b'/' {
                break;
            } else if b == b'-' && s.get(i + 1) == Some(&b'-') {
                i = skip_line_comment(s, i + 2);
            } else if b == b'/' && s.get(i + 1) == Some(&b'*') {
                i = skip_block_comment(s, i + 2);
            } else {
                break;
            }
        }
        let start = i;
        let b = s[i];
        let next = s.get(i + 1).copied();
        let (kind, end, terminated) = match b {
            b'\'' => self.single_quoted(start + 1, !self.standard_strings, true, true),
            b'"' => {
                let (end, t) = scan_quoted_ident(s, start + 1);
                (TokenKind::QuotedIdent, end, t)
            }
            b'$' => scan_dollar(s, start),
            b'0'..=b'9' => (TokenKind::Number, scan_number(s, start), true),
            b'.' => match next {
                Some(b'0'..=b'9') => (TokenKind::Number, scan_number(s, start), true),
                Some(b'.') => (TokenKind::Operator, start + 2, true),
                _ => (TokenKind::Punct(b'.'), start + 1, true),
            },
            b':' => match next {
                Some(b':' | b'=') => (TokenKind::Operator, start + 2, true),
                _ => (TokenKind::Punct(b':'), start + 1, true),
            },
            b'(' | b')' | b'[' | b']' | b',' | b';' => (TokenKind::Punct(b), start + 1, true),
            _ if class(b) & C_OP != 0 => (TokenKind::Operator, scan_operator(s, start), true),
            _ if is_ident_start(b) && !matches!(next, Some(b'\'' | b'&')) => {
                (TokenKind::Ident, scan_ident(s, start + 1), true)
            }
            _ if is_ident_start(b) => {
                let next2 = s.get(i + 2).copied();
                match (b | 0x20, next, next2) {
                    (b'e', Some(b'\''), _) => self.single_quoted(start + 2, true, true, false),
                    (b'n', Some(b'\''), _) => {
                        self.single_quoted(start + 2, !self.standard_strings, true, true)
                    }
                    (b'b' | b'x', Some(b'\''), _) => {
                        self.single_quoted(start + 2, false, false, false)
                    }
                    (b'u', Some(b'&'), Some(b'\'')) => {
                        self.single_quoted(start + 3, false, true, false)
                    }
                    (b'u', Some(b'&'), Some(b'"')) => {
                        let (end, t) = scan_quoted_ident(s, start + 3);
                        (TokenKind::QuotedIdent, end, t)
                    }
                    _ => (TokenKind::Ident, scan_ident(s, start + 1), true),
                }
            }
            _ => (TokenKind::Punct(b), start + 1, true),
        };
        self.pos = end;
        Some(Token {
            kind,
            start,
            end,
            terminated,
        })
    }

    fn single_quoted(
        &mut self,
        body: usize,
        backslash_escapes: bool,
        doubled_quote: bool,
        standard: bool,
    ) -> (TokenKind, usize, bool) {
        let (end, terminated, saw_backslash) =
            scan_single_quoted(self.src, body, backslash_escapes, doubled_quote);
        if standard && saw_backslash {
            self.backslash_in_standard = true;
        }
        (TokenKind::String, end, terminated)
    }

    fn src(&self) -> &'a [u8] {
        self.src
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;
    fn next(&mut self) -> Option<Token> {
        self.next_token()
    }
}

/// End of an identifier whose remaining characters start at `i`.
#[inline(always)]
fn scan_ident(s: &[u8], i: usize) -> usize {
    let rest = &s[i..];
    let mut k = 0;
    while k < rest.len() && class(rest[k]) & C_IDENT_CONT != 0 {
        k += 1;
    }
    i + k
}

/// Index of the newline ending a `--` comment whose text starts at `i` (or the input length).
fn skip_line_comment(s: &[u8], i: usize) -> usize {
    match s
        .get(i..)
        .and_then(|rest| rest.iter().position(|&c| c == b'\n' || c == b'\r'))
    {
        Some(k) => i + k,
        None => s.len(),
    }
}

/// Index just after the `*/` closing a (nested) block comment whose text starts at `i`.
fn skip_block_comment(s: &[u8], mut i: usize) -> usize {
    let len = s.len();
    let mut depth = 1usize;
    while i < len {
        match s[i] {
            b'*' if s.get(i + 1) == Some(&b'/') => {
                i += 2;
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            b'/' if s.get(i + 1) == Some(&b'*') => {
                i += 2;
                depth += 1;
            }
            _ => i += 1,
        }
    }
    len
}

/// Scans a `'`-quoted literal body starting just after the opening quote.
/// Returns (end, terminated, saw a backslash).
fn scan_single_quoted(
    s: &[u8],
    mut i: usize,
    backslash_escapes: bool,
    doubled_quote: bool,
) -> (usize, bool, bool) {
    let len = s.len();
    let mut saw_backslash = false;
    loop {
        while i < len && s[i] != b'\'' && s[i] != b'\\' {
            i += 1;
        }
        if i >= len {
            return (len, false, saw_backslash);
        }
        if s[i] == b'\\' {
            saw_backslash = true;
            i += if backslash_escapes { 2 } else { 1 };
            continue;
        }
        i += 1;
        if doubled_quote && s.get(i) == Some(&b'\'') {
            i += 1;
            continue;
        }
        match quote_continuation(s, i) {
            Some(j) => i = j,
            None => return (i, true, saw_backslash),
        }
    }
}

/// After a closing quote at `i - 1`: if whitespace containing a newline (and possibly `--`
/// comments) and then a quote follow, the literal continues; returns the index after that quote.
fn quote_continuation(s: &[u8], mut j: usize) -> Option<usize> {
    loop {
        match s.get(j) {
            Some(b' ' | b'\t' | 0x0c) => j += 1,
            Some(b'-') if s.get(j + 1) == Some(&b'-') => j = skip_line_comment(s, j + 2),
            _ => break,
        }
    }
    match s.get(j) {
        Some(b'\n' | b'\r') => j += 1,
        _ => return None,
    }
    loop {
        match s.get(j) {
            Some(&c) if class(c) & C_SPACE != 0 => j += 1,
            Some(b'-') if s.get(j + 1) == Some(&b'-') => {
                j = skip_line_comment(s, j + 2);
                match s.get(j) {
                    Some(b'\n' | b'\r') => j += 1,
                    _ => return None,
                }
            }
            _ => break,
        }
    }
    if s.get(j) == Some(&b'\'') {
        Some(j + 1)
    } else {
        None
    }
}

/// Scans a `"`-quoted identifier body starting just after the opening quote.
fn scan_quoted_ident(s: &[u8], mut i: usize) -> (usize, bool) {
    loop {
        match s
            .get(i..)
            .and_then(|rest| rest.iter().position(|&c| c == b'"'))
        {
            None => return (s.len(), false),
            Some(k) => {
                i += k + 1;
                if s.get(i) == Some(&b'"') {
                    i += 1;
                } else {
                    return (i, true);
                }
            }
        }
    }
}

/// Scans what starts with `$` at `start`: a parameter, a dollar quote or a lone `$`.
fn scan_dollar(s: &[u8], start: usize) -> (TokenKind, usize, bool) {
    let len = s.len();
    let mut i = start + 1;
    if i < len && s[i].is_ascii_digit() {
        while i < len && s[i].is_ascii_digit() {
            i += 1;
        }
        return (TokenKind::Param, i, true);
    }
    let tag_start = i;
    if i < len && is_ident_start(s[i]) {
        i += 1;
        while i < len && is_dolq_cont(s[i]) {
            i += 1;
        }
    }
    if i >= len || s[i] != b'$' {
        return (TokenKind::Punct(b'$'), start + 1, true);
    }
    let tag = &s[tag_start..i];
    let mut j = i + 1;
    loop {
        let Some(k) = s[j..].iter().position(|&c| c == b'$') else {
            return (TokenKind::DollarString, len, false);
        };
        let d = j + k;
        let mut e = d + 1;
        if e < len && is_ident_start(s[e]) {
            e += 1;
            while e < len && is_dolq_cont(s[e]) {
                e += 1;
            }
        }
        if e < len && s[e] == b'$' && &s[d + 1..e] == tag {
            return (TokenKind::DollarString, e + 1, true);
        }
        // Resume at the `$` that ended a wrong candidate: it may open the real delimiter.
        j = e;
    }
}

/// Scans a number the way PostgreSQL splits it; trailing junk becomes the next token.
fn scan_number(s: &[u8], start: usize) -> usize {
    let len = s.len();
    let digit_run = |mut i: usize, ok: fn(u8) -> bool| -> usize {
        while i < len {
            if ok(s[i]) {
                i += 1;
            } else if s[i] == b'_' && i + 1 < len && ok(s[i + 1]) && i > start {
                i += 2;
            } else {
                break;
            }
        }
        i
    };
    if s[start] == b'0' && start + 1 < len {
        let ok: Option<fn(u8) -> bool> = match s[start + 1] {
            b'x' | b'X' => Some(|c| class(c) & C_HEX != 0),
            b'o' | b'O' => Some(|c| matches!(c, b'0'..=b'7')),
            b'b' | b'B' => Some(|c| matches!(c, b'0' | b'1')),
            _ => None,
        };
        if let Some(ok) = ok {
            let mut j = start + 2;
            if j < len && s[j] == b'_' {
                j += 1;
            }
            if j < len && ok(s[j]) {
                return digit_run(j, ok);
            }
        }
    }
    let is_digit: fn(u8) -> bool = |c| c.is_ascii_digit();
    let mut i = digit_run(start, is_digit);
    if i < len && s[i] == b'.' && s.get(i + 1) != Some(&b'.') {
        i = digit_run(i + 1, is_digit);
    }
    if i < len && (s[i] | 0x20) == b'e' {
        let mut j = i + 1;
        if j < len && (s[j] == b'+' || s[j] == b'-') {
            j += 1;
        }
        if j < len && s[j].is_ascii_digit() {
            i = digit_run(j, is_digit);
        }
    }
    i
}

/// Scans an operator: a run of operator characters that stops before `--` or `/*`, minus a
/// trailing `+`/`-` unless the run contains one of `~!@#^&|`?%` (PostgreSQL's rule).
fn scan_operator(s: &[u8], start: usize) -> usize {
    let len = s.len();
    let mut i = start;
    while i < len && class(s[i]) & C_OP != 0 {
        if i > start
            && matches!(
                (s[i], s.get(i + 1)),
                (b'-', Some(b'-')) | (b'/', Some(b'*'))
            )
        {
            break;
        }
        i += 1;
    }
    if i - start > 1 && matches!(s[i - 1], b'+' | b'-') {
        let special = s[start..i - 1].iter().any(|c| b"~!@#^&|`?%".contains(c));
        if !special {
            while i - start > 1 && matches!(s[i - 1], b'+' | b'-') {
                i -= 1;
            }
        }
    }
    i
}

// ------------------------------------------------------------------------------------------
// Decoding literals and identifiers (only for names the classifier has to compare)
// ------------------------------------------------------------------------------------------

/// Lower-cased bytes of a setting or function name; heap only for long names.
struct NameBuf {
    inline: [u8; 128],
    len: usize,
    heap: Vec<u8>,
    spilled: bool,
}

impl NameBuf {
    fn new() -> Self {
        NameBuf {
            inline: [0; 128],
            len: 0,
            heap: Vec::new(),
            spilled: false,
        }
    }

    fn push(&mut self, b: u8) {
        let b = b.to_ascii_lowercase();
        if !self.spilled {
            if self.len < self.inline.len() {
                self.inline[self.len] = b;
                self.len += 1;
                return;
            }
            self.heap.extend_from_slice(&self.inline[..self.len]);
            self.spilled = true;
        }
        self.heap.push(b);
    }

    /// Appends a Unicode code point as UTF-8; false for NUL, surrogates or out of range.
    fn push_code_point(&mut self, cp: u32) -> bool {
        match char::from_u32(cp) {
            Some(c) if cp != 0 => {
                let mut tmp = [0u8; 4];
                for &b in c.encode_utf8(&mut tmp).as_bytes() {
                    self.push(b);
                }
                true
            }
            _ => false,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        if self.spilled {
            &self.heap
        } else {
            &self.inline[..self.len]
        }
    }

    fn len(&self) -> usize {
        self.as_bytes().len()
    }

    fn truncate(&mut self, n: usize) {
        if self.spilled {
            self.heap.truncate(n);
        } else {
            self.len = self.len.min(n);
        }
    }

    fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match std::str::from_utf8(self.as_bytes()) {
            Ok(s) => f(s),
            Err(_) => f(&String::from_utf8_lossy(self.as_bytes())),
        }
    }
}

/// Iterates over the content bytes of a quoted token, collapsing doubled quotes and following
/// literal continuations. With `backslash` set, the byte after a `\` is passed through without
/// being taken for a quote (the escape itself is decoded by the caller).
struct QuotedBytes<'a> {
    s: &'a [u8],
    i: usize,
    end: usize,
    quote: u8,
    backslash: bool,
    escaped: bool,
}

impl Iterator for QuotedBytes<'_> {
    type Item = u8;
    fn next(&mut self) -> Option<u8> {
        loop {
            if self.i >= self.end {
                return None;
            }
            let c = self.s[self.i];
            self.i += 1;
            if self.escaped {
                self.escaped = false;
                return Some(c);
            }
            if c == b'\\' && self.backslash {
                self.escaped = true;
                return Some(c);
            }
            if c != self.quote {
                return Some(c);
            }
            if self.s.get(self.i) == Some(&self.quote) && self.i < self.end {
                self.i += 1;
                return Some(c);
            }
            let cont = if self.quote == b'\'' {
                quote_continuation(self.s, self.i)
            } else {
                None
            };
            match cont {
                Some(j) if j <= self.end => self.i = j,
                _ => {
                    self.i = self.end;
                    return None;
                }
            }
        }
    }
}

fn hex_value(c: u8) -> Option<u32> {
    (c as char).to_digit(16)
}

/// Reads between `min` and `max` hex digits.
fn read_hex(
    it: &mut std::iter::Peekable<impl Iterator<Item = u8>>,
    min: usize,
    max: usize,
) -> Option<u32> {
    let mut v = 0u32;
    let mut n = 0;
    while n < max {
        match it.peek().and_then(|&c| hex_value(c)) {
            Some(d) => {
                v = v * 16 + d;
                n += 1;
                it.next();
            }
            None => break,
        }
    }
    (n >= min).then_some(v)
}

/// Decodes `E'...'` escapes; false where PostgreSQL would raise an error (or we won't guess).
fn decode_backslash_escapes(bytes: impl Iterator<Item = u8>, out: &mut NameBuf) -> bool {
    let mut it = bytes.peekable();
    while let Some(c) = it.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(d) = it.next() else {
            return true;
        };
        match d {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'0'..=b'7' => {
                let mut v = u32::from(d - b'0');
                for _ in 0..2 {
                    match it.peek() {
                        Some(&o @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(o - b'0');
                            it.next();
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => match read_hex(&mut it, 1, 2) {
                Some(v) => out.push(v as u8),
                None => out.push(b'x'),
            },
            b'u' | b'U' => {
                let n = if d == b'u' { 4 } else { 8 };
                let Some(mut cp) = read_hex(&mut it, n, n) else {
                    return false;
                };
                if (0xd800..0xdc00).contains(&cp) {
                    // A UTF-16 pair: the low half must follow as another escape.
                    let n = match (it.next(), it.next()) {
                        (Some(b'\\'), Some(b'u')) => 4,
                        (Some(b'\\'), Some(b'U')) => 8,
                        _ => return false,
                    };
                    match read_hex(&mut it, n, n).and_then(|lo| combine_surrogates(cp, lo)) {
                        Some(c) => cp = c,
                        None => return false,
                    }
                }
                if !out.push_code_point(cp) {
                    return false;
                }
            }
            other => out.push(other),
        }
    }
    true
}

/// Decodes `U&` escapes with escape character `esc`.
fn decode_unicode_escapes(bytes: impl Iterator<Item = u8>, esc: u8, out: &mut NameBuf) -> bool {
    let mut it = bytes.peekable();
    while let Some(c) = it.next() {
        if c != esc {
            out.push(c);
            continue;
        }
        let n = match it.peek() {
            Some(&e) if e == esc => {
                it.next();
                out.push(esc);
                continue;
            }
            Some(b'+') => {
                it.next();
                6
            }
            _ => 4,
        };
        let Some(mut cp) = read_hex(&mut it, n, n) else {
            return false;
        };
        if (0xd800..0xdc00).contains(&cp) {
            if it.next() != Some(esc) {
                return false;
            }
            let n = if it.peek() == Some(&b'+') {
                it.next();
                6
            } else {
                4
            };
            match read_hex(&mut it, n, n).and_then(|lo| combine_surrogates(cp, lo)) {
                Some(c) => cp = c,
                None => return false,
            }
        }
        if !out.push_code_point(cp) {
            return false;
        }
    }
    true
}

fn combine_surrogates(hi: u32, lo: u32) -> Option<u32> {
    (0xdc00..0xe000)
        .contains(&lo)
        .then(|| 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00))
}

// ------------------------------------------------------------------------------------------
// Classifier
// ------------------------------------------------------------------------------------------

/// Tokens of one statement: ends at `;` or the end of input.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    lx: Lexer<'a>,
    done: bool,
}

impl<'a> Cursor<'a> {
    fn new(lx: Lexer<'a>) -> Self {
        Cursor { lx, done: false }
    }

    fn next(&mut self) -> Option<Token> {
        if self.done {
            return None;
        }
        match self.lx.next_token() {
            Some(t) if t.kind != TokenKind::Punct(b';') => Some(t),
            _ => {
                self.done = true;
                None
            }
        }
    }

    fn peek(&self) -> Option<Token> {
        let mut copy = *self;
        copy.next()
    }

    fn src(&self) -> &'a [u8] {
        self.lx.src()
    }

    fn is_kw(&self, t: Option<Token>, kw: &str) -> bool {
        t.is_some_and(|t| is_kw(self.src(), t, kw))
    }

    fn peek_kw(&self, kw: &str) -> bool {
        self.is_kw(self.peek(), kw)
    }

    /// Consumes the next token if it is the keyword `kw`.
    fn eat_kw(&mut self, kw: &str) -> bool {
        let yes = self.peek_kw(kw);
        if yes {
            self.next();
        }
        yes
    }

    fn peek_punct(&self, p: u8) -> bool {
        self.peek().is_some_and(|t| t.kind == TokenKind::Punct(p))
    }

    /// Skips to just after the `)` matching an already consumed `(`.
    fn skip_group(&mut self) {
        let mut depth = 1u32;
        while let Some(t) = self.next() {
            match t.kind {
                TokenKind::Punct(b'(') => depth = depth.saturating_add(1),
                TokenKind::Punct(b')') => {
                    depth -= 1;
                    if depth == 0 {
                        return;
                    }
                }
                _ => {}
            }
        }
    }

    /// Consumes `UESCAPE 'c'` if present: Some(escape char), None if malformed.
    fn take_uescape(&mut self) -> Option<u8> {
        if !self.eat_kw("uescape") {
            return Some(b'\\');
        }
        let t = self.next()?;
        let s = self.src();
        let text = &s[t.start..t.end];
        if t.kind != TokenKind::String || text.len() != 3 || text[0] != b'\'' || !t.terminated {
            return None;
        }
        let c = text[1];
        let bad =
            c.is_ascii_hexdigit() || matches!(c, b'+' | b'\'' | b'"') || class(c) & C_SPACE != 0;
        (!bad).then_some(c)
    }
}

fn is_kw(src: &[u8], t: Token, kw: &str) -> bool {
    t.kind == TokenKind::Ident && src[t.start..t.end].eq_ignore_ascii_case(kw.as_bytes())
}

/// Lower-cases a short keyword into `buf`; empty if it is too long to be one we know.
fn lower<'b>(text: &[u8], buf: &'b mut [u8; 16]) -> &'b [u8] {
    if text.len() > buf.len() {
        return &[];
    }
    for (d, s) in buf.iter_mut().zip(text) {
        *d = s.to_ascii_lowercase();
    }
    &buf[..text.len()]
}

fn is_pg_temp(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"pg_temp")
        || (name.len() > 8
            && name[..8].eq_ignore_ascii_case(b"pg_temp_")
            && name[8..].iter().all(u8::is_ascii_digit))
}

fn is_role_name(name: &str) -> bool {
    name == "role" || name == "session_authorization"
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    SetConfig,
    AdvisoryLock,
}

#[inline(always)]
fn call_kind(name: &[u8]) -> Option<Call> {
    if !matches!(name.len(), 10 | 16 | 20 | 23 | 27) {
        return None;
    }
    call_kind_slow(name)
}

fn call_kind_slow(name: &[u8]) -> Option<Call> {
    let eq = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    match name.len() {
        10 if eq("set_config") => Some(Call::SetConfig),
        16 if eq("pg_advisory_lock") => Some(Call::AdvisoryLock),
        20 if eq("pg_try_advisory_lock") => Some(Call::AdvisoryLock),
        23 if eq("pg_advisory_lock_shared") => Some(Call::AdvisoryLock),
        27 if eq("pg_try_advisory_lock_shared") => Some(Call::AdvisoryLock),
        _ => None,
    }
}

/// What the third argument of an open `set_config(` call looks like so far.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Third {
    #[default]
    Empty,
    True,
    Cast,
    CastType,
    Other,
}

/// An open `set_config(` call.
#[derive(Clone, Copy, Default)]
struct Frame {
    depth: u32,
    arg: u32,
    third: Third,
    role: bool,
}

const MAX_FRAMES: usize = 8;

/// What the leading keywords of a statement told the token scan.
#[derive(Default)]
struct Head {
    nonempty: bool,
    /// A SELECT-like statement: `INTO TEMP` creates a temporary table.
    into_check: bool,
    /// `CREATE [OR REPLACE] FUNCTION/PROCEDURE`: may have a `BEGIN ATOMIC ... END` body.
    routine: bool,
    /// Inside such a body, this piece starts with the `END` that closes it.
    ends_body: bool,
    /// Transaction control only (see [`Analysis::control_only`]).
    control: bool,
}

struct Pass<'a, 'p> {
    src: &'a [u8],
    standard_strings: bool,
    guard: bool,
    protected: &'p dyn Fn(&str) -> bool,
    flags: Flags,
    statements: u32,
    violation: Option<Violation>,
    backslash_in_standard: bool,
    /// Every non-empty statement so far was transaction control.
    all_control: bool,
}

impl<'a, 'p> Pass<'a, 'p> {
    fn new(
        src: &'a [u8],
        standard_strings: bool,
        guard: bool,
        protected: &'p dyn Fn(&str) -> bool,
    ) -> Self {
        Pass {
            src,
            standard_strings,
            guard,
            protected,
            flags: Flags::default(),
            statements: 0,
            violation: None,
            backslash_in_standard: false,
            all_control: true,
        }
    }

    fn kw(&self, t: Token, kw: &str) -> bool {
        is_kw(self.src, t, kw)
    }

    fn text(&self, t: Token) -> &'a [u8] {
        &self.src[t.start..t.end]
    }

    // ---- violations ------------------------------------------------------------------

    /// A setting named `name` is changed; `session` if beyond the current transaction.
    fn setting(&mut self, name: &str, session: bool) {
        if session {
            self.flags |= Flags::SET_SESSION;
        }
        if self.violation.is_none() && (self.protected)(name) {
            self.violation = Some(Violation::Setting(name.to_owned()));
        }
    }

    /// The role or session authorization is changed.
    fn role_change(&mut self, name: &str, session: bool) {
        if session {
            self.flags |= Flags::SET_ROLE;
        }
        if self.violation.is_none() {
            if self.guard {
                self.violation = Some(Violation::Role);
            } else if (self.protected)(name) {
                self.violation = Some(Violation::Setting(name.to_owned()));
            }
        }
    }

    fn reset_all(&mut self) {
        if self.guard && self.violation.is_none() {
            self.violation = Some(Violation::ResetAll);
        }
    }

    fn named(&mut self, name: &NameBuf, session: bool) {
        name.with_str(|n| {
            if is_role_name(n) {
                self.role_change(n, session)
            } else {
                self.setting(n, session)
            }
        });
    }

    // ---- the scan ----------------------------------------------------------------------

    fn run(&mut self) {
        let mut lx = Lexer::with_standard_strings(self.src, self.standard_strings);
        // Inside the `BEGIN ATOMIC ... END` body of a routine definition; `;` does not end it.
        let mut atomic = false;
        let mut routine = false;
        loop {
            let in_atomic = atomic;
            let ended_before = self.flags.contains(Flags::TXN_END);
            let head = self.head(Cursor::new(lx), in_atomic);
            if in_atomic && head.ends_body {
                atomic = false;
            }
            if !in_atomic {
                routine = head.routine;
                if head.nonempty {
                    self.all_control &= head.control;
                    self.statements = self.statements.saturating_add(1);
                    if ended_before {
                        self.flags |= Flags::AFTER_TXN_END;
                    }
                }
            }
            let mut depth = 0u32;
            let mut frames = [Frame::default(); MAX_FRAMES];
            let mut open = 0usize;
            let mut prev: Option<Token> = None;
            let mut pg_settings_seen = false;
            let mut at_end = true;
            while let Some(t) = lx.next_token_inline() {
                match t.kind {
                    TokenKind::Punct(b';') => {
                        at_end = false;
                        break;
                    }
                    TokenKind::Punct(b')' | b']') => {
                        if open > 0 && frames[open - 1].depth == depth {
                            open -= 1;
                            self.finish_call(frames[open], true);
                        }
                        depth = depth.saturating_sub(1);
                    }
                    TokenKind::Punct(b',') => {
                        if open > 0 && frames[open - 1].depth == depth {
                            frames[open - 1].arg = frames[open - 1].arg.saturating_add(1);
                        }
                    }
                    kind => {
                        if open > 0 && frames[open - 1].depth == depth {
                            self.feed_third(&mut frames[open - 1], t);
                        }
                        match kind {
                            TokenKind::Punct(b'(' | b'[') => depth = depth.saturating_add(1),
                            TokenKind::Ident | TokenKind::QuotedIdent => {
                                match self.call_target(t, lx) {
                                    Some((Call::SetConfig, args)) => {
                                        let role = self.set_config_name(args);
                                        let frame = Frame {
                                            depth: depth.saturating_add(1),
                                            role,
                                            ..Frame::default()
                                        };
                                        if open < MAX_FRAMES {
                                            frames[open] = frame;
                                            open += 1;
                                        } else {
                                            self.finish_call(frame, false);
                                        }
                                    }
                                    Some((Call::AdvisoryLock, _)) => {
                                        self.flags |= Flags::ADVISORY_LOCK
                                    }
                                    None => {}
                                }
                                if kind == TokenKind::Ident {
                                    self.keyword_in_body(t, prev, lx, &head, &mut pg_settings_seen);
                                    if routine && depth == 0 {
                                        self.track_atomic(t, prev, &mut atomic);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                prev = Some(t);
            }
            for frame in &frames[..open] {
                self.finish_call(*frame, false);
            }
            if at_end {
                break;
            }
        }
        self.backslash_in_standard = lx.backslash_in_standard;
    }

    /// Keywords that matter wherever they appear in a statement.
    fn keyword_in_body(
        &mut self,
        t: Token,
        prev: Option<Token>,
        lx: Lexer<'a>,
        head: &Head,
        pg_settings_seen: &mut bool,
    ) {
        let text = self.text(t);
        match text.len() {
            6 if text.eq_ignore_ascii_case(b"update")
                && self.updates_pg_settings(Cursor::new(lx)) =>
            {
                self.flags |= Flags::UNCERTAIN | Flags::SET_SESSION;
                if !*pg_settings_seen {
                    *pg_settings_seen = true;
                    self.pg_settings_names(Cursor::new(lx));
                }
            }
            4 if head.into_check && text.eq_ignore_ascii_case(b"into") => {
                let after_insert =
                    prev.is_some_and(|p| self.kw(p, "insert") || self.kw(p, "merge"));
                if !after_insert && self.selects_into_temp(Cursor::new(lx)) {
                    self.flags |= Flags::TEMP_OBJECT;
                }
            }
            _ => {}
        }
    }

    /// Follows `BEGIN ATOMIC` in a routine definition. PostgreSQL's grammar puts the `END`
    /// closing the body right after `ATOMIC` or after a `;`, so only an `END` starting a
    /// `;`-separated piece ends it (see [`Head::ends_body`]); an `END` elsewhere closes a `CASE`
    /// or is a column label (`SELECT 1 end`).
    fn track_atomic(&self, t: Token, prev: Option<Token>, atomic: &mut bool) {
        let Some(p) = prev else {
            return;
        };
        if !*atomic && self.kw(t, "atomic") && self.kw(p, "begin") {
            *atomic = true;
        } else if *atomic && self.kw(t, "end") && self.kw(p, "atomic") {
            *atomic = false;
        }
    }

    // ---- function calls ----------------------------------------------------------------

    /// If `t` names one of the functions we watch and is followed by `(`, the call and a cursor
    /// just after the `(`.
    #[inline(always)]
    fn call_target(&self, t: Token, lx: Lexer<'a>) -> Option<(Call, Cursor<'a>)> {
        if t.kind == TokenKind::Ident {
            let call = call_kind(self.text(t))?;
            let mut c = Cursor::new(lx);
            return (c.next()?.kind == TokenKind::Punct(b'(')).then_some((call, c));
        }
        let mut c = Cursor::new(lx);
        let call = {
            let s = self.src;
            let plain = s[t.start] == b'"' && t.terminated && t.end - t.start >= 2;
            let inner = if plain {
                &s[t.start + 1..t.end - 1]
            } else {
                &[][..]
            };
            if plain && !inner.contains(&b'"') {
                call_kind(inner)?
            } else {
                let mut name = NameBuf::new();
                if !self.push_ident(&mut c, t, &mut name) {
                    return None;
                }
                call_kind(name.as_bytes())?
            }
        };
        if c.next()?.kind != TokenKind::Punct(b'(') {
            return None;
        }
        Some((call, c))
    }

    /// Checks the first argument of `set_config(`; returns whether it names the role.
    fn set_config_name(&mut self, mut c: Cursor<'a>) -> bool {
        let mut name = NameBuf::new();
        if !self.literal_then_comma(&mut c, &mut name) {
            self.flags |= Flags::UNCERTAIN;
            return false;
        }
        let role = name.with_str(is_role_name);
        if role {
            name.with_str(|n| self.role_change(n, false));
        } else {
            name.with_str(|n| self.setting(n, false));
        }
        role
    }

    /// A string literal, optionally cast (`::text`), followed by `,`; decoded into `out`.
    fn literal_then_comma(&self, c: &mut Cursor<'a>, out: &mut NameBuf) -> bool {
        let Some(t) = c.next() else {
            return false;
        };
        if !self.decode_literal(c, t, out) {
            return false;
        }
        let mut casts = 0;
        while c
            .peek()
            .is_some_and(|t| self.text(t) == b"::" && t.kind == TokenKind::Operator)
        {
            c.next();
            loop {
                casts += 1;
                match c.next() {
                    Some(t) if matches!(t.kind, TokenKind::Ident | TokenKind::QuotedIdent) => {}
                    _ => return false,
                }
                if casts > 8 {
                    return false;
                }
                if c.peek_punct(b'.') {
                    c.next();
                } else {
                    break;
                }
            }
        }
        c.next().is_some_and(|t| t.kind == TokenKind::Punct(b','))
    }

    /// Decodes a character-string literal token (consuming a `UESCAPE` clause after `U&'...'`).
    /// False for anything else, bit strings, or escapes PostgreSQL would reject.
    fn decode_literal(&self, c: &mut Cursor<'a>, t: Token, out: &mut NameBuf) -> bool {
        let s = self.src;
        match t.kind {
            TokenKind::DollarString => {
                let tag_len = s[t.start + 1..t.end]
                    .iter()
                    .position(|&b| b == b'$')
                    .unwrap_or(0);
                let body = t.start + tag_len + 2;
                let end = if t.terminated {
                    t.end - tag_len - 2
                } else {
                    t.end
                };
                for &b in &s[body.min(end)..end] {
                    out.push(b);
                }
                true
            }
            TokenKind::String => {
                let (body, escapes, unicode) = match s[t.start] | 0x20 {
                    b'\'' => (t.start + 1, !self.standard_strings, false),
                    b'n' => (t.start + 2, !self.standard_strings, false),
                    b'e' => (t.start + 2, true, false),
                    b'u' => (t.start + 3, false, true),
                    _ => return false,
                };
                let bytes = QuotedBytes {
                    s,
                    i: body,
                    end: t.end,
                    quote: b'\'',
                    backslash: escapes,
                    escaped: false,
                };
                if unicode {
                    match c.take_uescape() {
                        Some(esc) => decode_unicode_escapes(bytes, esc, out),
                        None => false,
                    }
                } else if escapes {
                    decode_backslash_escapes(bytes, out)
                } else {
                    for b in bytes {
                        out.push(b);
                    }
                    true
                }
            }
            _ => false,
        }
    }

    /// Appends the value of an identifier (lower-cased, unquoted, `U&` escapes decoded,
    /// truncated to 63 bytes like PostgreSQL does); false if `t` is not an identifier.
    fn push_ident(&self, c: &mut Cursor<'a>, t: Token, out: &mut NameBuf) -> bool {
        let s = self.src;
        let start_len = out.len();
        match t.kind {
            TokenKind::Ident => {
                for &b in &s[t.start..t.end] {
                    out.push(b);
                }
            }
            TokenKind::QuotedIdent => {
                let unicode = s[t.start] != b'"';
                let bytes = QuotedBytes {
                    s,
                    i: t.start + if unicode { 3 } else { 1 },
                    end: t.end,
                    quote: b'"',
                    backslash: false,
                    escaped: false,
                };
                if unicode {
                    let ok = match c.take_uescape() {
                        Some(esc) => decode_unicode_escapes(bytes, esc, out),
                        None => false,
                    };
                    if !ok {
                        return false;
                    }
                } else {
                    for b in bytes {
                        out.push(b);
                    }
                }
            }
            _ => return false,
        }
        if out.len() - start_len > 63 {
            let mut cut = start_len + 63;
            let bytes = out.as_bytes();
            while cut > start_len && bytes[cut] & 0xc0 == 0x80 {
                cut -= 1;
            }
            out.truncate(cut);
        }
        true
    }

    /// Reads `name[.name...]` starting with `first`.
    fn var_name(&self, c: &mut Cursor<'a>, first: Token, out: &mut NameBuf) -> bool {
        if !self.push_ident(c, first, out) {
            return false;
        }
        while c.peek_punct(b'.') {
            c.next();
            out.push(b'.');
            match c.next() {
                Some(t) if self.push_ident(c, t, out) => {}
                _ => return false,
            }
        }
        true
    }

    /// Whether a qualified name starting with `first` has a `pg_temp` schema.
    fn qualified_in_pg_temp(&self, c: &mut Cursor<'a>, first: Token) -> bool {
        let mut t = first;
        for _ in 0..3 {
            let mut part = NameBuf::new();
            if !self.push_ident(c, t, &mut part) || !c.peek_punct(b'.') {
                return false;
            }
            if is_pg_temp(part.as_bytes()) {
                return true;
            }
            c.next();
            match c.next() {
                Some(n) => t = n,
                None => return false,
            }
        }
        false
    }

    fn finish_call(&mut self, f: Frame, closed: bool) {
        let local = closed && f.arg == 2 && matches!(f.third, Third::True | Third::CastType);
        if !local {
            self.flags |= Flags::SET_SESSION;
            if f.role {
                self.flags |= Flags::SET_ROLE;
            }
        }
    }

    /// Follows the tokens of the third argument of `set_config(` (true = transaction-local).
    fn feed_third(&self, f: &mut Frame, t: Token) {
        if f.arg < 2 {
            return;
        }
        if f.arg > 2 {
            f.third = Third::Other;
            return;
        }
        f.third = match (f.third, t.kind) {
            (Third::Empty, TokenKind::Ident) if self.kw(t, "true") => Third::True,
            (Third::Empty, TokenKind::String | TokenKind::DollarString) if self.truthy(t) => {
                Third::True
            }
            (Third::True | Third::CastType, TokenKind::Operator) if self.text(t) == b"::" => {
                Third::Cast
            }
            (Third::Cast, TokenKind::Ident | TokenKind::QuotedIdent) => Third::CastType,
            (Third::CastType, TokenKind::Punct(b'.')) => Third::Cast,
            _ => Third::Other,
        };
    }

    /// A literal PostgreSQL's boolean input reads as true.
    fn truthy(&self, t: Token) -> bool {
        let s = self.src;
        if t.kind == TokenKind::String && (s[t.start] | 0x20) == b'u' {
            return false;
        }
        let mut buf = NameBuf::new();
        let mut dummy = Cursor::new(Lexer::new(&[]));
        if !self.decode_literal(&mut dummy, t, &mut buf) || buf.len() > 16 {
            return false;
        }
        let v = buf.as_bytes();
        let v = v.trim_ascii();
        if v.is_empty() {
            return false;
        }
        b"true".starts_with(v) || b"yes".starts_with(v) || v == b"on" || v == b"1"
    }

    /// After `UPDATE`: `[ONLY] [pg_catalog.]pg_settings`.
    fn updates_pg_settings(&self, mut c: Cursor<'a>) -> bool {
        c.eat_kw("only");
        for _ in 0..3 {
            let Some(t) = c.next() else {
                return false;
            };
            let mut part = NameBuf::new();
            if !self.push_ident(&mut c, t, &mut part) {
                return false;
            }
            if part.as_bytes() == b"pg_settings" {
                return true;
            }
            if !c.peek_punct(b'.') {
                return false;
            }
            c.next();
        }
        false
    }

    /// `UPDATE pg_settings ... WHERE name = 'x'` is `set_config('x', ..., false)`: every string
    /// literal of the statement is taken for a possible setting name.
    fn pg_settings_names(&mut self, mut c: Cursor<'a>) {
        while let Some(t) = c.next() {
            if !matches!(t.kind, TokenKind::String | TokenKind::DollarString)
                || t.end - t.start > 1024
            {
                continue;
            }
            let mut name = NameBuf::new();
            if self.decode_literal(&mut c, t, &mut name) {
                self.named(&name, true);
            }
        }
    }

    /// After a SELECT's `INTO`: `[LOCAL|GLOBAL] TEMP|TEMPORARY [TABLE] name` or `pg_temp.name`.
    fn selects_into_temp(&self, mut c: Cursor<'a>) -> bool {
        if !c.eat_kw("local") {
            c.eat_kw("global");
        }
        let Some(t) = c.next() else {
            return false;
        };
        if self.kw(t, "temp") || self.kw(t, "temporary") {
            return match c.peek() {
                Some(n) if n.kind == TokenKind::QuotedIdent => true,
                Some(n) if n.kind == TokenKind::Ident => {
                    let clause = [
                        "from",
                        "where",
                        "group",
                        "having",
                        "order",
                        "limit",
                        "offset",
                        "union",
                        "intersect",
                        "except",
                        "window",
                        "for",
                        "fetch",
                    ];
                    !clause.iter().any(|k| self.kw(n, k))
                }
                _ => false,
            };
        }
        let mut t = t;
        if self.kw(t, "unlogged") || self.kw(t, "table") {
            c.eat_kw("table");
            match c.next() {
                Some(n) => t = n,
                None => return false,
            }
        }
        self.qualified_in_pg_temp(&mut c, t)
    }

    // ---- statement heads ---------------------------------------------------------------

    fn head(&mut self, mut c: Cursor<'a>, in_atomic: bool) -> Head {
        let mut head = Head::default();
        let Some(t) = c.next() else {
            return head;
        };
        head.nonempty = true;
        if t.kind == TokenKind::Punct(b'(') {
            head.into_check = true;
            return head;
        }
        if t.kind != TokenKind::Ident {
            return head;
        }
        let mut buf = [0u8; 16];
        match lower(self.text(t), &mut buf) {
            b"select" | b"with" | b"values" | b"table" => head.into_check = true,
            b"begin" => {
                head.control = true;
                if !c.eat_kw("work") {
                    c.eat_kw("transaction");
                }
                self.flags |= Flags::TXN_BEGIN | self.modes(&mut c);
            }
            b"start" if c.eat_kw("transaction") => {
                head.control = true;
                self.flags |= Flags::TXN_BEGIN | self.modes(&mut c)
            }
            b"savepoint" | b"release" => head.control = true,
            b"set" => {
                head.control = true;
                self.set(&mut c);
            }
            b"commit" => {
                head.control = !c.peek_kw("prepared");
                if c.eat_kw("prepared") {
                    self.flags |= Flags::TXN_END | Flags::NON_TXN;
                } else {
                    self.flags |= Flags::TXN_END | self.chain(&mut c);
                }
            }
            b"end" if in_atomic => head.ends_body = true,
            b"end" | b"abort" => {
                head.control = true;
                self.flags |= Flags::TXN_END | self.chain(&mut c)
            }
            b"rollback" => {
                head.control = !c.peek_kw("prepared");
                if c.eat_kw("prepared") {
                    self.flags |= Flags::TXN_END | Flags::NON_TXN;
                } else {
                    if !c.eat_kw("work") {
                        c.eat_kw("transaction");
                    }
                    if !c.peek_kw("to") {
                        self.flags |= Flags::TXN_END | self.chain(&mut c);
                    }
                }
            }
            b"prepare" => {
                let transaction = c.eat_kw("transaction")
                    && c.peek().is_some_and(|t| {
                        matches!(t.kind, TokenKind::String | TokenKind::DollarString)
                    });
                self.flags |= if transaction {
                    Flags::TXN_END
                } else {
                    Flags::PREPARE
                };
            }
            b"deallocate" => self.deallocate(&mut c),
            b"discard" => self.discard(&mut c),
            b"listen" => self.flags |= Flags::LISTEN,
            b"declare" => {
                while let Some(t) = c.next() {
                    if self.kw(t, "for") {
                        break;
                    }
                    if self.kw(t, "with") && c.peek_kw("hold") {
                        self.flags |= Flags::WITH_HOLD;
                        break;
                    }
                }
            }
            b"reset" => {
                head.control = true;
                self.reset(&mut c)
            }
            b"create" => head.routine = self.create(&mut c, false),
            b"drop"
                if c.eat_kw("database")
                    || c.eat_kw("tablespace")
                    || c.eat_kw("subscription")
                    || (c.eat_kw("index") && c.peek_kw("concurrently")) =>
            {
                self.flags |= Flags::NON_TXN
            }
            b"vacuum" => self.flags |= Flags::NON_TXN,
            b"reindex" => {
                if c.peek_punct(b'(') {
                    c.next();
                    c.skip_group();
                }
                if c.eat_kw("system")
                    || c.eat_kw("database")
                    || c.eat_kw("schema")
                    || ((c.eat_kw("index") || c.eat_kw("table")) && c.peek_kw("concurrently"))
                {
                    self.flags |= Flags::NON_TXN;
                }
            }
            b"cluster" => {
                loop {
                    if c.eat_kw("verbose") {
                        continue;
                    }
                    if c.peek_punct(b'(') {
                        c.next();
                        c.skip_group();
                        continue;
                    }
                    break;
                }
                if c.peek().is_none() {
                    self.flags |= Flags::NON_TXN;
                }
            }
            b"alter" => {
                if c.eat_kw("system") {
                    self.flags |= Flags::NON_TXN;
                } else if c.eat_kw("database") {
                    if c.next().is_some() && c.eat_kw("set") && c.peek_kw("tablespace") {
                        self.flags |= Flags::NON_TXN;
                    }
                } else if c.eat_kw("subscription") {
                    while let Some(t) = c.next() {
                        if self.kw(t, "refresh") || self.kw(t, "publication") {
                            self.flags |= Flags::NON_TXN;
                            break;
                        }
                    }
                }
            }
            b"do" | b"call" | b"load" => self.flags |= Flags::UNCERTAIN,
            b"copy" => self.flags |= Flags::COPY,
            b"explain" => head.into_check = self.explain(&mut c),
            _ => {}
        }
        head
    }

    /// Anything after `BEGIN [WORK|TRANSACTION]` is a transaction mode.
    fn modes(&self, c: &mut Cursor<'a>) -> Flags {
        match c.next() {
            Some(_) => Flags::TXN_MODES,
            None => Flags::default(),
        }
    }

    /// `AND CHAIN` after COMMIT/END/ROLLBACK/ABORT starts a new transaction at once.
    fn chain(&self, c: &mut Cursor<'a>) -> Flags {
        while let Some(t) = c.next() {
            if self.kw(t, "and") {
                if c.peek_kw("chain") {
                    return Flags::TXN_BEGIN;
                }
                break;
            }
        }
        Flags::default()
    }

    fn deallocate(&mut self, c: &mut Cursor<'a>) {
        let Some(mut t) = c.next() else {
            return;
        };
        if self.kw(t, "prepare") {
            match c.next() {
                Some(n) => t = n,
                None => {
                    // `DEALLOCATE prepare`: a statement named "prepare".
                    self.flags |= Flags::DEALLOCATE;
                    return;
                }
            }
        }
        self.flags |= if self.kw(t, "all") {
            Flags::DEALLOCATE_ALL
        } else {
            Flags::DEALLOCATE
        };
    }

    fn discard(&mut self, c: &mut Cursor<'a>) {
        let Some(t) = c.next() else {
            return;
        };
        if self.kw(t, "all") {
            self.flags |= Flags::DISCARD | Flags::DEALLOCATE_ALL | Flags::NON_TXN;
            self.reset_all();
        } else if ["temp", "temporary", "plans", "sequences"]
            .iter()
            .any(|k| self.kw(t, k))
        {
            self.flags |= Flags::DISCARD;
        }
    }

    fn set(&mut self, c: &mut Cursor<'a>) {
        let Some(mut t) = c.next() else {
            return;
        };
        let mut session = true;
        let is_session = self.kw(t, "session");
        let is_local = self.kw(t, "local");
        if is_session || is_local {
            // `SET local = 1` names a setting "local"; `SET SESSION AUTHORIZATION` and
            // `SET SESSION CHARACTERISTICS` are forms of their own.
            let own_form =
                is_session && (c.peek_kw("authorization") || c.peek_kw("characteristics"));
            if !own_form && !self.value_follows(c) {
                session = !is_local;
                match c.next() {
                    Some(n) => t = n,
                    None => return,
                }
            }
        }
        if t.kind == TokenKind::Ident {
            let mut buf = [0u8; 16];
            let generic_follows = self.value_follows(c);
            match lower(self.text(t), &mut buf) {
                b"session" if c.eat_kw("authorization") => {
                    return self.role_change("session_authorization", session)
                }
                b"session" if c.eat_kw("characteristics") => {
                    return self.transaction_modes(c, DEFAULT_TXN_SETTINGS, session)
                }
                b"transaction" if !generic_follows => {
                    self.flags |= Flags::TXN_MODES;
                    if !c.peek_kw("snapshot") {
                        self.transaction_modes(c, TXN_SETTINGS, false);
                    }
                    return;
                }
                b"time" if c.eat_kw("zone") => return self.setting("timezone", session),
                b"names" => return self.setting("client_encoding", session),
                b"schema" => return self.setting("search_path", session),
                b"role" => return self.role_change("role", session),
                b"xml" if c.eat_kw("option") => return self.setting("xmloption", session),
                b"constraints" | b"catalog" if !generic_follows => return,
                _ => {}
            }
        }
        self.var_name_changed(c, t, session);
    }

    /// A generic `SET`/`RESET` of `name[.name]`; a name we cannot decode (a `U&` escape we
    /// do not accept) is reported as uncertain.
    fn var_name_changed(&mut self, c: &mut Cursor<'a>, first: Token, session: bool) {
        let mut name = NameBuf::new();
        if self.var_name(c, first, &mut name) {
            self.named(&name, session);
        } else if matches!(first.kind, TokenKind::Ident | TokenKind::QuotedIdent) {
            self.flags |= Flags::UNCERTAIN;
            if session {
                self.flags |= Flags::SET_SESSION;
            }
        }
    }

    /// The next token is `TO` or `=`: what came before was a setting name.
    fn value_follows(&self, c: &Cursor<'a>) -> bool {
        c.peek().is_some_and(|n| {
            self.kw(n, "to") || (n.kind == TokenKind::Operator && self.text(n) == b"=")
        })
    }

    fn reset(&mut self, c: &mut Cursor<'a>) {
        let Some(t) = c.next() else {
            return;
        };
        if t.kind == TokenKind::Ident {
            let mut buf = [0u8; 16];
            match lower(self.text(t), &mut buf) {
                b"all" => {
                    self.flags |= Flags::SET_SESSION;
                    return self.reset_all();
                }
                b"session" if c.eat_kw("authorization") => {
                    return self.role_change("session_authorization", true)
                }
                b"time" if c.eat_kw("zone") => return self.setting("timezone", true),
                b"transaction" if c.eat_kw("isolation") => {
                    return self.setting("transaction_isolation", false)
                }
                _ => {}
            }
        }
        self.var_name_changed(c, t, true);
    }

    /// `ISOLATION LEVEL ...`, `READ ONLY|WRITE`, `[NOT] DEFERRABLE` after `SET TRANSACTION` or
    /// `SET SESSION CHARACTERISTICS AS TRANSACTION`.
    fn transaction_modes(&mut self, c: &mut Cursor<'a>, names: [&str; 3], session: bool) {
        if session {
            self.flags |= Flags::SET_SESSION;
        }
        while let Some(t) = c.next() {
            if self.kw(t, "isolation") {
                self.setting(names[0], false);
            } else if self.kw(t, "read") && (c.peek_kw("only") || c.peek_kw("write")) {
                self.setting(names[1], false);
            } else if self.kw(t, "deferrable") {
                self.setting(names[2], false);
            }
        }
    }

    /// `CREATE ...`; returns whether it defines a function or procedure.
    fn create(&mut self, c: &mut Cursor<'a>, only_temp: bool) -> bool {
        if c.eat_kw("or") {
            c.eat_kw("replace");
        }
        let mut temp = false;
        let Some(mut t) = c.next() else {
            return false;
        };
        let mut buf = [0u8; 16];
        loop {
            match lower(self.text(t), &mut buf) {
                b"temp" | b"temporary" => temp = true,
                b"global" | b"local" | b"unlogged" | b"recursive" | b"unique" | b"trusted"
                | b"procedural" => {}
                _ => break,
            }
            match c.next() {
                Some(n) => t = n,
                None => return false,
            }
        }
        let object: &[u8] = if t.kind == TokenKind::Ident {
            lower(self.text(t), &mut buf)
        } else {
            &[]
        };
        let routine = matches!(object, b"function" | b"procedure");
        let mut flags = match object {
            b"database" | b"tablespace" | b"subscription" => Flags::NON_TXN,
            b"index" if c.peek_kw("concurrently") => Flags::NON_TXN,
            b"table" | b"view" | b"sequence" if temp => Flags::TEMP_OBJECT,
            b"table" | b"view" | b"sequence" | b"function" | b"procedure" | b"type" | b"domain"
            | b"aggregate"
                if self.created_in_pg_temp(c) =>
            {
                Flags::TEMP_OBJECT
            }
            _ => Flags::default(),
        };
        if only_temp {
            flags = Flags(flags.0 & Flags::TEMP_OBJECT.0);
        }
        self.flags |= flags;
        routine
    }

    /// After `CREATE ... TABLE` etc.: `[IF NOT EXISTS] pg_temp.name`.
    fn created_in_pg_temp(&self, c: &mut Cursor<'a>) -> bool {
        if c.eat_kw("if") {
            c.eat_kw("not");
            c.eat_kw("exists");
        }
        match c.next() {
            Some(n) => self.qualified_in_pg_temp(c, n),
            None => false,
        }
    }

    /// `EXPLAIN [ANALYZE] [VERBOSE] | (options) stmt`: only `ANALYZE` runs the statement; then
    /// a `CREATE TEMP TABLE AS` or a `SELECT INTO TEMP` creates a temporary table.
    fn explain(&mut self, c: &mut Cursor<'a>) -> bool {
        let mut analyze = false;
        loop {
            if c.eat_kw("analyze") || c.eat_kw("analyse") {
                analyze = true;
                continue;
            }
            if c.eat_kw("verbose") {
                continue;
            }
            if !c.peek_punct(b'(') {
                break;
            }
            c.next();
            analyze |= self.explain_options(c);
        }
        if !analyze {
            return false;
        }
        let Some(t) = c.next() else {
            return false;
        };
        if t.kind == TokenKind::Punct(b'(') {
            return true;
        }
        let mut buf = [0u8; 16];
        match lower(self.text(t), &mut buf) {
            b"select" | b"with" | b"values" | b"table" if t.kind == TokenKind::Ident => true,
            b"create" if t.kind == TokenKind::Ident => {
                self.create(c, true);
                false
            }
            _ => false,
        }
    }

    /// Reads `(option [value], ...)`; whether `ANALYZE` is on.
    fn explain_options(&self, c: &mut Cursor<'a>) -> bool {
        let mut analyze = false;
        while let Some(t) = c.next() {
            match t.kind {
                TokenKind::Punct(b')') => break,
                _ if self.kw(t, "analyze") || self.kw(t, "analyse") => {
                    analyze = match c.peek() {
                        Some(v) if !matches!(v.kind, TokenKind::Punct(b',' | b')')) => {
                            c.next();
                            !self.false_value(v)
                        }
                        _ => true,
                    };
                }
                _ => {}
            }
        }
        analyze
    }

    fn false_value(&self, v: Token) -> bool {
        let text = self.text(v);
        match v.kind {
            TokenKind::Ident => self.kw(v, "false") || self.kw(v, "off"),
            TokenKind::Number => text == b"0",
            TokenKind::String => {
                let body = text.get(1..).unwrap_or_default();
                matches!(
                    body.first().map(u8::to_ascii_lowercase),
                    Some(b'f' | b'n' | b'0')
                ) || body
                    .get(..3)
                    .is_some_and(|p| p.eq_ignore_ascii_case(b"off"))
            }
            _ => false,
        }
    }
}

const DEFAULT_TXN_SETTINGS: [&str; 3] = [
    "default_transaction_isolation",
    "default_transaction_read_only",
    "default_transaction_deferrable",
];
const TXN_SETTINGS: [&str; 3] = [
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
];

#[cfg(test)]
mod tests {
    use super::*;

    const PROTECTED: &[&str] = &[
        "search_path",
        "app.tenant_id",
        "default_transaction_read_only",
    ];

    fn run(sql: &[u8], guard: bool) -> Analysis {
        analyze(sql, guard, &|n: &str| PROTECTED.contains(&n))
    }

    fn flags(sql: &str) -> Flags {
        analyze(sql.as_bytes(), false, &|_: &str| false).flags
    }

    fn has(sql: &str, f: Flags) -> bool {
        flags(sql).contains(f)
    }

    fn viol(sql: &str) -> Option<Violation> {
        run(sql.as_bytes(), true).violation
    }

    fn setting(name: &str) -> Option<Violation> {
        Some(Violation::Setting(name.to_owned()))
    }

    fn tokens(sql: &[u8]) -> Vec<(TokenKind, &[u8])> {
        Lexer::new(sql)
            .map(|t| (t.kind, &sql[t.start..t.end]))
            .collect()
    }

    fn token_texts(sql: &str) -> Vec<&str> {
        Lexer::new(sql.as_bytes())
            .map(|t| &sql[t.start..t.end])
            .collect()
    }

    // ---- lexer ---------------------------------------------------------------------------

    #[test]
    fn lexer_basic_kinds() {
        use TokenKind::*;
        let sql = b"SELECT a.\"B\"\"c\", $1, 'x''y', 1.5e-3 FROM t WHERE x<>-1;";
        let want: Vec<(TokenKind, &[u8])> = vec![
            (Ident, b"SELECT"),
            (Ident, b"a"),
            (Punct(b'.'), b"."),
            (QuotedIdent, b"\"B\"\"c\""),
            (Punct(b','), b","),
            (Param, b"$1"),
            (Punct(b','), b","),
            (String, b"'x''y'"),
            (Punct(b','), b","),
            (Number, b"1.5e-3"),
            (Ident, b"FROM"),
            (Ident, b"t"),
            (Ident, b"WHERE"),
            (Ident, b"x"),
            // PostgreSQL drops the trailing `-` of `<>-`: it becomes a prefix minus.
            (Operator, b"<>"),
            (Operator, b"-"),
            (Number, b"1"),
            (Punct(b';'), b";"),
        ];
        assert_eq!(tokens(sql), want);
    }

    #[test]
    fn lexer_operator_rules() {
        assert_eq!(token_texts("x=-1"), ["x", "=", "-", "1"]);
        assert_eq!(token_texts("a @- b"), ["a", "@-", "b"]);
        assert_eq!(token_texts("a +-- c\n b"), ["a", "+", "b"]);
        assert_eq!(token_texts("a */* c */ b"), ["a", "*", "b"]);
        assert_eq!(
            token_texts("x::int := 1..2"),
            ["x", "::", "int", ":=", "1", "..", "2"]
        );
    }

    #[test]
    fn lexer_numbers_split_like_postgres() {
        assert_eq!(token_texts("1e'x'"), ["1", "e'x'"]);
        assert_eq!(
            token_texts("0x1F 0o17 0b101 1_000 .5 5. 1e5 1e+5"),
            ["0x1F", "0o17", "0b101", "1_000", ".5", "5.", "1e5", "1e+5"]
        );
        assert_eq!(token_texts("0x'ff'"), ["0", "x'ff'"]);
        assert_eq!(token_texts("123abc"), ["123", "abc"]);
    }

    #[test]
    fn lexer_dollar_quotes_and_params() {
        assert_eq!(token_texts("$$a$b$$ x"), ["$$a$b$$", "x"]);
        assert_eq!(token_texts("$a$ $b$ $ab$ $a$ y"), ["$a$ $b$ $ab$ $a$", "y"]);
        assert_eq!(token_texts("$1$2"), ["$1", "$2"]);
        assert_eq!(token_texts("a$b$ c"), ["a$b$", "c"]);
        assert_eq!(token_texts("$tag x"), ["$", "tag", "x"]);
        assert_eq!(token_texts("$1a$ b"), ["$1", "a$", "b"]);
        assert_eq!(token_texts("$b$x$$y$bb$z$b$ q"), ["$b$x$$y$bb$z$b$", "q"]);
    }

    #[test]
    fn lexer_string_prefixes_and_escapes() {
        assert_eq!(token_texts(r"E'\'' x"), [r"E'\''", "x"]);
        assert_eq!(token_texts(r"'\' x"), [r"'\'", "x"]);
        assert_eq!(token_texts(r"e'a\\' x"), [r"e'a\\'", "x"]);
        assert_eq!(
            token_texts("U&'d\\0061' UESCAPE '!'"),
            ["U&'d\\0061'", "UESCAPE", "'!'"]
        );
        assert_eq!(
            token_texts("u&\"x\" n'a' b'01' X'1f'"),
            ["u&\"x\"", "n'a'", "b'01'", "X'1f'"]
        );
        assert_eq!(token_texts("B'0''1'"), ["B'0'", "'1'"]);
        assert_eq!(token_texts("ue'x'"), ["ue", "'x'"]);
    }

    #[test]
    fn lexer_string_continuation() {
        assert_eq!(token_texts("'a'\n'b' c"), ["'a'\n'b'", "c"]);
        assert_eq!(
            token_texts("'a' -- note\n  'b' c"),
            ["'a' -- note\n  'b'", "c"]
        );
        assert_eq!(token_texts("'a' 'b'"), ["'a'", "'b'"]);
        assert_eq!(token_texts("'a' /* c */\n'b'"), ["'a'", "'b'"]);
        // The continuation keeps E'' rules: \' does not end it.
        assert_eq!(token_texts("E'a'\n'\\'' x"), ["E'a'\n'\\''", "x"]);
    }

    #[test]
    fn lexer_comments() {
        assert_eq!(token_texts("/* a /* b */ c */ x -- y\nz"), ["x", "z"]);
        assert_eq!(token_texts("x/**/y"), ["x", "y"]);
        assert_eq!(token_texts("/*/ x */ y"), ["y"]);
        assert_eq!(token_texts("a -- \r b"), ["a", "b"]);
    }

    #[test]
    fn lexer_unterminated_runs_to_end() {
        for sql in [
            "'abc",
            "E'abc\\",
            "\"abc",
            "$q$ abc $q",
            "/* abc /* */",
            "U&'x",
            "b'01",
            "-- x",
        ] {
            let toks: Vec<_> = Lexer::new(sql.as_bytes()).collect();
            assert!(toks.len() <= 1, "{sql}: {toks:?}");
            if let Some(t) = toks.first() {
                assert_eq!(t.end, sql.len());
                assert!(!t.terminated);
            }
        }
    }

    #[test]
    fn lexer_high_bytes_are_identifier_chars() {
        let sql = b"SELECT caf\xe9, \xe9t\xe9 FROM t\xe9";
        let got = tokens(sql);
        assert_eq!(got[1], (TokenKind::Ident, &b"caf\xe9"[..]));
        assert_eq!(got[3], (TokenKind::Ident, &b"\xe9t\xe9"[..]));
        assert_eq!(got[5], (TokenKind::Ident, &b"t\xe9"[..]));
    }

    // ---- statement counting ----------------------------------------------------------------

    #[test]
    fn empty_inputs() {
        for sql in ["", ";", "  -- comment", ";;  ;", "/* x */ ; \n"] {
            let a = run(sql.as_bytes(), true);
            assert_eq!(a, Analysis::default(), "{sql:?}");
        }
    }

    #[test]
    fn counts_statements() {
        assert_eq!(run(b"SELECT 1", true).statements, 1);
        assert_eq!(run(b"SELECT 1;", true).statements, 1);
        assert_eq!(run(b"SELECT 1;; SELECT ';'; -- x", true).statements, 2);
        assert_eq!(
            run(b"BEGIN; UPDATE t SET a = 1; COMMIT;", true).statements,
            3
        );
    }

    // ---- transaction control -------------------------------------------------------------

    #[test]
    fn txn_begin() {
        for sql in [
            "BEGIN",
            "begin work",
            "BEGIN TRANSACTION;",
            "START TRANSACTION",
        ] {
            assert_eq!(flags(sql), Flags::TXN_BEGIN, "{sql}");
        }
        for sql in [
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "START TRANSACTION READ ONLY",
            "begin work deferrable",
        ] {
            assert_eq!(flags(sql), Flags::TXN_BEGIN | Flags::TXN_MODES, "{sql}");
        }
        assert_eq!(
            flags("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"),
            Flags::TXN_MODES
        );
        assert!(flags("START").is_empty());
        assert!(flags("SELECT begin FROM t").is_empty());
        assert_eq!(flags("DO $$ BEGIN PERFORM 1; END $$"), Flags::UNCERTAIN);
    }

    #[test]
    fn transaction_control_only() {
        let control = |sql: &str| analyze(sql.as_bytes(), true, &|_| false).control_only;
        for sql in [
            "BEGIN",
            "BEGIN; START TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "savepoint s; rollback to savepoint s; release s",
            "SET TRANSACTION READ ONLY; SET CONSTRAINTS ALL DEFERRED",
            "SET LOCAL statement_timeout = '1s'; RESET work_mem",
            "COMMIT AND CHAIN; END; ABORT",
        ] {
            assert!(control(sql), "{sql}");
        }
        for sql in [
            "",
            "BEGIN; SELECT 1",
            "COMMIT PREPARED 'x'",
            "ROLLBACK PREPARED 'x'",
            "SELECT 1; COMMIT",
            "SHOW search_path",
        ] {
            assert!(!control(sql), "{sql}");
        }
    }

    #[test]
    fn txn_end() {
        for sql in [
            "COMMIT",
            "commit work",
            "END",
            "END TRANSACTION",
            "ROLLBACK",
            "ABORT",
            "rollback transaction",
            "PREPARE TRANSACTION 'gx'",
        ] {
            assert_eq!(flags(sql), Flags::TXN_END, "{sql}");
        }
        assert_eq!(
            flags("COMMIT PREPARED 'gx'"),
            Flags::TXN_END | Flags::NON_TXN
        );
        assert_eq!(
            flags("ROLLBACK PREPARED 'gx'"),
            Flags::TXN_END | Flags::NON_TXN
        );
    }

    #[test]
    fn statements_after_a_transaction_end() {
        for sql in [
            "COMMIT; SELECT 1",
            "select 1; rollback; select 2",
            "end;\n-- c\n select 3",
        ] {
            assert!(has(sql, Flags::AFTER_TXN_END), "{sql}");
        }
        for sql in [
            "COMMIT",
            "SELECT 1; COMMIT",
            "BEGIN; SELECT 1; COMMIT;",
            "commit; ; -- x",
        ] {
            assert!(!has(sql, Flags::AFTER_TXN_END), "{sql}");
        }
    }

    #[test]
    fn rollback_to_savepoint_is_not_txn_end() {
        assert!(flags("ROLLBACK TO SAVEPOINT s1").is_empty());
        assert!(flags("ROLLBACK WORK TO s1").is_empty());
        assert!(flags("SAVEPOINT s1; RELEASE s1").is_empty());
    }

    #[test]
    fn and_chain_starts_a_new_transaction() {
        assert_eq!(flags("COMMIT AND CHAIN"), Flags::TXN_END | Flags::TXN_BEGIN);
        assert_eq!(
            flags("ROLLBACK AND CHAIN"),
            Flags::TXN_END | Flags::TXN_BEGIN
        );
        assert_eq!(flags("COMMIT AND NO CHAIN"), Flags::TXN_END);
    }

    #[test]
    fn prepare_statement_vs_prepare_transaction() {
        assert_eq!(flags("PREPARE q(int) AS SELECT $1"), Flags::PREPARE);
        assert_eq!(flags("PREPARE transaction AS SELECT 1"), Flags::PREPARE);
        assert_eq!(flags("prepare transaction 'x'"), Flags::TXN_END);
        assert_eq!(flags("PREPARE TRANSACTION $g$x$g$"), Flags::TXN_END);
    }

    // ---- NON_TXN --------------------------------------------------------------------------

    #[test]
    fn non_txn_statements() {
        for sql in [
            "VACUUM",
            "vacuum full",
            "VACUUM (ANALYZE) t",
            "CREATE DATABASE d",
            "DROP DATABASE IF EXISTS d",
            "CREATE TABLESPACE ts LOCATION '/x'",
            "DROP TABLESPACE ts",
            "CREATE INDEX CONCURRENTLY i ON t (a)",
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a)",
            "DROP INDEX CONCURRENTLY i",
            "REINDEX (VERBOSE) TABLE CONCURRENTLY x",
            "REINDEX INDEX CONCURRENTLY i",
            "REINDEX SYSTEM d",
            "REINDEX DATABASE d",
            "REINDEX SCHEMA s",
            "ALTER SYSTEM SET work_mem = '1MB'",
            "CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p",
            "DROP SUBSCRIPTION s",
            "ALTER SUBSCRIPTION s REFRESH PUBLICATION",
            "ALTER DATABASE d SET TABLESPACE ts",
            "CLUSTER",
            "CLUSTER VERBOSE",
            "CLUSTER (VERBOSE)",
        ] {
            assert!(has(sql, Flags::NON_TXN), "{sql}");
        }
    }

    #[test]
    fn non_txn_look_alikes() {
        for sql in [
            "ANALYZE",
            "ANALYZE t",
            "CREATE INDEX i ON t (a)",
            "REINDEX TABLE t",
            "CLUSTER t",
            "CLUSTER VERBOSE t USING i",
            "ALTER DATABASE d SET search_path = x",
            "ALTER SUBSCRIPTION s DISABLE",
            "SELECT * FROM vacuum_log",
            "INSERT INTO vacuum_log VALUES ('VACUUM')",
            "SELECT 'CREATE DATABASE x'",
            "DROP INDEX i",
        ] {
            assert!(!has(sql, Flags::NON_TXN), "{sql}");
        }
    }

    // ---- SET / RESET ----------------------------------------------------------------------

    #[test]
    fn session_set_forms() {
        for sql in [
            "SET work_mem = '1MB'",
            "set work_mem to default",
            "SET SESSION statement_timeout = 0",
            "RESET work_mem",
            "RESET ALL",
            "SET TIME ZONE 'UTC'",
            "SET NAMES 'UTF8'",
            "SET SCHEMA 'x'",
            "SET XML OPTION DOCUMENT",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "SET local = 1",
        ] {
            assert_eq!(flags(sql), Flags::SET_SESSION, "{sql}");
        }
    }

    #[test]
    fn transaction_scoped_set_forms() {
        for sql in [
            "SET LOCAL work_mem = '1MB'",
            "SET LOCAL TIME ZONE 'UTC'",
            "SET CONSTRAINTS ALL DEFERRED",
            "SHOW search_path",
        ] {
            assert!(flags(sql).is_empty(), "{sql}");
        }
        for sql in [
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
        ] {
            assert_eq!(flags(sql), Flags::TXN_MODES, "{sql}");
        }
    }

    #[test]
    fn role_forms() {
        for sql in [
            "SET ROLE app",
            "SET SESSION ROLE app",
            "set role none",
            "SET role = 'app'",
            "SET SESSION AUTHORIZATION app",
            "SET SESSION SESSION AUTHORIZATION DEFAULT",
            "RESET ROLE",
            "RESET SESSION AUTHORIZATION",
            "SET session_authorization TO app",
        ] {
            assert_eq!(flags(sql), Flags::SET_ROLE, "{sql}");
            assert_eq!(viol(sql), Some(Violation::Role), "{sql}");
        }
        assert!(flags("SET LOCAL ROLE app").is_empty());
        assert_eq!(viol("SET LOCAL ROLE app"), Some(Violation::Role));
    }

    #[test]
    fn role_without_guard_asks_protected() {
        assert_eq!(run(b"SET ROLE app", false).violation, None);
        let a = analyze(b"SET ROLE app", false, &|n: &str| n == "role");
        assert_eq!(a.violation, setting("role"));
        let a = analyze(b"SET SESSION AUTHORIZATION u", false, &|n: &str| {
            n == "session_authorization"
        });
        assert_eq!(a.violation, setting("session_authorization"));
    }

    #[test]
    fn role_look_alikes() {
        for sql in [
            "SELECT 1 -- set role x",
            "SELECT 'SET ROLE x'",
            "SELECT role FROM members",
            "CREATE ROLE x",
            "ALTER ROLE x SET search_path = y",
            "GRANT x TO y",
        ] {
            let want = Analysis {
                statements: 1,
                ..Analysis::default()
            };
            assert_eq!(run(sql.as_bytes(), true), want, "{sql}");
        }
    }

    #[test]
    fn protected_set_is_a_violation() {
        assert_eq!(viol("SET search_path TO evil"), setting("search_path"));
        assert_eq!(
            viol("SET search_path = evil, public"),
            setting("search_path")
        );
        assert_eq!(viol("set SEARCH_PATH to evil"), setting("search_path"));
        assert_eq!(viol("SET \"search_path\" = evil"), setting("search_path"));
        assert_eq!(viol("SET \"Search_Path\" = evil"), setting("search_path"));
        assert_eq!(
            viol("SET SESSION search_path = evil"),
            setting("search_path")
        );
        assert_eq!(viol("SET search_path=evil"), setting("search_path"));
    }

    #[test]
    fn protected_set_local_is_a_violation_but_not_session() {
        let a = run(b"SET LOCAL search_path = evil", true);
        assert_eq!(a.violation, setting("search_path"));
        assert!(a.flags.is_empty());
    }

    #[test]
    fn qualified_and_quoted_custom_settings() {
        assert_eq!(viol("SET app.tenant_id = 'x'"), setting("app.tenant_id"));
        assert_eq!(
            viol("SET \"app\".\"tenant_id\" TO 'x'"),
            setting("app.tenant_id")
        );
        assert_eq!(viol("SET APP . Tenant_ID TO 2"), setting("app.tenant_id"));
        assert_eq!(viol("SET \"app.tenant_id\" = 1"), setting("app.tenant_id"));
        assert_eq!(viol("SET app.tenant_idx = 'x'"), None);
        assert_eq!(viol("SET app.other = 'x'"), None);
    }

    #[test]
    fn set_schema_is_search_path() {
        assert_eq!(viol("SET SCHEMA 'evil'"), setting("search_path"));
        assert_eq!(viol("SET LOCAL SCHEMA 'evil'"), setting("search_path"));
    }

    #[test]
    fn reset_violations() {
        assert_eq!(viol("RESET search_path"), setting("search_path"));
        assert_eq!(viol("RESET app.tenant_id"), setting("app.tenant_id"));
        assert_eq!(viol("RESET ALL"), Some(Violation::ResetAll));
        assert_eq!(run(b"RESET ALL", false).violation, None);
        assert_eq!(viol("DISCARD ALL"), Some(Violation::ResetAll));
        assert_eq!(run(b"DISCARD ALL", false).violation, None);
        assert_eq!(viol("RESET work_mem"), None);
        assert_eq!(viol("SELECT reset FROM t"), None);
        assert_eq!(viol("SELECT $$RESET ALL$$"), None);
    }

    #[test]
    fn transaction_characteristics_settings() {
        let a = run(
            b"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            true,
        );
        assert_eq!(a.violation, setting("default_transaction_read_only"));
        assert!(a.flags.contains(Flags::SET_SESSION));
        assert_eq!(viol("SET TRANSACTION ISOLATION LEVEL READ COMMITTED"), None);
    }

    #[test]
    fn first_violation_wins() {
        let a = run(
            b"SET app.tenant_id = 1; SET search_path = x; RESET ALL",
            true,
        );
        assert_eq!(a.violation, setting("app.tenant_id"));
        assert_eq!(a.statements, 3);
        assert_eq!(a.flags, Flags::SET_SESSION);
    }

    #[test]
    fn unicode_identifier_setting_names() {
        assert_eq!(
            viol("SET U&\"search\\005fpath\" = x"),
            setting("search_path")
        );
        assert_eq!(
            viol("SET U&\"search!005fpath\" UESCAPE '!' = x"),
            setting("search_path")
        );
        assert_eq!(
            viol("SET app.U&\"tenant\\+00005Fid\" = x"),
            setting("app.tenant_id")
        );
    }

    #[test]
    fn unicode_surrogate_pairs_and_bad_escapes() {
        let a = analyze(
            b"SELECT set_config(E'app.\\uD83D\\uDE00', 'x', true)",
            true,
            &|n: &str| n == "app.\u{1f600}",
        );
        assert_eq!(a.violation, setting("app.\u{1f600}"));
        let a = analyze(b"SET app.U&\"\\D83D\\DE00\" = 1", true, &|n: &str| {
            n == "app.\u{1f600}"
        });
        assert_eq!(a.violation, setting("app.\u{1f600}"));
        // Escapes PostgreSQL rejects: no name, but never silently nothing.
        let a = run(b"SET app.U&\"\\D83Dx\" = 1", true);
        assert_eq!(a.flags, Flags::UNCERTAIN | Flags::SET_SESSION);
        let a = run(b"SELECT set_config(E'\\uD83D', 'x', true)", true);
        assert_eq!(a.flags, Flags::UNCERTAIN);
    }

    #[test]
    fn identifiers_truncated_like_postgres() {
        let long = "a".repeat(70);
        let sql = format!("SET app.{long} = 1");
        let want = format!("app.{}", &long[..63]);
        let a = analyze(sql.as_bytes(), true, &|n: &str| n == want);
        assert_eq!(a.violation, setting(&want));
    }

    // ---- set_config -----------------------------------------------------------------------

    #[test]
    fn set_config_session_vs_local() {
        assert_eq!(
            flags("SELECT set_config('work_mem', '1MB', false)"),
            Flags::SET_SESSION
        );
        assert!(flags("SELECT set_config('work_mem', '1MB', true)").is_empty());
        assert!(flags("SELECT set_config('work_mem', '1MB', 't')").is_empty());
        assert!(flags("SELECT set_config('work_mem', '1MB', 'on'::boolean)").is_empty());
        assert!(flags("SELECT set_config('work_mem', '1MB', TRUE::pg_catalog.bool)").is_empty());
        for third in [
            "$1",
            "NULL",
            "'off'",
            "x",
            "(true)",
            "true OR false",
            "1 = 1",
        ] {
            let sql = format!("SELECT set_config('work_mem', '1MB', {third})");
            assert_eq!(flags(&sql), Flags::SET_SESSION, "{sql}");
        }
    }

    #[test]
    fn set_config_protected_names() {
        for sql in [
            "SELECT set_config('search_path', 'evil', true)",
            "SELECT pg_catalog.set_config('search_path', 'evil', false)",
            "select SET_CONFIG('Search_Path', 'evil', true)",
            "SELECT \"set_config\"('search_path', 'evil', true)",
            "SELECT * FROM t WHERE x = (SELECT set_config('search_path', 'evil', true))",
            "SELECT set_config ( /* c */ 'search_path' , 'evil', true)",
            "SELECT set_config('search_path'::text, 'evil', true)",
            "SELECT set_config($$search_path$$, 'evil', true)",
            "SELECT set_config(E'search\\137path', 'evil', true)",
            "SELECT set_config(U&'search\\005Fpath', 'evil', true)",
            "SELECT set_config('search'\n'_path', 'evil', true)",
            "SELECT U&\"\\0073et_config\"('search_path', 'evil', true)",
        ] {
            assert_eq!(viol(sql), setting("search_path"), "{sql}");
        }
        assert_eq!(
            viol("SELECT set_config('app.tenant_id', 'x', false)"),
            setting("app.tenant_id")
        );
    }

    #[test]
    fn set_config_look_alikes() {
        for sql in [
            "INSERT INTO settings(set_config) VALUES (1)",
            "SELECT set_config FROM t",
            "SELECT 'set_config(''search_path'', ''x'', false)'",
            "SELECT 1 /* set_config('search_path', 'x', false) */",
            "SELECT current_setting('search_path')",
            "SELECT set_config_x('search_path', 'x', false)",
        ] {
            let a = run(sql.as_bytes(), true);
            assert_eq!(a.violation, None, "{sql}");
            assert!(a.flags.is_empty(), "{sql}");
        }
    }

    #[test]
    fn set_config_non_literal_name_is_uncertain() {
        for sql in [
            "SELECT set_config(name, 'x', true) FROM t",
            "SELECT set_config($1, $2, true)",
            "SELECT set_config('search' || '_path', 'x', true)",
            "SELECT set_config(setting_name => 'search_path', new_value => 'x', is_local => true)",
            "SELECT set_config(B'01', 'x', true)",
        ] {
            let a = run(sql.as_bytes(), true);
            assert!(a.flags.contains(Flags::UNCERTAIN), "{sql}");
            assert_eq!(a.violation, None, "{sql}");
        }
    }

    #[test]
    fn set_config_nested_calls() {
        let sql = "SELECT set_config('a.b', set_config('work_mem', '1MB', false), true)";
        assert_eq!(flags(sql), Flags::SET_SESSION);
        let sql = "SELECT set_config('a.b', 'x', set_config('c.d', 'y', true)::bool)";
        assert_eq!(flags(sql), Flags::SET_SESSION);
        let sql = "SELECT set_config('a.b', f(1, ARRAY[2, 3], (4, 5)), true), 'true'";
        assert!(flags(sql).is_empty());
        let deep = format!(
            "SELECT {}1{}",
            "set_config('a.b', ".repeat(20),
            ", true)".repeat(20)
        );
        assert_eq!(flags(&deep), Flags::SET_SESSION);
    }

    #[test]
    fn set_config_role() {
        let a = run(b"SELECT set_config('role', 'admin', false)", true);
        assert_eq!(a.violation, Some(Violation::Role));
        assert_eq!(a.flags, Flags::SET_SESSION | Flags::SET_ROLE);
        let a = run(b"SELECT set_config('role', 'admin', true)", true);
        assert_eq!(a.violation, Some(Violation::Role));
        assert!(a.flags.is_empty());
    }

    #[test]
    fn update_pg_settings_names_literals() {
        let sql = "UPDATE pg_settings SET setting = 'evil' WHERE name = 'search_path'";
        assert_eq!(viol(sql), setting("search_path"));
        let sql = "UPDATE pg_settings SET setting = 'x' WHERE name IN ('work_mem', 'role')";
        let a = run(sql.as_bytes(), true);
        assert_eq!(a.violation, Some(Violation::Role));
        assert!(a.flags.contains(Flags::SET_ROLE | Flags::UNCERTAIN));
        let sql = "UPDATE pg_settings SET setting = 'x' WHERE name LIKE 'search%'";
        let a = run(sql.as_bytes(), true);
        assert_eq!(a.violation, None);
        assert!(a.flags.contains(Flags::UNCERTAIN));
        assert_eq!(viol("UPDATE t SET name = 'search_path'"), None);
    }

    #[test]
    fn update_pg_settings_is_set_config() {
        let f = flags("UPDATE pg_settings SET setting = 'x' WHERE name = 'search_path'");
        assert_eq!(f, Flags::UNCERTAIN | Flags::SET_SESSION);
        let f = flags(
            "WITH u AS (UPDATE ONLY pg_catalog.pg_settings SET setting = 'x' WHERE name = 'a') SELECT 1",
        );
        assert_eq!(f, Flags::UNCERTAIN | Flags::SET_SESSION);
        assert!(flags("SELECT * FROM pg_settings FOR UPDATE").is_empty());
        assert!(flags("UPDATE my_settings SET v = 1").is_empty());
    }

    // ---- prepared statements, cursors, listen ----------------------------------------------

    #[test]
    fn deallocate_forms() {
        assert_eq!(flags("DEALLOCATE q1"), Flags::DEALLOCATE);
        assert_eq!(flags("DEALLOCATE PREPARE q1"), Flags::DEALLOCATE);
        assert_eq!(flags("DEALLOCATE prepare"), Flags::DEALLOCATE);
        assert_eq!(flags("DEALLOCATE ALL"), Flags::DEALLOCATE_ALL);
        assert_eq!(flags("deallocate prepare all"), Flags::DEALLOCATE_ALL);
        assert_eq!(flags("DEALLOCATE \"all\""), Flags::DEALLOCATE);
    }

    #[test]
    fn discard_forms() {
        assert_eq!(
            flags("DISCARD ALL"),
            Flags::DISCARD | Flags::DEALLOCATE_ALL | Flags::NON_TXN
        );
        for sql in [
            "DISCARD TEMP",
            "DISCARD TEMPORARY",
            "DISCARD PLANS",
            "discard sequences",
        ] {
            assert_eq!(flags(sql), Flags::DISCARD, "{sql}");
        }
    }

    #[test]
    fn declare_with_hold() {
        assert_eq!(
            flags("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
            Flags::WITH_HOLD
        );
        assert_eq!(
            flags("DECLARE c BINARY NO SCROLL CURSOR with hold FOR SELECT 1"),
            Flags::WITH_HOLD
        );
        assert!(flags("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1").is_empty());
        assert!(
            flags("DECLARE c CURSOR FOR WITH hold AS (SELECT 1) SELECT * FROM hold").is_empty()
        );
        assert!(flags("DECLARE c CURSOR FOR SELECT 'WITH HOLD'").is_empty());
    }

    #[test]
    fn listen_forms() {
        assert_eq!(flags("LISTEN chan"), Flags::LISTEN);
        assert!(flags("UNLISTEN chan").is_empty());
        assert!(flags("UNLISTEN *").is_empty());
        assert!(flags("NOTIFY chan, 'LISTEN x'").is_empty());
    }

    // ---- temporary objects -----------------------------------------------------------------

    #[test]
    fn temp_objects() {
        for sql in [
            "CREATE TEMP TABLE t (a int)",
            "CREATE TEMPORARY TABLE IF NOT EXISTS t (a int)",
            "CREATE GLOBAL TEMPORARY TABLE t (a int)",
            "CREATE LOCAL TEMP TABLE t AS SELECT 1",
            "CREATE TEMP VIEW v AS SELECT 1",
            "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
            "CREATE TEMP RECURSIVE VIEW v (n) AS SELECT 1",
            "CREATE TEMPORARY SEQUENCE s",
            "CREATE TABLE pg_temp.t (a int)",
            "CREATE UNLOGGED TABLE IF NOT EXISTS \"pg_temp\".t (a int)",
            "CREATE TABLE mydb.pg_temp.t (a int)",
            "CREATE FUNCTION pg_temp.f() RETURNS int AS 'select 1' LANGUAGE sql",
            "CREATE VIEW pg_temp_3.v AS SELECT 1",
            "SELECT * INTO TEMP t FROM x",
            "SELECT a, b INTO TEMPORARY TABLE t FROM x",
            "select 1 into local temp t",
            "SELECT 1 INTO pg_temp.t",
            "WITH w AS (SELECT 1) SELECT * INTO TEMP t FROM w",
            "(SELECT 1) INTO TEMP t",
            "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
            "EXPLAIN (ANALYZE, BUFFERS) SELECT 1 INTO TEMP t",
        ] {
            assert!(has(sql, Flags::TEMP_OBJECT), "{sql}");
        }
    }

    #[test]
    fn temp_object_look_alikes() {
        for sql in [
            "CREATE TABLE temp (a int)",
            "CREATE TABLE t (temp int)",
            "INSERT INTO temp VALUES (1)",
            "INSERT INTO temp SELECT * FROM x",
            "WITH w AS (SELECT 1) INSERT INTO temp SELECT * FROM w",
            "SELECT * FROM pg_temp.t",
            "CREATE TABLE t AS SELECT * FROM pg_temp.x",
            "SELECT 1 INTO temp FROM t",
            "SELECT 'INTO TEMP t'",
            "EXPLAIN SELECT 1 INTO TEMP t",
            "EXPLAIN (ANALYZE false) CREATE TEMP TABLE t AS SELECT 1",
            "MERGE INTO temp USING s ON true WHEN MATCHED THEN DO NOTHING",
        ] {
            assert!(!has(sql, Flags::TEMP_OBJECT), "{sql}");
        }
    }

    // ---- advisory locks, uncertain, copy, explain -------------------------------------------

    #[test]
    fn advisory_locks() {
        for sql in [
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_catalog.pg_advisory_lock_shared(1, 2)",
            "SELECT PG_TRY_ADVISORY_LOCK(42)",
            "SELECT x FROM t WHERE pg_try_advisory_lock_shared(t.id)",
            "SELECT \"pg_advisory_lock\" (1)",
        ] {
            assert_eq!(flags(sql), Flags::ADVISORY_LOCK, "{sql}");
        }
        for sql in [
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT pg_try_advisory_xact_lock_shared(1)",
            "SELECT pg_advisory_unlock(1)",
            "SELECT 'pg_advisory_lock(1)'",
            "SELECT pg_advisory_lock FROM t",
            "-- pg_advisory_lock(1)\nSELECT 1",
        ] {
            assert!(flags(sql).is_empty(), "{sql}");
        }
    }

    #[test]
    fn uncertain_statements() {
        for sql in [
            "DO $$ BEGIN EXECUTE 'SET search_path = x'; END $$",
            "DO LANGUAGE plpgsql 'BEGIN NULL; END'",
            "CALL do_things()",
            "LOAD 'auto_explain'",
        ] {
            let a = run(sql.as_bytes(), true);
            assert_eq!(a.flags, Flags::UNCERTAIN, "{sql}");
            assert_eq!(a.violation, None, "{sql}");
        }
    }

    #[test]
    fn copy_statements() {
        assert_eq!(flags("COPY t FROM STDIN"), Flags::COPY);
        assert_eq!(
            flags("copy (SELECT 1) TO STDOUT WITH (FORMAT csv)"),
            Flags::COPY
        );
        assert!(flags("SELECT copy FROM t").is_empty());
    }

    #[test]
    fn explain_is_sensible() {
        assert!(flags("EXPLAIN ANALYZE VACUUM").is_empty());
        assert!(flags("EXPLAIN SELECT 1").is_empty());
        assert!(flags("EXPLAIN ANALYZE SELECT * FROM t").is_empty());
        assert_eq!(
            flags("EXPLAIN ANALYZE SELECT pg_advisory_lock(1)"),
            Flags::ADVISORY_LOCK
        );
    }

    #[test]
    fn unrecognised_statements_set_nothing() {
        for sql in [
            "SELECT 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "INSERT INTO t VALUES (1, 'a')",
            "UPDATE t SET a = 1 WHERE b = 2",
            "DELETE FROM t",
            "TRUNCATE t",
            "CREATE TABLE t (a int)",
            "GRANT SELECT ON t TO u",
            "CHECKPOINT",
            "EXECUTE q(1)",
            "FETCH 10 FROM c",
            "CLOSE c",
        ] {
            assert!(flags(sql).is_empty(), "{sql}");
        }
    }

    // ---- multi-statement and quoting tricks ------------------------------------------------

    #[test]
    fn multi_statement_flags_accumulate() {
        let a = run(
            b"BEGIN; SET LOCAL search_path = x; LISTEN c; SELECT pg_advisory_lock(1); COMMIT",
            false,
        );
        assert_eq!(a.statements, 5);
        assert_eq!(
            a.flags,
            Flags::TXN_BEGIN | Flags::TXN_END | Flags::LISTEN | Flags::ADVISORY_LOCK
        );
        assert_eq!(a.violation, setting("search_path"));
    }

    #[test]
    fn literals_and_comments_hide_nothing_they_should_not() {
        for sql in [
            "SELECT 'SET search_path TO x'",
            "SELECT $$ ; SET search_path = x; $$",
            "SELECT $a$ $b$ ; SET search_path = x; $b$ $a$",
            "SELECT $_$;SET search_path=x$_$",
            "SELECT 1 -- ; SET search_path = x",
            "/* /* */ SET search_path = x */ SELECT 1",
            "SELECT \"; SET search_path = x; \"",
            "SELECT E'\\'; SET search_path = x; '",
            "SELECT E'a'\n'\\'; SET search_path = x; '",
        ] {
            assert_eq!(viol(sql), None, "{sql}");
        }
    }

    #[test]
    fn statements_after_literals_are_seen() {
        for sql in [
            "SELECT 'a' -- '\n; SET search_path = x",
            "SELECT E'\\''; SET search_path = x; --'",
            "SELECT ''''; SET search_path = x; --'",
            "SELECT $1; SET search_path = x",
            "SELECT $a$x$b$; SET search_path = y; --$a$; SET search_path = x",
            "SELECT U&'\\' ; SET search_path = x; --'",
            "SELECT \"a\"\"\"; SET search_path = x; --\"",
            "SELECT 1e'x'; SET search_path = x; --'",
            "SELECT 'a'\n'b' ; SET search_path = x",
        ] {
            assert_eq!(viol(sql), setting("search_path"), "{sql}");
        }
    }

    #[test]
    fn standard_conforming_strings_off_reading() {
        // With standard_conforming_strings = off PostgreSQL reads the first literal as
        // `a'; SELECT ` and runs the SET; with it on, the SET is inside the second literal.
        let sql = "SELECT 'a\\'; SELECT '; SET search_path = x; --'";
        assert_eq!(viol(sql), setting("search_path"));
        // No backslash: no second reading, no false positive.
        assert_eq!(viol("SELECT 'a'; SELECT '; SET search_path = x; --'"), None);
    }

    #[test]
    fn begin_atomic_bodies() {
        let sql = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 ELSE 'a' END; SELECT 2 AS end; END; SELECT 3";
        let a = run(sql.as_bytes(), true);
        assert_eq!(a.statements, 2);
        assert!(a.flags.is_empty());
        let sql = "CREATE OR REPLACE PROCEDURE p() BEGIN ATOMIC INSERT INTO t SELECT x.case FROM x; END; END";
        let a = run(sql.as_bytes(), true);
        assert_eq!(a.statements, 2);
        assert_eq!(a.flags, Flags::TXN_END);
        // `end` as a bare column label inside the body (valid in PostgreSQL 15).
        let sql = "CREATE FUNCTION f2() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1 end; END; SELECT 4";
        let a = run(sql.as_bytes(), true);
        assert_eq!(a.statements, 2);
        assert!(a.flags.is_empty());
        let a = run(b"CREATE PROCEDURE p() BEGIN ATOMIC END; COMMIT", true);
        assert_eq!(a.statements, 2);
        assert_eq!(a.flags, Flags::TXN_END);
        // A body cannot hide a statement that follows it.
        let sql = "CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 1; END; SET search_path = x";
        assert_eq!(viol(sql), setting("search_path"));
    }

    // ---- odd bytes, truncation, size -------------------------------------------------------

    #[test]
    fn latin1_bytes() {
        let a = run(b"SELECT 'caf\xe9'; SET search_path = x", true);
        assert_eq!(a.violation, setting("search_path"));
        assert_eq!(a.statements, 2);
        let a = run(
            b"SELECT caf\xe9, \"\xe9t\xe9\" FROM t\xe9 WHERE x = E'\xe9\\\xe9'",
            true,
        );
        let want = Analysis {
            statements: 1,
            ..Analysis::default()
        };
        assert_eq!(a, want);
        let a = analyze(b"SET app.caf\xe9 = 1", true, &|n: &str| {
            n.starts_with("app.")
        });
        assert_eq!(a.violation, setting("app.caf\u{fffd}"));
        let a = analyze(
            b"SELECT set_config('app.\xe9', 'x', true)",
            true,
            &|n: &str| n.starts_with("app."),
        );
        assert_eq!(a.violation, setting("app.\u{fffd}"));
    }

    #[test]
    fn truncated_inputs_do_not_panic() {
        let full = "SELECT set_config(E'search\\137path', U&'x\\0041' UESCAPE '!', true), $a$ b $a$, \"q\"\"x\" /* c /* d */ */ -- e\n; SET LOCAL \"app\".tenant_id = 'v'; CREATE FUNCTION f() BEGIN ATOMIC SELECT CASE WHEN 1 THEN 2 END; END; DEALLOCATE PREPARE ALL; SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY";
        let bytes = full.as_bytes();
        for n in 0..=bytes.len() {
            let _ = run(&bytes[..n], true);
            let _ = run(&bytes[n..], false);
        }
        for sql in [
            "SET",
            "SET SESSION",
            "SET LOCAL",
            "RESET",
            "SET \"",
            "set_config(",
            "SELECT set_config('search_path'",
            "SET U&\"",
            "SET U&\"\\",
            "DEALLOCATE PREPARE",
            "CREATE OR",
            "EXPLAIN (",
            "REINDEX (",
            "CLUSTER (",
            "E'\\",
            "$",
            "$a",
            "$a$",
            "U&",
        ] {
            let _ = run(sql.as_bytes(), true);
        }
        assert_eq!(viol("SELECT 'abc; SET search_path = x"), None);
        assert_eq!(viol("SELECT 1 /* SET search_path = x"), None);
        assert_eq!(viol("SET search_path = 'x"), setting("search_path"));
    }

    #[test]
    fn arbitrary_bytes_do_not_panic() {
        let alphabet = b"'\"$\\-/*;(),.:=_eEuUnNbBxX&019 \n\r\xe9\xff\x00aSETsetconfig";
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            let len = (state % 64) as usize;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                buf.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            let _ = run(&buf, true);
            let _ = Lexer::new(&buf).count();
        }
    }

    #[test]
    fn one_megabyte_inputs() {
        let mb = 1 << 20;
        let mut sql = Vec::with_capacity(mb + 64);
        while sql.len() < mb {
            sql.extend_from_slice(b"SELECT 1;");
        }
        let selects = sql.len() / 9;
        sql.extend_from_slice(b"SET search_path = x");
        let a = run(&sql, true);
        assert_eq!(a.statements as usize, selects + 1);
        assert_eq!(a.violation, setting("search_path"));

        let mut sql = b"SELECT '".to_vec();
        sql.resize(mb, b'a');
        sql.extend_from_slice(b"'; SET search_path = x");
        assert_eq!(run(&sql, true).violation, setting("search_path"));

        let patterns: [&[u8]; 8] = [
            b"(",
            b"$a",
            b"$a$b",
            b"set_config(",
            b"/*",
            b"'\\",
            b"U&\"\\",
            b"set_config('a'::",
        ];
        for p in patterns {
            let mut sql = b"SELECT ".to_vec();
            while sql.len() < mb {
                sql.extend_from_slice(p);
            }
            let start = std::time::Instant::now();
            let _ = run(&sql, true);
            let took = start.elapsed();
            assert!(took.as_secs() < 5, "{:?}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn flags_api() {
        let f = Flags::TXN_BEGIN | Flags::COPY;
        assert!(f.contains(Flags::TXN_BEGIN));
        assert!(f.contains(Flags::TXN_BEGIN | Flags::COPY));
        assert!(!f.contains(Flags::TXN_END));
        assert!(!f.is_empty());
        assert!(Flags::default().is_empty());
        let mut g = Flags::default();
        g |= Flags::LISTEN;
        assert_eq!(g, Flags::LISTEN);
        let all = [
            Flags::TXN_BEGIN,
            Flags::TXN_END,
            Flags::NON_TXN,
            Flags::SET_SESSION,
            Flags::SET_ROLE,
            Flags::PREPARE,
            Flags::DEALLOCATE,
            Flags::DEALLOCATE_ALL,
            Flags::TEMP_OBJECT,
            Flags::WITH_HOLD,
            Flags::LISTEN,
            Flags::ADVISORY_LOCK,
            Flags::DISCARD,
            Flags::UNCERTAIN,
            Flags::COPY,
        ];
        let mut seen = 0u32;
        for f in all {
            assert_eq!(f.0.count_ones(), 1);
            assert_eq!(seen & f.0, 0);
            seen |= f.0;
        }
    }

    #[test]
    fn timing_211_byte_select() {
        let sql: &[u8] = b"SELECT u.id, u.email, u.created_at, o.total FROM users u JOIN orders o ON o.user_id = u.id WHERE u.tenant_id = $1 AND o.status = 'paid' AND o.created_at > now() - interval '30 days' ORDER BY o.total DESC LIMIT 5";
        assert_eq!(sql.len(), 211);
        let protected = |n: &str| PROTECTED.contains(&n);
        let iters = 100_000u32;
        let mut statements = 0u64;
        let start = std::time::Instant::now();
        for _ in 0..iters {
            let a = analyze(std::hint::black_box(sql), true, &protected);
            statements += u64::from(a.statements);
        }
        let ns = start.elapsed().as_nanos() / u128::from(iters);
        assert_eq!(statements, u64::from(iters));
        println!("analyze: {ns} ns/iter for a {}-byte SELECT", sql.len());
    }
}
