//! Other engines, for side-by-side runs (cargo feature `peers`). Each
//! adapter states the call that makes its writes durable.

use std::path::Path;
use std::sync::Mutex;

use crate::{Engine, EngineKind, Result};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// RocksDB: `put_opt` with `WriteOptions::set_sync(true)` (WAL fsync'd per
/// write group); W3 writes without sync, then `flush_wal(true)`.
pub struct RocksDb;

struct RocksEngine {
    db: rocksdb::DB,
    write: rocksdb::WriteOptions,
}

impl Engine for RocksEngine {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        Ok(self.db.put_opt(key, value, &self.write)?)
    }
    fn sync(&self) -> Result<()> {
        Ok(self.db.flush_wal(true)?)
    }
    fn get(&self, key: &[u8]) -> Result<Option<usize>> {
        Ok(self.db.get_pinned(key)?.map(|v| v.len()))
    }
}

impl EngineKind for RocksDb {
    fn name(&self) -> &'static str {
        "rocksdb"
    }
    fn durability_call(&self) -> &'static str {
        "DB::put_opt with WriteOptions::set_sync(true); bulk: flush_wal(true)"
    }
    fn open(&self, dir: &Path, durable: bool) -> Result<Box<dyn Engine>> {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        let mut write = rocksdb::WriteOptions::default();
        write.set_sync(durable);
        Ok(Box::new(RocksEngine { db: rocksdb::DB::open(&options, dir)?, write }))
    }
}

/// redb: one write transaction per put, committed with
/// `Durability::Immediate` (fsync); W3 commits transactions of
/// [`REDB_BULK_TXN_PUTS`] puts with `Durability::None`, then the rest with
/// `Immediate`.
pub struct Redb;

const REDB_TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("data");

struct RedbEngine {
    db: redb::Database,
    durable: bool,
    /// Bulk puts not yet committed (non-durable mode only).
    pending: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// Non-durable puts are committed in transactions of this many: a
/// `Durability::None` commit per put makes redb 2 keep every old page until
/// the next durable commit (the file grew past 14 GB in W3).
const REDB_BULK_TXN_PUTS: usize = 10_000;

impl RedbEngine {
    fn commit(&self, durability: redb::Durability, puts: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability);
        {
            let mut table = txn.open_table(REDB_TABLE)?;
            for (key, value) in puts {
                table.insert(&key[..], &value[..])?;
            }
        }
        Ok(txn.commit()?)
    }
}

impl Engine for RedbEngine {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        if self.durable {
            return self.commit(redb::Durability::Immediate, &[(key.to_vec(), value.to_vec())]);
        }
        let mut pending = lock(&self.pending);
        pending.push((key.to_vec(), value.to_vec()));
        if pending.len() >= REDB_BULK_TXN_PUTS {
            self.commit(redb::Durability::None, &std::mem::take(&mut *pending))?;
        }
        Ok(())
    }
    fn sync(&self) -> Result<()> {
        let pending = std::mem::take(&mut *lock(&self.pending));
        self.commit(redb::Durability::Immediate, &pending)
    }
    fn get(&self, key: &[u8]) -> Result<Option<usize>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REDB_TABLE)?;
        Ok(table.get(key)?.map(|v| v.value().len()))
    }
}

impl EngineKind for Redb {
    fn name(&self) -> &'static str {
        "redb"
    }
    fn durability_call(&self) -> &'static str {
        "a write transaction per put, committed with Durability::Immediate; bulk: transactions of 10,000 puts with Durability::None, then one Immediate commit"
    }
    fn open(&self, dir: &Path, durable: bool) -> Result<Box<dyn Engine>> {
        let db = redb::Database::create(dir.join("redb"))?;
        let engine = RedbEngine { db, durable, pending: Mutex::new(Vec::new()) };
        engine.commit(redb::Durability::Immediate, &[])?;
        Ok(Box::new(engine))
    }
}

/// fjall: `insert`, then `Keyspace::persist(PersistMode::SyncData)` per put
/// (fdatasync of the journal); W3 inserts, then one `persist(SyncData)`.
pub struct Fjall;

struct FjallEngine {
    keyspace: fjall::Keyspace,
    partition: fjall::PartitionHandle,
    durable: bool,
}

impl Engine for FjallEngine {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.partition.insert(key, value)?;
        if self.durable {
            self.keyspace.persist(fjall::PersistMode::SyncData)?;
        }
        Ok(())
    }
    fn sync(&self) -> Result<()> {
        Ok(self.keyspace.persist(fjall::PersistMode::SyncData)?)
    }
    fn get(&self, key: &[u8]) -> Result<Option<usize>> {
        Ok(self.partition.get(key)?.map(|v| v.len()))
    }
}

