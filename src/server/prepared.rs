//! Prepared statements shared across clients in transaction mode.
//!
//! A statement's identity is its Parse definition (query text + parameter types). The
//! [`Registry`] interns each definition once and gives it a proxy-chosen server-side name
//! (`pgward_<id>`, never a client name). Each server connection remembers which of them exist
//! on it ([`ServerStatements`], bounded, least-recently-used evicted with Close).
//!
//! Invariant: `ServerStatements` contains an id only if a Parse for it was sent on this
//! connection and neither failed nor was closed/deallocated since.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

#[derive(Debug)]
pub struct StatementDef {
    pub id: u64,
    /// Server-side name.
    pub name: Box<[u8]>,
    /// Parse body after the name: query, NUL, parameter count and types.
    pub definition: Box<[u8]>,
    /// Normalised query text, computed on first use (query statistics).
    pub shape: std::sync::OnceLock<std::sync::Arc<str>>,
    /// Bumped by every client Parse of this definition: copies prepared on server connections
    /// before that are re-prepared on their next use (a type or table may have been dropped
    /// and created again in between).
    pub generation: AtomicU64,
    /// What the statement is, from its text: the label if an execution fails.
    pub cmd: crate::metrics::Command,
}

impl StatementDef {
    /// The statement's SQL text (the definition up to its NUL).
    pub fn query(&self) -> &[u8] {
        let end = self
            .definition
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.definition.len());
        &self.definition[..end]
    }
}

/// Process-wide interning of statement definitions.
#[derive(Debug, Default)]
pub struct Registry {
    by_def: DashMap<Box<[u8]>, Arc<StatementDef>>,
    next: AtomicU64,
}

/// Beyond this many distinct definitions, new ones are not interned (each Parse gets its own
/// id): bounds memory when clients generate unique SQL.
const MAX_INTERNED: usize = 100_000;

impl Registry {
    pub fn intern(&self, definition: &[u8]) -> Arc<StatementDef> {
        self.intern_in(b"", definition)
    }

    /// Intern a definition prepared in a context (the tenant's search_path): the same text
    /// may resolve to other tables, columns and parameter types in another context, so
    /// statements are shared only within one context.
    pub fn intern_in(&self, context: &[u8], definition: &[u8]) -> Arc<StatementDef> {
        let keyed;
        let key: &[u8] = if context.is_empty() {
            definition
        } else {
            keyed = [context, b"\xff", definition].concat();
            &keyed
        };
        if let Some(d) = self.by_def.get(key) {
            return d.clone();
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let def = Arc::new(StatementDef {
            id,
            name: format!("pgward_{id}").into_bytes().into_boxed_slice(),
            definition: definition.into(),
            shape: std::sync::OnceLock::new(),
            generation: AtomicU64::new(0),
            cmd: crate::metrics::Command::of_sql(
                definition.split(|&b| b == 0).next().unwrap_or_default(),
            ),
        });
        if self.by_def.len() >= MAX_INTERNED {
            return def;
        }
        self.by_def.entry(key.into()).or_insert(def).clone()
    }
    pub fn len(&self) -> usize {
        self.by_def.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_def.is_empty()
    }
}

/// Statements that exist on one server connection, with their last use for LRU eviction.
#[derive(Debug, Default)]
pub struct ServerStatements {
    map: HashMap<u64, (u64, Arc<StatementDef>)>,
    /// Generation of each statement when it was prepared here.
    generations: HashMap<u64, u64>,
    tick: u64,
    /// Still on the server but unusable (its cached plan must not change result type after
    /// DDL): closed before the next Parse on this connection.
    stale: Vec<Arc<StatementDef>>,
}

impl ServerStatements {
    #[inline]
    pub fn contains(&mut self, id: u64) -> bool {
        self.tick += 1;
        match self.map.get_mut(&id) {
            Some((t, _)) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }
    /// Prepared here, and not older than the definition's last client Parse? A stale copy
    /// is scheduled for Close (see [`ServerStatements::take_stale`]).
    #[inline]
    pub fn has_current(&mut self, def: &StatementDef) -> bool {
        if !self.contains(def.id) {
            return false;
        }
        if self.generations.get(&def.id).copied() == Some(def.generation.load(Ordering::Relaxed)) {
            return true;
        }
        self.invalidate(def.id);
        false
    }
    /// Record a statement; returns the least recently used one to close if over `max`.
    pub fn insert(&mut self, def: Arc<StatementDef>, max: usize) -> Option<Arc<StatementDef>> {
        self.tick += 1;
        self.generations
            .insert(def.id, def.generation.load(Ordering::Relaxed));
        self.map.insert(def.id, (self.tick, def));
        if self.map.len() <= max.max(1) {
            return None;
        }
        let (&victim, _) = self.map.iter().min_by_key(|(_, (t, _))| *t)?;
        self.generations.remove(&victim);
        self.map.remove(&victim).map(|(_, d)| d)
    }
    pub fn remove(&mut self, id: u64) {
        self.map.remove(&id);
        self.generations.remove(&id);
    }
    /// The statement may exist on the server but must be closed and prepared again (Close of
    /// a statement that does not exist is not an error).
    pub fn invalidate(&mut self, id: u64) {
        self.generations.remove(&id);
        if let Some((_, d)) = self.map.remove(&id) {
            self.stale.push(d);
        }
    }
    pub fn take_stale(&mut self) -> Vec<Arc<StatementDef>> {
        std::mem::take(&mut self.stale)
    }
    pub fn clear(&mut self) {
        self.map.clear();
        self.generations.clear();
        self.stale.clear();
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_and_lru() {
        let r = Registry::default();
        let a = r.intern(b"SELECT 1\0\0\0");
        let b = r.intern(b"SELECT 1\0\0\0");
        let c = r.intern(b"SELECT 2\0\0\0");
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_eq!(&*a.name, format!("pgward_{}", a.id).as_bytes());
        let mut s = ServerStatements::default();
        assert!(s.insert(a.clone(), 2).is_none());
        assert!(s.insert(c.clone(), 2).is_none());
        assert!(s.contains(a.id)); // a is now the most recent
        let d = r.intern(b"SELECT 3\0\0\0");
        let evicted = s.insert(d, 2).unwrap();
        assert_eq!(evicted.id, c.id);
        assert!(!s.contains(c.id));
    }
}
