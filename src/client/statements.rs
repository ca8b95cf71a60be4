//! A client's named prepared statements in transaction mode: client name → shared definition.
//! The client's names never reach the server; the definition's proxy-chosen name does.
//! Each name also keeps the session effects of its text (T2): they are noted again at every
//! Bind, since a statement re-executed in a later transaction has them again.

use std::collections::HashMap;
use std::sync::Arc;

use crate::server::prepared::StatementDef;
use crate::sql::classify::Flags;

#[derive(Default)]
pub struct ClientStatements {
    map: HashMap<Box<[u8]>, (Arc<StatementDef>, Flags)>,
}

/// Most named statements one client may hold (beyond: 53400 on Parse).
pub const MAX_CLIENT_STATEMENTS: usize = 10_000;

impl ClientStatements {
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
    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<StatementDef>> {
        self.map.remove(name).map(|e| e.0)
    }
    pub fn clear(&mut self) {
        self.map.clear();
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
