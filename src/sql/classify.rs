//! TEMPORARY stand-in until the classifier lands (helper in progress). Detects nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags(pub u32);
impl Flags {
    pub const TXN_BEGIN: Flags = Flags(1);
    pub const TXN_END: Flags = Flags(1 << 1);
    pub const NON_TXN: Flags = Flags(1 << 2);
    pub const SET_SESSION: Flags = Flags(1 << 3);
    pub const SET_ROLE: Flags = Flags(1 << 4);
    pub const PREPARE: Flags = Flags(1 << 5);
    pub const DEALLOCATE: Flags = Flags(1 << 6);
    pub const DEALLOCATE_ALL: Flags = Flags(1 << 7);
    pub const TEMP_OBJECT: Flags = Flags(1 << 8);
    pub const WITH_HOLD: Flags = Flags(1 << 9);
    pub const LISTEN: Flags = Flags(1 << 10);
    pub const ADVISORY_LOCK: Flags = Flags(1 << 11);
    pub const DISCARD: Flags = Flags(1 << 12);
    pub const UNCERTAIN: Flags = Flags(1 << 13);
    pub const COPY: Flags = Flags(1 << 14);
    pub fn contains(self, o: Flags) -> bool {
        self.0 & o.0 == o.0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    Setting(String),
    Role,
    ResetAll,
}
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Analysis {
    pub flags: Flags,
    pub statements: u32,
    pub violation: Option<Violation>,
}
pub fn analyze(sql: &[u8], _g: bool, _p: &dyn Fn(&str) -> bool) -> Analysis {
    Analysis {
        statements: u32::from(sql.iter().any(|b| !b.is_ascii_whitespace() && *b != b';')),
        ..Default::default()
    }
}
