//! # State store (sled)
//!
//! One sled database with these trees (DESIGN §8):
//! - `journal`: accepted observation messages, key = cycle (u64 BE) ‖ message id, value = a
//!   bincode [`JournalEntry`]. Written, and flushed, before the message is acknowledged.
//! - No id tree (schema 3): de-duplication of redeliveries reads an in-memory set of the journaled
//!   message ids, built from the journal's keys at the first write or prune (so the read-only
//!   commands do not pay for it) and pruned with the journal.
//!   The set holds exactly the ids of the kept journal, as the `ids` tree (id → cycle) of schemas
//!   1–2 did. One sled insert per message instead of a read and two inserts: the journal writes a
//!   batch about twice as fast (`docs/benchmarks.md`, "Ingest and the daemon").
//! - `truth`: cycle → the simulator's true state (OSSE mode), f64 LE.
//! - `state`: filter ‖ cycle ‖ member → one member's f64 LE values. Members are stored one by one so
//!   that every value stays below sled's ~128 KiB blob threshold (blobs are not fsynced by flush).
//! - `cycles`: cycle → the JSON summary of that cycle (per filter, counts of messages assimilated).
//! - `qc`: the observations quality control left out (schema 2), key = cycle (u64 BE) ‖ message
//!   id ‖ 0 ‖ index in the message (u32 BE), value = a JSON [`QcRejection`]: journaled, not
//!   assimilated, kept and pruned with its cycle's journal.
//! - `meta`: schema version, the compatibility key of the config, the bundle hash, the
//!   "assimilated up to" marker, the observation clock and (schema 2) the station monitor's
//!   statistics (JSON [`MonitorState`]).
//!
//! A schema-1 or schema-2 store is upgraded in place on open: schema 2 added the `qc` tree and the
//! monitor key, schema 3 drops the `ids` tree, so the state and journal carry over. Any other schema
//! fails, naming `assimd reset` (so a binary of schema 2 refuses a schema-3 store instead of
//! missing its redeliveries).
//!
//! A cycle's ensembles, summary and marker are written in one transaction, then flushed: after a
//! crash the store holds either the whole cycle or none of it, and the journal of every cycle after
//! the marker is still there to be assimilated (exactly once).

use super::summary::CycleSummary;
use crate::qc::QcRejection;
use anyhow::{bail, Context, Result};
use assimd_filter::obs::Observation;
use assimd_filter::qc::MonitorState;
use assimd_filter::Ensemble;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::path::Path;

/// Layout version of the store; bumped when the trees change incompatibly.
pub const SCHEMA: u64 = 3;

const META_SCHEMA: &[u8] = b"schema";
const META_COMPAT: &[u8] = b"compat";
const META_BUNDLE: &[u8] = b"bundle_hash";
const META_ASSIMILATED: &[u8] = b"assimilated_up_to";
const META_CLOCK: &[u8] = b"obs_clock_ms";
const META_JOURNALED: &[u8] = b"journaled_total";
const META_ASSIMILATED_MSGS: &[u8] = b"assimilated_messages_total";
const META_MONITOR: &[u8] = b"station_monitor";

/// One journaled message: what the cycle needs of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Observation time, ms since the Unix epoch.
    pub time_ms: i64,
    /// The station id (None for satellite granules): decides whether it is withheld.
    pub station: Option<String>,
    /// The validated observations.
    pub obs: Vec<Observation>,
}

/// What happened to a message offered to the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Journaled {
    /// Newly written.
    New,
    /// Its id was already journaled: a redelivery.
    Duplicate,
}

/// The store.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    journal: sled::Tree,
    /// Ids of the messages in `journal` (the de-duplication set; see the module doc).
    ids: std::sync::Arc<std::sync::Mutex<Option<IdSet>>>,
    truth: sled::Tree,
    state: sled::Tree,
    cycles: sled::Tree,
    qc: sled::Tree,
    meta: sled::Tree,
}

/// The ids of the journaled messages (the journal's keys without their cycle).
type IdSet = std::collections::HashSet<Box<[u8]>>;

