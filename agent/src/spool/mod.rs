//! The on-disk spool: every batch is appended (and fsynced) here before it is
//! published, and leaves only when the broker's PUBACK for it has arrived.
//!
//! # On-disk format
//!
//! The spool directory holds:
//! - segment files `spool-<id>.seg` (`<id>`: 20 decimal digits, the id of the first
//!   record written to it; segments are ordered by it). A segment is a sequence of
//!   records, each
//!   ```text
//!   len   u32 LE   length of `payload` (8 ..= MAX_PAYLOAD)
//!   crc   u32 LE   CRC-32 (IEEE) of `payload`
//!   payload        id u64 LE, then the batch bytes (the JSON envelope without `sent`)
//!   ```
//! - the cursor file `acked`: magic `QNC1`, `next_unacked` u64 LE (every record with
//!   a smaller id has been acknowledged), `dropped` u64 LE (records evicted unacked,
//!   ever), CRC-32 of the 20 bytes before it; replaced atomically (write + rename).
//! - `*.corrupt*` files: segments or cursors that failed their checks, kept for a
//!   human, never read again.
//!
//! # Invariants
//! - Record ids strictly increase through a segment and across segments in order.
//! - A record is appended and fsynced before anyone can publish it, so anything the
//!   broker acknowledged was on disk first.
//! - The cursor only moves forward over acknowledged records; a segment whose records
//!   are all below the cursor is deleted. A lost or stale cursor can only make records
//!   be published again (QoS 1 allows duplicates); it can never lose one.
//! - The segments together hold at most `max_bytes`; to make room the oldest segment is
//!   deleted and its unacknowledged records are added to `dropped`.
//!
//! # What a crash can leave, and what `open` does
//! - A torn tail (a record cut short at the end of a segment, or a last record whose
//!   CRC fails and that reaches the end of the file): cut off, the file truncated.
//! - A bad record with valid data after it (bit rot, a bad flash page): the file is
//!   renamed `…seg.corrupt`, the records that still check out (found by scanning for the
//!   next header whose CRC matches) are written to a fresh segment under the old name,
//!   and the damage is reported. Never fatal.
//! - A cursor file that fails its CRC: moved aside, the spool replays everything it
//!   still holds.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bytes of a record header: `len` and `crc`.
const HEADER: u64 = 8;
/// Largest payload accepted on append and believed on scan, bytes.
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// Smallest usable `max_bytes`.
pub const MIN_MAX_BYTES: u64 = 1024;
const CURSOR_MAGIC: &[u8; 4] = b"QNC1";
const CURSOR_FILE: &str = "acked";

/// Spool failures. Only I/O on the spool directory itself can produce one.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A batch larger than the spool or than `MAX_PAYLOAD`.
    #[error("batch of {0} bytes does not fit in the spool")]
    TooLarge(usize),
}

/// What `open` found and repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Bytes cut from torn tails.
    pub torn_tail_bytes: u64,
    /// Segment (or cursor) files moved aside because they were damaged.
    pub corrupt_files: Vec<PathBuf>,
    /// Bytes skipped inside damaged segments.
    pub skipped_bytes: u64,
    /// Whether the cursor file was unreadable (everything left is replayed).
    pub cursor_lost: bool,
    /// Unacknowledged records found.
    pub unacked: u64,
}

/// One record handed out for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Spool record id; pass it back to [`Spool::ack`].
    pub id: u64,
    /// The batch bytes as appended.
    pub data: Vec<u8>,
}

#[derive(Debug)]
struct Segment {
    /// Id in the file name.
    name_id: u64,
    /// Id of the last record, or `None` while empty.
    last_id: Option<u64>,
    /// File length, bytes.
    bytes: u64,
    /// Records with id >= cursor.
    unacked: u64,
}

