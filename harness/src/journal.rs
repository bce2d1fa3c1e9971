//! The run journal: an append-only, crash-safe NDJSON record of everything a run did.
//!
//! Every frame sent and received, every HTTP exchange, every operation (as invoke, then ok / fail /
//! info, Jepsen's model), every fault window, and each case's start and end. Checkers are pure
//! functions over these records, so `verify` can re-derive every verdict from the journal alone, and
//! `--resume` can skip the cases whose end is already recorded.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::verdict::CaseResult;

/// Direction of a frame, from the harness's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    /// Harness to realm.
    Send,
    /// Realm to harness.
    Recv,
}

/// The phase of an operation (Jepsen's history model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The operation was started.
    Invoke,
    /// It completed and took effect.
    Ok,
    /// It completed and certainly did not take effect.
    Fail,
    /// Its outcome is unknown (timeout, connection lost).
    Info,
}

/// What one journal record holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rec", rename_all = "snake_case")]
pub enum Entry {
    /// The run started.
    RunStart {
        /// Plan id.
        plan: String,
        /// Plan content hash.
        plan_hash: String,
        /// The run's seed.
        seed: u64,
        /// Description of the target.
        target: String,
        /// Wall-clock start, RFC 3339.
        at: String,
    },
    /// A case started.
    CaseStart {
        /// Its parameters as run (after seeding), so a replay can use the same inputs.
        params: Value,
    },
    /// A WebSocket frame.
    Frame {
        /// Connection number within the run.
        conn: u32,
        /// Direction.
        dir: Dir,
        /// Text frames as text; binary frames and invalid UTF-8 as `hex:` followed by hex.
        data: String,
    },
    /// A WebSocket connection opened, failed or closed.
    Conn {
        /// Connection number.
        conn: u32,
        /// `open`, `refused`, `closed`, `timeout`, `aborted` (dropped by the harness without a
        /// close frame, as a crashing peer would).
        event: String,
        /// Details (URL, close code, error text).
        detail: String,
    },
    /// An HTTP exchange.
    Http {
        /// `GET`.
        method: String,
        /// Path and query.
        path: String,
        /// Status code, or 0 when no response came.
        status: u16,
        /// Response body (text, possibly truncated) or the error.
        body: String,
    },
    /// An operation of a history.
    Op {
        /// The logical process (client or worker number).
        process: u32,
        /// The function (`submit`, `reserve`, `fetch`...).
        f: String,
        /// Invoke, ok, fail or info.
        phase: Phase,
        /// Arguments or result.
        value: Value,
    },
    /// A fault window boundary, with proof that it took effect.
    Fault {
        /// `kill`, `pause`, `partition`...
        what: String,
        /// `start` or `end`.
        edge: String,
        /// What shows the fault was real (a pid's exit status, a refused connection...).
        proof: String,
    },
    /// Free text for the wire log.
    Note {
        /// The text.
        text: String,
    },
    /// A case ended with this result.
    CaseEnd {
        /// The result as decided at run time.
        result: Box<CaseResult>,
    },
    /// The run ended (absent when it was interrupted).
    RunEnd {
        /// Wall-clock end, RFC 3339.
        at: String,
    },
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// 1-based, gapless sequence number.
    pub seq: u64,
    /// Microseconds since the journal was opened in this process.
    pub t_us: u64,
    /// The case this record belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<String>,
    /// The record itself.
    #[serde(flatten)]
    pub entry: Entry,
}

/// Why the journal could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// File system error.
    #[error("journal {path}: {source}")]
    Io {
        /// The journal's path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A complete line that is not a record (a torn last line is tolerated, not this).
    #[error("journal {path} line {line}: not a journal record: {message}")]
    Corrupt {
        /// The journal's path.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// Parser message.
        message: String,
    },
}

struct Inner {
    file: File,
    path: PathBuf,
    next_seq: u64,
    start: Instant,
    failed: Option<String>,
}

/// An open journal, shared by every task of a run.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}