fn qc_key(cycle: u64, r: &QcRejection) -> Vec<u8> {
    let mut k = be(cycle).to_vec();
    k.extend_from_slice(r.message.as_bytes());
    k.push(0);
    k.extend_from_slice(&r.index.to_be_bytes());
    k
}

fn be(k: u64) -> [u8; 8] {
    k.to_be_bytes()
}

fn u64_of(v: Option<sled::IVec>) -> Option<u64> {
    v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
}

/// f64 values as little-endian bytes.
pub fn f64s_to_bytes(x: &[f64]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Little-endian bytes as f64 values.
pub fn bytes_to_f64s(b: &[u8]) -> Vec<f64> {
    // chunks_exact(8) yields 8-byte slices, so the conversion cannot fail.
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

fn state_key(filter: &str, cycle: u64, member: u32) -> Vec<u8> {
    let mut k = filter.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&be(cycle));
    k.extend_from_slice(&member.to_be_bytes());
    k
}

fn abort<E: std::fmt::Display>(e: E) -> ConflictableTransactionError<String> {
    ConflictableTransactionError::Abort(e.to_string())
}

fn tx_err(e: TransactionError<String>) -> anyhow::Error {
    match e {
        TransactionError::Abort(s) => anyhow::anyhow!(s),
        TransactionError::Storage(e) => anyhow::Error::new(e).context("sled storage error"),
    }
}

/// A cycle to commit: per filter its analysis ensemble, and the cycle's summary.
pub struct CycleCommit<'a> {
    /// The cycle number.
    pub cycle: u64,
    /// (filter name, analysis ensemble).
    pub ensembles: Vec<(&'a str, &'a Ensemble)>,
    /// The summary stored (as JSON) under `cycles`.
    pub summary: &'a CycleSummary,
    /// Messages of the journal assimilated (or used for verification) by this cycle.
    pub messages: u64,
    /// Cycles kept: the state of cycle - keep is deleted.
    pub keep: u64,
    /// Summaries kept (>= keep): the summary of cycle - keep_summaries is deleted.
    pub keep_summaries: u64,
    /// Observations of this cycle that QC left out.
    pub rejections: &'a [QcRejection],
    /// The station monitor's statistics after this cycle.
    pub monitor: &'a MonitorState,
}

impl Store {
    /// Open (or create) the store in a directory.
    pub fn open(path: &Path) -> Result<Store> {
        std::fs::create_dir_all(path)
            .with_context(|| format!("creating the store directory {}", path.display()))?;
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            // sled's default page cache is 1 GiB; the working set is one cycle's ensembles and journal.
            .cache_capacity(64 << 20)
            .open()
            .with_context(|| {
                format!(
                    "opening the sled store at {} (is another assimd running on it?)",
                    path.display()
                )
            })?;
        let t = |n: &str| db.open_tree(n).with_context(|| format!("opening tree {n}"));
        Ok(Store {
            journal: t("journal")?,
            ids: Default::default(),
            truth: t("truth")?,
            state: t("state")?,
            cycles: t("cycles")?,
            qc: t("qc")?,
            meta: t("meta")?,
            db,
        })
    }