impl EngineKind for Fjall {
    fn name(&self) -> &'static str {
        "fjall"
    }
    fn durability_call(&self) -> &'static str {
        "Partition::insert, then Keyspace::persist(PersistMode::SyncData)"
    }
    fn open(&self, dir: &Path, durable: bool) -> Result<Box<dyn Engine>> {
        let keyspace = fjall::Config::new(dir).open()?;
        let partition = keyspace.open_partition("data", fjall::PartitionCreateOptions::default())?;
        Ok(Box::new(FjallEngine { keyspace, partition, durable }))
    }
}

/// sled: `insert`, then `flush()` and an fdatasync of sled's data file (sled
/// 0.34's flush writes its buffers; the extra fdatasync makes it like-for-like).
pub struct Sled;

struct SledEngine {
    db: sled::Db,
    file: std::fs::File,
    durable: bool,
}

impl SledEngine {
    fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(self.file.sync_data()?)
    }
}

impl Engine for SledEngine {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.db.insert(key, value)?;
        if self.durable {
            self.flush()?;
        }
        Ok(())
    }
    fn sync(&self) -> Result<()> {
        self.flush()
    }
    fn get(&self, key: &[u8]) -> Result<Option<usize>> {
        Ok(self.db.get(key)?.map(|v| v.len()))
    }
}

impl EngineKind for Sled {
    fn name(&self) -> &'static str {
        "sled"
    }
    fn durability_call(&self) -> &'static str {
        "Db::insert, then Db::flush and fdatasync of sled's `db` file"
    }
    fn open(&self, dir: &Path, durable: bool) -> Result<Box<dyn Engine>> {
        let db = sled::open(dir)?;
        let file = std::fs::File::open(dir.join("db"))?;
        Ok(Box::new(SledEngine { db, file, durable }))
    }
}

/// SQLite (bundled): WAL mode, `synchronous=FULL`, one autocommit
/// `INSERT OR REPLACE` per put; W3 runs with `synchronous=OFF`, then one
/// transaction committed with `synchronous=FULL`.
pub struct Sqlite;

struct SqliteEngine(Mutex<rusqlite::Connection>);

impl Engine for SqliteEngine {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let conn = lock(&self.0);
        conn.prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")?.execute((key, value))?;
        Ok(())
    }
    fn sync(&self) -> Result<()> {
        let conn = lock(&self.0);
        conn.execute_batch("PRAGMA synchronous=FULL; BEGIN IMMEDIATE; DELETE FROM kv WHERE 0; COMMIT;")?;
        Ok(())
    }
    fn get(&self, key: &[u8]) -> Result<Option<usize>> {
        let conn = lock(&self.0);
        let mut stmt = conn.prepare_cached("SELECT length(v) FROM kv WHERE k = ?1")?;
        let mut rows = stmt.query([key])?;
        Ok(match rows.next()? {
            Some(row) => Some(row.get::<_, i64>(0)? as usize),
            None => None,
        })
    }
}

impl EngineKind for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }
    fn durability_call(&self) -> &'static str {
        "autocommit INSERT OR REPLACE with journal_mode=WAL, synchronous=FULL"
    }
    fn open(&self, dir: &Path, durable: bool) -> Result<Box<dyn Engine>> {
        let conn = rusqlite::Connection::open(dir.join("sqlite.db"))?;
        let sync = if durable { "FULL" } else { "OFF" };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID;"
        ))?;
        Ok(Box::new(SqliteEngine(Mutex::new(conn))))
    }
}

/// raft-engine (TiKV's log engine): `Engine::write(batch, sync = true)` per
/// put (fdatasync); W3 writes with `sync = false`, then one synced write.
pub struct RaftEngine;

const RAFT_REGION: u64 = 1;

struct RaftEngineEngine {
    engine: raft_engine::Engine,
    durable: bool,
}

impl Engine for RaftEngineEngine {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut batch = raft_engine::LogBatch::default();
        batch.put(RAFT_REGION, key.to_vec(), value.to_vec())?;
        self.engine.write(&mut batch, self.durable)?;
        Ok(())
    }
    fn sync(&self) -> Result<()> {
        self.engine.write(&mut raft_engine::LogBatch::default(), true)?;
        Ok(())
    }
    fn get(&self, key: &[u8]) -> Result<Option<usize>> {
        Ok(self.engine.get(RAFT_REGION, key).map(|v| v.len()))
    }
}

impl EngineKind for RaftEngine {
    fn name(&self) -> &'static str {
        "raft-engine"
    }
    fn durability_call(&self) -> &'static str {
        "Engine::write(LogBatch with one put, sync = true)"
    }
    fn open(&self, dir: &Path, durable: bool) -> Result<Box<dyn Engine>> {
        let config = raft_engine::Config { dir: dir.to_string_lossy().into_owned(), ..Default::default() };
        Ok(Box::new(RaftEngineEngine { engine: raft_engine::Engine::open(config)?, durable }))
    }
}
