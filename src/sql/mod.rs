//! SQL text inspection without parsing: a lexer that understands comments, quoting and dollar
//! quoting, the statement classifier used by the tenant guard and session-state tracking, and
//! query normalisation for statistics.

pub mod classify;
pub mod normalize;