    /// Check the store's schema and compatibility key against this configuration, or record them
    /// in a fresh store. Refuses, naming the fix, when they differ.
    pub fn check_or_init(
        &self,
        compat: &serde_json::Value,
        bundle_hash: Option<&str>,
        config_hint: &str,
    ) -> Result<()> {
        let compat_text = compat.to_string();
        let bundle = bundle_hash.unwrap_or("none");
        match u64_of(self.meta.get(META_SCHEMA)?) {
            None => {
                self.meta.insert(META_SCHEMA, &be(SCHEMA))?;
                self.meta.insert(META_COMPAT, compat_text.as_bytes())?;
                self.meta.insert(META_BUNDLE, bundle.as_bytes())?;
                self.meta.insert(META_ASSIMILATED, &be(0))?;
                self.db.flush()?;
                Ok(())
            }
            Some(old @ (1 | 2)) => {
                // Schema 2 added the qc tree and the monitor statistics; schema 3 drops the `ids`
                // tree, whose ids are the journal's keys (now an in-memory set).
                self.db.drop_tree("ids").context("dropping the old ids tree")?;
                self.meta.insert(META_SCHEMA, &be(SCHEMA))?;
                self.db.flush()?;
                tracing::info!("store upgraded in place from schema {old} to {SCHEMA} (quality control records; no ids tree)");
                self.check_or_init(compat, bundle_hash, config_hint)
            }
            Some(s) if s != SCHEMA => bail!(
                "the store was written by a different assimd version (schema {s}, this binary uses {SCHEMA}): \
                 run `assimd reset --config {config_hint}` to start a new state (the old one is removed)"
            ),
            Some(_) => {
                let old: serde_json::Value = self
                    .meta
                    .get(META_COMPAT)?
                    .and_then(|v| serde_json::from_slice(&v).ok())
                    .unwrap_or(serde_json::Value::Null);
                if &old != compat {
                    let mut diffs = Vec::new();
                    if let (Some(o), Some(n)) = (old.as_object(), compat.as_object()) {
                        for (k, v) in n {
                            if o.get(k) != Some(v) {
                                diffs.push(format!("{k}: store has {}, config has {v}", o.get(k).map(|x| x.to_string()).unwrap_or("nothing".into())));
                            }
                        }
                    }
                    bail!(
                        "the configuration changed incompatibly with the stored state ({}): restore the old settings, \
                         or run `assimd reset --config {config_hint}` to discard the state and start again",
                        diffs.join("; ")
                    );
                }
                let old_bundle = self.meta.get(META_BUNDLE)?.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
                if old_bundle != bundle {
                    bail!(
                        "the model bundle changed (store built with bundle {old_bundle}, config now gives {bundle}): \
                         restore the old bundle, or run `assimd reset --config {config_hint}` to discard the state"
                    );
                }
                Ok(())
            }
        }
    }

    /// The last committed cycle (0 = only the initial state, which is not stored).
    pub fn assimilated_up_to(&self) -> Result<u64> {
        Ok(u64_of(self.meta.get(META_ASSIMILATED)?).unwrap_or(0))
    }

    /// The observation clock: the newest observation time journaled, ms since the Unix epoch.
    pub fn obs_clock_ms(&self) -> Result<Option<i64>> {
        Ok(u64_of(self.meta.get(META_CLOCK)?).map(|v| v as i64))
    }

    /// Messages journaled since the store was created.
    pub fn journaled_total(&self) -> Result<u64> {
        Ok(u64_of(self.meta.get(META_JOURNALED)?).unwrap_or(0))
    }

    /// Messages assimilated (or used for verification) by committed cycles since the store was created.
    pub fn assimilated_messages_total(&self) -> Result<u64> {
        Ok(u64_of(self.meta.get(META_ASSIMILATED_MSGS)?).unwrap_or(0))
    }

