//! A client's named prepared statements in transaction mode: client name → shared definition.
//! The client's names never reach the server; the definition's proxy-chosen name does.

use std::collections::HashMap;
use std::sync::Arc;

use crate::server::prepared::StatementDef;

#[derive(Default)]
pub struct ClientStatements {
    map: HashMap<Box<[u8]>, Arc<StatementDef>>,
}

/// Most named statements one client may hold (beyond: 53400 on Parse).
pub const MAX_CLIENT_STATEMENTS: usize = 10_000;

impl ClientStatements {
    #[inline]
    pub fn get(&self, name: &[u8]) -> Option<&Arc<StatementDef>> {
        self.map.get(name)
    }
    pub fn contains(&self, name: &[u8]) -> bool {
        self.map.contains_key(name)
    }
    pub fn insert(&mut self, name: &[u8], def: Arc<StatementDef>) {
        self.map.insert(name.into(), def);
    }
    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<StatementDef>> {
        self.map.remove(name)
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