/// The spool. Owned behind a mutex by the agent; every method does blocking file I/O
/// (one fsync per append), which takes milliseconds on a gateway's flash.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// A segment is sealed once it reaches this size.
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    /// Append handle of the last segment, if it is still open for appends.
    head: Option<File>,
    next_id: u64,
    next_unacked: u64,
    dropped: u64,
    /// Records handed out and not yet acknowledged, in order, with their ack flag.
    inflight: VecDeque<(u64, bool)>,
    /// Next record to hand out: (segment name id, offset).
    read: (u64, u64),
    reader: Option<(u64, File)>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_name(id: u64) -> String {
    format!("spool-{id:020}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("spool-")?
        .strip_suffix(".seg")?
        .parse()
        .ok()
}

mod recover;

impl Spool {
    /// Records not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        self.segments.iter().map(|s| s.unacked).sum()
    }

    /// Records evicted unacknowledged because the spool was full, ever.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes on disk in segments.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Records handed out by [`Spool::next_unsent`] and not acknowledged yet.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Appends the batches of one poll cycle and fsyncs once. Returns their ids.
    pub fn append_batch(&mut self, batches: &[&[u8]]) -> Result<Vec<u64>, SpoolError> {
        let mut ids = Vec::with_capacity(batches.len());
        for data in batches {
            if data.len() > MAX_PAYLOAD || data.len() as u64 + HEADER + 8 > self.max_bytes {
                return Err(SpoolError::TooLarge(data.len()));
            }
            let total = HEADER + 8 + data.len() as u64;
            self.make_room(total)?;
            let id = self.next_id;
            if self.head.is_none()
                || self
                    .segments
                    .back()
                    .is_none_or(|s| s.bytes + total > self.segment_bytes && s.bytes > 0)
            {
                self.start_segment(id)?;
            }
            let mut rec = Vec::with_capacity(us(total));
            let payload_len = u32::try_from(8 + data.len()).unwrap_or(u32::MAX);
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&id.to_le_bytes());
            hasher.update(data);
            rec.extend_from_slice(&payload_len.to_le_bytes());
            rec.extend_from_slice(&hasher.finalize().to_le_bytes());
            rec.extend_from_slice(&id.to_le_bytes());
            rec.extend_from_slice(data);
            let path = self.head_path();
            let head = self.head.as_mut().ok_or_else(|| SpoolError::Io {
                path: path.clone(),
                source: io::Error::other("no open segment"),
            })?;
            head.write_all(&rec).map_err(io_err(&path))?;
            if let Some(seg) = self.segments.back_mut() {
                seg.bytes += total;
                seg.last_id = Some(id);
                seg.unacked += 1;
            }
            self.next_id += 1;
            ids.push(id);
        }
        if let Some(head) = &self.head {
            head.sync_data().map_err(io_err(&self.head_path()))?;
        }
        Ok(ids)
    }

    /// The next record to publish, in id order; it counts as in flight until acked or
    /// until [`Spool::rewind`].
    pub fn next_unsent(&mut self) -> Result<Option<Record>, SpoolError> {
        loop {
            let (name_id, off) = self.read;
            let Some(idx) = self.segments.iter().position(|s| s.name_id >= name_id) else {
                return Ok(None);
            };
            let seg = &self.segments[idx];
            if seg.name_id > name_id {
                self.read = (seg.name_id, 0);
                continue;
            }
            if off >= seg.bytes {
                match self.segments.get(idx + 1) {
                    Some(next) => {
                        self.read = (next.name_id, 0);
                        continue;
                    }
                    None => return Ok(None),
                }
            }
            let (id, data, total) = self.read_record(name_id, off)?;
            self.read = (name_id, off + total);
            if id < self.next_unacked {
                continue;
            }
            self.inflight.push_back((id, false));
            return Ok(Some(Record { id, data }));
        }
    }

    /// The broker acknowledged record `id`: the cursor moves over every acknowledged
    /// record at the front, and segments left fully acknowledged are deleted.
    pub fn ack(&mut self, id: u64) -> Result<(), SpoolError> {
        if let Some(e) = self.inflight.iter_mut().find(|e| e.0 == id) {
            e.1 = true;
        } else {
            return Ok(()); // stale (evicted, or from before a rewind)
        }
        let mut moved = false;
        while let Some(&(front, true)) = self.inflight.front() {
            self.inflight.pop_front();
            if let Some(seg) = self
                .segments
                .iter_mut()
                .find(|s| s.last_id.is_some_and(|l| l >= front))
            {
                seg.unacked = seg.unacked.saturating_sub(1);
            }
            self.next_unacked = self.next_unacked.max(front + 1);
            moved = true;
        }
        if moved {
            self.collect()?;
            self.write_cursor()?;
        }
        Ok(())
    }

    /// The connection dropped: forget what was in flight and hand everything
    /// unacknowledged out again, oldest first.
    pub fn rewind(&mut self) {
        self.inflight.clear();
        let cursor = self.next_unacked;
        let Some(seg) = self
            .segments
            .iter()
            .find(|s| s.last_id.is_some_and(|l| l >= cursor))
        else {
            self.read = (self.next_id, 0);
            return;
        };
        let name_id = seg.name_id;
        // Walk the headers to the first record at or after the cursor.
        let mut off = 0;
        while let Ok((id, total)) = self.read_header(name_id, off) {
            if id >= cursor {
                break;
            }
            off += total;
        }
        self.read = (name_id, off);
    }

    fn head_path(&self) -> PathBuf {
        self.dir
            .join(segment_name(self.segments.back().map_or(0, |s| s.name_id)))
    }

    fn start_segment(&mut self, id: u64) -> Result<(), SpoolError> {
        let path = self.dir.join(segment_name(id));
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        self.head = Some(f);
        self.segments.push_back(Segment {
            name_id: id,
            last_id: None,
            bytes: 0,
            unacked: 0,
        });
        self.collect()
    }

    /// Evicts the oldest segments until `extra` more bytes fit.
    fn make_room(&mut self, extra: u64) -> Result<(), SpoolError> {
        let mut evicted = false;
        while self.bytes() + extra > self.max_bytes {
            let Some(seg) = self.segments.pop_front() else {
                break;
            };
            if self.segments.is_empty() {
                self.head = None;
            }
            let path = self.dir.join(segment_name(seg.name_id));
            fs::remove_file(&path).map_err(io_err(&path))?;
            self.dropped += seg.unacked;
            tracing::warn!(
                records = seg.unacked,
                bytes = seg.bytes,
                "spool full: dropped the oldest segment"
            );
            if let Some(last) = seg.last_id {
                self.next_unacked = self.next_unacked.max(last + 1);
                self.inflight.retain(|e| e.0 > last);
            }
            if self.reader.as_ref().is_some_and(|r| r.0 == seg.name_id) {
                self.reader = None;
            }
            evicted = true;
        }
        if evicted {
            self.write_cursor()?;
        }
        Ok(())
    }

    /// Deletes sealed segments that are fully acknowledged.
    fn collect(&mut self) -> Result<(), SpoolError> {
        while self.segments.len() > 1 {
            let Some(front) = self.segments.front() else {
                break;
            };
            if front.unacked > 0 || front.last_id.is_some_and(|l| l >= self.next_unacked) {
                break;
            }
            let path = self.dir.join(segment_name(front.name_id));
            if self.reader.as_ref().is_some_and(|r| r.0 == front.name_id) {
                self.reader = None;
            }
            self.segments.pop_front();
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        Ok(())
    }

    fn reader_at(&mut self, name_id: u64, off: u64) -> Result<&mut File, SpoolError> {
        let path = self.dir.join(segment_name(name_id));
        if self.reader.as_ref().is_none_or(|r| r.0 != name_id) {
            let f = File::open(&path).map_err(io_err(&path))?;
            self.reader = Some((name_id, f));
        }
        let Some((_, f)) = self.reader.as_mut() else {
            return Err(SpoolError::Io {
                path,
                source: io::Error::other("no reader"),
            });
        };
        f.seek(SeekFrom::Start(off)).map_err(io_err(&path))?;
        Ok(f)
    }

    fn read_header(&mut self, name_id: u64, off: u64) -> Result<(u64, u64), SpoolError> {
        let path = self.dir.join(segment_name(name_id));
        let f = self.reader_at(name_id, off)?;
        let mut h = [0u8; 16];
        f.read_exact(&mut h).map_err(io_err(&path))?;
        let (len, id) = split_header(&h);
        Ok((id, HEADER + len))
    }

    fn read_record(&mut self, name_id: u64, off: u64) -> Result<(u64, Vec<u8>, u64), SpoolError> {
        let path = self.dir.join(segment_name(name_id));
        let f = self.reader_at(name_id, off)?;
        let mut h = [0u8; 16];
        f.read_exact(&mut h).map_err(io_err(&path))?;
        let (len, id) = split_header(&h);
        let mut data = vec![0u8; us(len.saturating_sub(8)).min(MAX_PAYLOAD)];
        f.read_exact(&mut data).map_err(io_err(&path))?;
        Ok((id, data, HEADER + len))
    }

    fn write_cursor(&self) -> Result<(), SpoolError> {
        let mut buf = Vec::with_capacity(24);
        buf.extend_from_slice(CURSOR_MAGIC);
        buf.extend_from_slice(&self.next_unacked.to_le_bytes());
        buf.extend_from_slice(&self.dropped.to_le_bytes());
        let crc = crc32fast::hash(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        // No fsync: a stale cursor only replays acknowledged records (see the module doc).
        let path = self.dir.join(CURSOR_FILE);
        let tmp = self.dir.join("acked.tmp");
        fs::write(&tmp, &buf).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }
}

/// A file offset or length as `usize` (segments are far below 4 GiB; saturates).
fn us(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// (payload length, record id) from the first 16 bytes of a record.
fn split_header(h: &[u8; 16]) -> (u64, u64) {
    let [l0, l1, l2, l3, _, _, _, _, i0, i1, i2, i3, i4, i5, i6, i7] = *h;
    (
        u64::from(u32::from_le_bytes([l0, l1, l2, l3])),
        u64::from_le_bytes([i0, i1, i2, i3, i4, i5, i6, i7]),
    )
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests;