impl Journal {
    /// Opens (creating if needed) the journal at `path` for appending. Records already there are
    /// kept; numbering continues after the last complete one, and a torn last line is cut off.
    pub fn open(path: &Path) -> Result<(Self, Vec<Record>), JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_owned(),
            source,
        };
        let (existing, good_len) = if path.exists() {
            read_with_len(path)?
        } else {
            (Vec::new(), 0)
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(io)?;
        // Drop a torn tail so the next record starts on a fresh line.
        file.set_len(good_len).map_err(io)?;
        let next_seq = existing.last().map_or(1, |r| r.seq + 1);
        Ok((
            Self {
                inner: Arc::new(Mutex::new(Inner {
                    file,
                    path: path.to_owned(),
                    next_seq,
                    start: Instant::now(),
                    failed: None,
                })),
            },
            existing,
        ))
    }

    /// Appends one record and returns its sequence number. A write error is remembered (and
    /// reported by [`Journal::sync`]) rather than aborting the case that logged.
    pub fn log(&self, case: Option<&str>, entry: Entry) -> u64 {
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            // A panic while holding the lock cannot leave a half-written line: writes are whole.
            Err(poisoned) => poisoned.into_inner(),
        };
        let seq = inner.next_seq;
        let record = Record {
            seq,
            t_us: u64::try_from(inner.start.elapsed().as_micros()).unwrap_or(u64::MAX),
            case: case.map(str::to_owned),
            entry,
        };
        let mut line = match serde_json::to_vec(&record) {
            Ok(l) => l,
            Err(e) => {
                inner.failed = Some(format!("serialize record {seq}: {e}"));
                return seq;
            }
        };
        line.push(b'\n');
        if let Err(e) = inner.file.write_all(&line) {
            inner.failed = Some(format!("write record {seq}: {e}"));
        }
        inner.next_seq += 1;
        seq
    }

    /// Forces everything written so far to stable storage.
    pub fn sync(&self) -> Result<(), JournalError> {
        let inner = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let io = |source| JournalError::Io {
            path: inner.path.clone(),
            source,
        };
        if let Some(msg) = &inner.failed {
            return Err(io(std::io::Error::other(msg.clone())));
        }
        inner.file.sync_data().map_err(io)
    }

    /// The journal file's path.
    pub fn path(&self) -> PathBuf {
        match self.inner.lock() {
            Ok(g) => g.path.clone(),
            Err(poisoned) => poisoned.into_inner().path.clone(),
        }
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        match self.inner.lock() {
            Ok(g) => g.next_seq,
            Err(poisoned) => poisoned.into_inner().next_seq,
        }
    }
}

/// Reads every complete record of a journal file. A torn last line (a crash mid-write) is ignored.
pub fn read(path: &Path) -> Result<Vec<Record>, JournalError> {
    read_with_len(path).map(|(records, _)| records)
}

fn read_with_len(path: &Path) -> Result<(Vec<Record>, u64), JournalError> {
    let file = File::open(path).map_err(|source| JournalError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut good_len = 0u64;
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| JournalError::Io {
                path: path.to_owned(),
                source,
            })?;
        if n == 0 {
            break;
        }
        number += 1;
        if line.last() != Some(&b'\n') {
            break; // torn tail: the process died mid-write
        }
        let record: Record = serde_json::from_slice(&line).map_err(|e| JournalError::Corrupt {
            path: path.to_owned(),
            line: number,
            message: e.to_string(),
        })?;
        records.push(record);
        good_len += n as u64;
    }
    Ok((records, good_len))
}

/// Renders a frame's bytes for the journal: text as is, anything else as `hex:...`.
pub fn frame_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => format!("hex:{}", hex::encode(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mtor-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir.join("journal.ndjson")
    }

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_dropped() {
        let path = tmp("torn");
        let (j, existing) = Journal::open(&path).expect("open");
        assert!(existing.is_empty());
        j.log(Some("events.x"), Entry::Note { text: "one".into() });
        j.log(None, Entry::Note { text: "two".into() });
        j.sync().expect("sync");
        drop(j);
        // Simulate a crash in the middle of writing a third record.
        let mut f = OpenOptions::new().append(true).open(&path).expect("append");
        f.write_all(b"{\"seq\":3,\"t_us\":1,\"rec\":\"no")
            .expect("write");
        drop(f);
        let (j, existing) = Journal::open(&path).expect("reopen");
        assert_eq!(existing.len(), 2);
        assert_eq!(existing[0].case.as_deref(), Some("events.x"));
        assert_eq!(
            j.log(
                None,
                Entry::Note {
                    text: "three".into()
                }
            ),
            3
        );
        j.sync().expect("sync");
        let all = read(&path).expect("read");
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn a_corrupt_complete_line_is_an_error_naming_the_line() {
        let path = tmp("corrupt");
        std::fs::write(
            &path,
            "{\"seq\":1,\"t_us\":0,\"rec\":\"note\",\"text\":\"a\"}\ngarbage\n",
        )
        .expect("write");
        let err = read(&path).expect_err("corrupt").to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