    /// The set of journaled ids behind `guard`, read from the journal's keys on first use.
    fn id_set<'a>(&self, guard: &'a mut Option<IdSet>) -> Result<&'a mut IdSet> {
        if guard.is_none() {
            let mut ids = IdSet::new();
            for k in self.journal.iter().keys() {
                let k = k.context("reading the journal's keys")?;
                ids.insert(Box::from(&k[8..]));
            }
            *guard = Some(ids);
        }
        Ok(guard.as_mut().expect("filled above"))
    }

    /// Journal a batch of messages (cycle, id, entry) and truths (cycle, state) in one transaction,
    /// advancing the observation clock. Does not flush: call [`Store::flush`] before acknowledging.
    pub fn journal_batch(
        &self,
        msgs: &[(u64, String, JournalEntry)],
        truths: &[(u64, Vec<f64>)],
    ) -> Result<Vec<Journaled>> {
        let encoded: Vec<Vec<u8>> = msgs
            .iter()
            .map(|(_, _, e)| bincode::serde::encode_to_vec(e, bincode::config::standard()))
            .collect::<Result<_, _>>()
            .context("encoding a journal entry")?;
        // One writer at a time: the lock is held until the batch's ids are in the set.
        let mut guard = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        let ids = self.id_set(&mut guard)?;
        let mut in_batch = std::collections::HashSet::new();
        let out: Vec<Journaled> = msgs
            .iter()
            .map(|(_, id, _)| {
                if ids.contains(id.as_bytes()) || !in_batch.insert(id.as_str()) {
                    Journaled::Duplicate
                } else {
                    Journaled::New
                }
            })
            .collect();
        (&self.journal, &self.truth, &self.meta)
            .transaction(|(journal, truth, meta)| {
                let mut clock = u64_of(meta.get(META_CLOCK)?).map(|v| v as i64);
                let mut n_new = 0u64;
                for (((cycle, id, entry), bytes), o) in msgs.iter().zip(&encoded).zip(&out) {
                    if *o == Journaled::Duplicate {
                        continue;
                    }
                    let mut key = be(*cycle).to_vec();
                    key.extend_from_slice(id.as_bytes());
                    journal.insert(key, bytes.as_slice())?;
                    clock = Some(clock.map_or(entry.time_ms, |c| c.max(entry.time_ms)));
                    n_new += 1;
                }
                for (cycle, x) in truths {
                    truth.insert(&be(*cycle), f64s_to_bytes(x))?;
                }
                if let Some(c) = clock {
                    meta.insert(META_CLOCK, &be(c as u64))?;
                }
                let total = u64_of(meta.get(META_JOURNALED)?).unwrap_or(0) + n_new;
                meta.insert(META_JOURNALED, &be(total))?;
                Ok(())
            })
            .map_err(tx_err)?;
        for ((_, id, _), o) in msgs.iter().zip(&out) {
            if *o == Journaled::New {
                ids.insert(Box::from(id.as_bytes()));
            }
        }
        Ok(out)
    }

    /// Make everything written so far durable.
    pub async fn flush_async(&self) -> Result<()> {
        self.db.flush_async().await.context("flushing the store")?;
        Ok(())
    }

    /// Make everything written so far durable (blocking).
    pub fn flush(&self) -> Result<()> {
        self.db.flush().context("flushing the store")?;
        Ok(())
    }

    /// The journaled messages of a cycle, in id order.
    pub fn journal_cycle(&self, cycle: u64) -> Result<Vec<(String, JournalEntry)>> {
        let mut out = Vec::new();
        for kv in self.journal.scan_prefix(be(cycle)) {
            let (k, v) = kv?;
            let id = String::from_utf8_lossy(&k[8..]).into_owned();
            let (e, _) = bincode::serde::decode_from_slice::<JournalEntry, _>(
                &v,
                bincode::config::standard(),
            )
            .with_context(|| format!("decoding journal entry {id} of cycle {cycle}"))?;
            out.push((id, e));
        }
        Ok(out)
    }

    /// The truth of a cycle, if the simulator published it.
    pub fn truth(&self, cycle: u64) -> Result<Option<Vec<f64>>> {
        Ok(self.truth.get(be(cycle))?.map(|v| bytes_to_f64s(&v)))
    }

    /// Commit a cycle: ensembles member by member, summary, counters and the marker, in one
    /// transaction, then flush. Also deletes the state of cycle - keep and the summary of cycle -
    /// keep_summaries.
    pub fn commit_cycle(&self, c: &CycleCommit) -> Result<()> {
        let summary = serde_json::to_vec(c.summary)?;
        let monitor = serde_json::to_vec(c.monitor)?;
        let rejections: Vec<(Vec<u8>, Vec<u8>)> = c
            .rejections
            .iter()
            .map(|r| Ok((qc_key(c.cycle, r), serde_json::to_vec(r)?)))
            .collect::<Result<_>>()?;
        (&self.state, &self.cycles, &self.qc, &self.meta)
            .transaction(|(state, cycles, qc, meta)| {
                let done = u64_of(meta.get(META_ASSIMILATED)?).unwrap_or(0);
                if c.cycle != done + 1 {
                    return Err(abort(format!(
                        "cycle {} committed after cycle {done}: cycles must be committed in order",
                        c.cycle
                    )));
                }
                for (filter, ens) in &c.ensembles {
                    for (m, x) in ens.members().enumerate() {
                        state.insert(state_key(filter, c.cycle, m as u32), f64s_to_bytes(x))?;
                    }
                    if c.cycle > c.keep {
                        for m in 0..ens.n_members() {
                            state.remove(state_key(filter, c.cycle - c.keep, m as u32))?;
                        }
                    }
                }
                cycles.insert(&be(c.cycle), summary.as_slice())?;
                if c.cycle > c.keep_summaries {
                    cycles.remove(&be(c.cycle - c.keep_summaries))?;
                }
                for (k, v) in &rejections {
                    qc.insert(k.as_slice(), v.as_slice())?;
                }
                meta.insert(META_MONITOR, monitor.as_slice())?;
                meta.insert(META_ASSIMILATED, &be(c.cycle))?;
                let total = u64_of(meta.get(META_ASSIMILATED_MSGS)?).unwrap_or(0) + c.messages;
                meta.insert(META_ASSIMILATED_MSGS, &be(total))?;
                Ok(())
            })
            .map_err(tx_err)?;
        self.db.flush().context("flushing the committed cycle")?;
        Ok(())
    }

    /// Delete journal entries, ids and truths of cycles up to `cycle` (already assimilated and
    /// outside the rolling window). Idempotent; not part of the commit transaction.
    pub fn prune_journal(&self, up_to: u64) -> Result<()> {
        let mut guard = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        let ids = self.id_set(&mut guard)?;
        for k in self.journal.range(..be(up_to + 1).to_vec()).keys() {
            let k = k?;
            self.journal.remove(&k)?;
            ids.remove(&k[8..]);
        }
        drop(guard);
        for kv in self.truth.range(..be(up_to + 1).to_vec()) {
            let (k, _) = kv?;
            self.truth.remove(&k)?;
        }
        for kv in self.qc.range(..be(up_to + 1).to_vec()) {
            let (k, _) = kv?;
            self.qc.remove(&k)?;
        }
        Ok(())
    }

    /// The station monitor's statistics as of the last commit (None: never committed with QC).
    pub fn monitor_state(&self) -> Result<Option<MonitorState>> {
        self.meta
            .get(META_MONITOR)?
            .map(|v| serde_json::from_slice(&v).context("decoding the stored station statistics: the store is damaged; run `assimd reset`"))
            .transpose()
    }

    /// The observations QC left out in cycles still kept: (cycle, rejection), oldest first.
    pub fn qc_rejections(&self) -> Result<Vec<(u64, QcRejection)>> {
        let mut out = Vec::new();
        for kv in self.qc.iter() {
            let (k, v) = kv?;
            let c = u64::from_be_bytes(k[..8].try_into()?);
            out.push((
                c,
                serde_json::from_slice(&v).context("decoding a stored QC record")?,
            ));
        }
        Ok(out)
    }

    /// Load a filter's analysis ensemble of a committed cycle.
    pub fn load_ensemble(&self, filter: &str, cycle: u64, members: usize) -> Result<Ensemble> {
        let mut out = Vec::with_capacity(members);
        for m in 0..members {
            let v = self
                .state
                .get(state_key(filter, cycle, m as u32))?
                .with_context(|| format!("the store lacks member {m} of filter {filter} at cycle {cycle}: it is damaged; run `assimd reset`"))?;
            out.push(bytes_to_f64s(&v));
        }
        Ensemble::from_members(out)
            .map_err(|e| anyhow::anyhow!("stored ensemble of {filter} at cycle {cycle}: {e}"))
    }

    /// Whether a filter has a stored ensemble at this cycle.
    pub fn has_ensemble(&self, filter: &str, cycle: u64) -> Result<bool> {
        Ok(self.state.contains_key(state_key(filter, cycle, 0))?)
    }

    /// Summaries of the committed cycles still kept, oldest first.
    pub fn summaries(&self) -> Result<Vec<(u64, CycleSummary)>> {
        let mut out = Vec::new();
        for kv in self.cycles.iter() {
            let (k, v) = kv?;
            let c = u64_of(Some(k)).unwrap_or(0);
            out.push((c, serde_json::from_slice(&v)?));
        }
        Ok(out)
    }

    /// Number of journal entries pending (not yet pruned), per cycle.
    pub fn journal_counts(&self) -> Result<Vec<(u64, u64)>> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for kv in self.journal.iter() {
            let (k, _) = kv?;
            let c = u64::from_be_bytes(k[..8].try_into()?);
            match out.last_mut() {
                Some((lc, n)) if *lc == c => *n += 1,
                _ => out.push((c, 1)),
            }
        }
        Ok(out)
    }

    /// Size of the database on disk, bytes.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// The stored compatibility key and bundle hash.
    pub fn identity(&self) -> Result<(serde_json::Value, String)> {
        let compat = self
            .meta
            .get(META_COMPAT)?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or(serde_json::Value::Null);
        let bundle = self
            .meta
            .get(META_BUNDLE)?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        Ok((compat, bundle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use assimd_filter::obs::{Footprint, Modality};

    fn entry(t: i64) -> JournalEntry {
        JournalEntry {
            time_ms: t,
            station: Some("S01".into()),
            obs: vec![Observation {
                modality: Modality::Station,
                var: 0,
                lat: 45.0,
                lon: 9.0,
                footprint: Footprint::Point,
                value: 1.0,
                sigma: 1.0,
            }],
        }
    }

    /// One QC rejection (message "b", z = 8.5) and a monitor that has seen station S01 once.
    fn qc_fixture() -> ([QcRejection; 1], MonitorState) {
        let rejected = [QcRejection {
            message: "b".into(),
            index: 0,
            modality: Modality::Station,
            reason: crate::qc::QcReason::BackgroundCheck,
            d: 9.0,
            z: 8.5,
        }];
        let mut monitor = MonitorState::default();
        assimd_filter::qc::StationMonitor::default().update(
            &mut monitor,
            1,
            &[assimd_filter::qc::StationReport {
                station: "S01".into(),
                obs: vec![(8.5, true)],
                values: vec![9.5],
            }],
        );
        (rejected, monitor)
    }

    /// Open a store just dropped in this process. sled's flusher thread lets go of the file lock
    /// shortly after the store is dropped, so a reopen may find it still held for a moment.
    fn reopen(dir: &std::path::Path) -> Store {
        (0..100)
            .find_map(|_| {
                Store::open(dir)
                    .map_err(|_| std::thread::sleep(std::time::Duration::from_millis(50)))
                    .ok()
            })
            .expect("the store's lock was not released within 5 s of dropping it")
    }

    #[test]
    fn journal_dedups_and_commit_is_ordered_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let compat = serde_json::json!({"testbed": "l96", "members": 2});
        {
            let s = Store::open(dir.path()).unwrap();
            s.check_or_init(&compat, None, "c.toml").unwrap();
            let r = s
                .journal_batch(
                    &[
                        (1, "a".into(), entry(10)),
                        (1, "b".into(), entry(20)),
                        (1, "a".into(), entry(10)),
                    ],
                    &[(1, vec![1.0, 2.0])],
                )
                .unwrap();
            assert_eq!(
                r,
                vec![Journaled::New, Journaled::New, Journaled::Duplicate]
            );
            assert_eq!(
                s.journal_batch(&[(1, "b".into(), entry(20))], &[]).unwrap(),
                vec![Journaled::Duplicate]
            );
            assert_eq!(s.journal_cycle(1).unwrap().len(), 2);
            assert_eq!(s.obs_clock_ms().unwrap(), Some(20));
            let ens = Ensemble::from_members(vec![vec![1.0, 2.0], vec![3.0, 4.0]]).unwrap();
            let (rejected, monitor) = qc_fixture();
            let bad = CycleCommit {
                cycle: 2,
                ensembles: vec![("letkf", &ens)],
                summary: &Default::default(),
                messages: 2,
                keep: 4,
                keep_summaries: 4,
                rejections: &rejected,
                monitor: &monitor,
            };
            assert!(
                s.commit_cycle(&bad).is_err(),
                "cycle 2 before cycle 1 must be refused"
            );
            let good = CycleCommit { cycle: 1, ..bad };
            s.commit_cycle(&good).unwrap();
            s.flush().unwrap();
        }
        let s = reopen(dir.path());
        s.check_or_init(&compat, None, "c.toml").unwrap();
        assert_eq!(s.assimilated_up_to().unwrap(), 1);
        assert_eq!(s.assimilated_messages_total().unwrap(), 2);
        assert_eq!(
            s.load_ensemble("letkf", 1, 2).unwrap().member(1),
            &[3.0, 4.0]
        );
        assert_eq!(s.truth(1).unwrap(), Some(vec![1.0, 2.0]));
        // The id set is rebuilt from the journal: a redelivery after a restart is still a duplicate.
        assert_eq!(
            s.journal_batch(
                &[(1, "a".into(), entry(10)), (2, "c".into(), entry(30))],
                &[]
            )
            .unwrap(),
            vec![Journaled::Duplicate, Journaled::New]
        );
        assert_eq!(s.journaled_total().unwrap(), 3);
        let e = s
            .check_or_init(
                &serde_json::json!({"testbed": "l96", "members": 3}),
                None,
                "c.toml",
            )
            .unwrap_err();
        assert!(
            e.to_string().contains("members") && e.to_string().contains("assimd reset"),
            "{e}"
        );
        let e = s.check_or_init(&compat, Some("abc"), "c.toml").unwrap_err();
        assert!(e.to_string().contains("bundle"), "{e}");
        assert_eq!(s.qc_rejections().unwrap().len(), 1);
        assert_eq!(s.qc_rejections().unwrap()[0].1.z, 8.5);
        let m = s.monitor_state().unwrap().unwrap();
        assert_eq!(m.stations["S01"].reports, 1);
        s.prune_journal(1).unwrap();
        assert!(s.journal_cycle(1).unwrap().is_empty());
        assert_eq!(s.journal_cycle(2).unwrap().len(), 1);
        // A pruned cycle's ids are forgotten with it; the kept cycle's are not.
        assert_eq!(
            s.journal_batch(
                &[(1, "a".into(), entry(10)), (2, "c".into(), entry(30))],
                &[]
            )
            .unwrap(),
            vec![Journaled::New, Journaled::Duplicate]
        );
        assert!(
            s.qc_rejections().unwrap().is_empty(),
            "QC records go with their cycle's journal"
        );
    }

    #[test]
    fn schema_1_and_2_stores_are_upgraded_and_an_unknown_schema_names_reset() {
        let compat = serde_json::json!({"testbed": "l96"});
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.check_or_init(&compat, None, "c.toml").unwrap();
            s.meta.insert(META_SCHEMA, &be(1)).unwrap();
            s.flush().unwrap();
        }
        let s = reopen(dir.path());
        s.check_or_init(&compat, None, "c.toml").unwrap();
        assert_eq!(u64_of(s.meta.get(META_SCHEMA).unwrap()), Some(SCHEMA));
        assert_eq!(s.monitor_state().unwrap(), None);
        drop(s);
        // Schema 2, with the `ids` tree it kept and a journaled message: upgraded, the tree dropped,
        // and the message's redelivery still recognised from the journal.
        {
            let s = reopen(dir.path());
            s.journal_batch(&[(1, "a".into(), entry(10))], &[]).unwrap();
            s.db.open_tree("ids").unwrap().insert("a", &be(1)).unwrap();
            s.meta.insert(META_SCHEMA, &be(2)).unwrap();
            s.flush().unwrap();
        }
        let s = reopen(dir.path());
        s.check_or_init(&compat, None, "c.toml").unwrap();
        assert_eq!(u64_of(s.meta.get(META_SCHEMA).unwrap()), Some(SCHEMA));
        assert!(!s.db.tree_names().iter().any(|n| n.as_ref() == b"ids"));
        assert_eq!(
            s.journal_batch(&[(1, "a".into(), entry(10))], &[]).unwrap(),
            vec![Journaled::Duplicate]
        );
        s.meta.insert(META_SCHEMA, &be(99)).unwrap();
        let e = s.check_or_init(&compat, None, "c.toml").unwrap_err();
        assert!(
            e.to_string().contains("schema 99")
                && e.to_string().contains("assimd reset --config c.toml"),
            "{e}"
        );
    }
}
