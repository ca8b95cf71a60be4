//! A client's named prepared statements in transaction mode: client name → shared definition.
//! The client's names never reach the server; the definition's proxy-chosen name does.
//! Each name also keeps the session effects of its text (T2): they are noted again at every
//! Bind, since a statement re-executed in a later transaction has them again.
//!
//! In session mode the client's statements live on its own server connection under its own
//! names; only what each does to the transaction is kept (`server::txn` needs it at Execute).

use std::collections::HashMap;
use std::sync::Arc;

use crate::server::prepared::StatementDef;
use crate::sql::classify::Flags;

#[derive(Default)]
pub struct ClientStatements {
    map: HashMap<Box<[u8]>, (Arc<StatementDef>, Flags)>,
    /// Session mode: the flags of each named statement the client parsed.
    session: HashMap<Box<[u8]>, Flags>,
}

/// Most named statements one client may hold (beyond: 53400 on Parse).
pub const MAX_CLIENT_STATEMENTS: usize = 10_000;

impl ClientStatements {
    /// Named statements the client holds (either mode).
    pub fn held(&self) -> usize {
        self.map.len() + self.session.len()
    }
    #[inline]
    pub fn get(&self, name: &[u8]) -> Option<&Arc<StatementDef>> {
        self.map.get(name).map(|e| &e.0)
    }
    /// The definition and what executing it does to the session.
    #[inline]
    pub fn get_with_effects(&self, name: &[u8]) -> Option<(&Arc<StatementDef>, Flags)> {
        self.map.get(name).map(|e| (&e.0, e.1))
    }
    pub fn contains(&self, name: &[u8]) -> bool {
        self.map.contains_key(name)
    }
    pub fn insert(&mut self, name: &[u8], def: Arc<StatementDef>, effects: Flags) {
        self.map.insert(name.into(), (def, effects));
    }
    /// Forget `name` if it still names statement `id` (a failed or skipped Parse undoes only
    /// what it created, not a later Parse of the same name).
    pub fn remove_created(&mut self, name: &[u8], id: Option<u64>) {
        if self.map.get(name).map(|e| e.0.id) == id || id.is_none() {
            self.map.remove(name);
        }
    }
    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<StatementDef>> {
        self.map.remove(name).map(|e| e.0)
    }
    pub fn clear(&mut self) {
        self.map.clear();
    }
    /// Session mode: the client parsed `name` (beyond the bound, its effects are unknown).
    pub fn note_session(&mut self, name: &[u8], flags: Flags) {
        if self.session.len() < MAX_CLIENT_STATEMENTS || self.session.contains_key(name) {
            self.session.insert(name.into(), flags);
        }
    }
    pub fn session_effects(&self, name: &[u8]) -> Option<Flags> {
        self.session.get(name).copied()
    }
    pub fn forget_session(&mut self, name: &[u8]) {
        self.session.remove(name);
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// Every named statement (transaction mode): name, definition, effects.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Arc<StatementDef>, Flags)> {
        self.map.iter().map(|(n, (d, f))| (&**n, d, *f))
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
