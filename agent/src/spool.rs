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
    move |source| SpoolError::Io { path: path.to_path_buf(), source }
}

fn segment_name(id: u64) -> String {
    format!("spool-{id:020}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("spool-")?.strip_suffix(".seg")?.parse().ok()
}

/// A record found by a scan: id, offset, total length (header included).
type Found = (u64, u64, u64);

struct Scan {
    records: Vec<Found>,
    /// End of the last good record.
    good_end: u64,
    /// Bytes skipped between good records (damage in the middle).
    skipped: u64,
    /// Bytes after the last good record (torn tail or trailing damage).
    tail: u64,
}

/// Decodes the header at `pos`, returning (id, total length) when the record checks out.
fn record_at(buf: &[u8], pos: usize, min_id: Option<u64>) -> Option<(u64, usize)> {
    let head = buf.get(pos..pos.checked_add(8)?)?;
    let len = u32::from_le_bytes(head.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head.get(4..8)?.try_into().ok()?);
    if !(8..=MAX_PAYLOAD + 8).contains(&len) {
        return None;
    }
    let payload = buf.get(pos + 8..pos + 8 + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let id = u64::from_le_bytes(payload.get(0..8)?.try_into().ok()?);
    if min_id.is_some_and(|m| id < m) {
        return None;
    }
    Some((id, 8 + len))
}

fn scan(buf: &[u8], mut min_id: Option<u64>) -> Scan {
    let mut records = Vec::new();
    let (mut pos, mut good_end, mut skipped) = (0usize, 0usize, 0usize);
    while pos < buf.len() {
        if let Some((id, total)) = record_at(buf, pos, min_id) {
            skipped += pos - good_end;
            records.push((id, pos as u64, total as u64));
            min_id = Some(id.saturating_add(1));
            pos += total;
            good_end = pos;
        } else {
            // Resynchronise: the next record may start at any later byte.
            pos += 1;
        }
    }
    Scan { records, good_end: good_end as u64, skipped: skipped as u64, tail: (buf.len() - good_end) as u64 }
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, repairing what a crash left behind.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Self, OpenReport), SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut report = OpenReport::default();
        let (mut next_unacked, dropped) = match read_cursor(dir)? {
            CursorRead::Missing => (0, 0),
            CursorRead::Ok(n, d) => (n, d),
            CursorRead::Corrupt(moved) => {
                report.cursor_lost = true;
                report.corrupt_files.push(moved);
                (0, 0)
            }
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = parse_segment_name(&name) {
                names.push(id);
            } else if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        names.sort_unstable();

        let mut segments = VecDeque::new();
        let mut min_id: Option<u64> = None;
        let mut first_unacked_pos: Option<(u64, u64)> = None;
        for name_id in names {
            let path = dir.join(segment_name(name_id));
            let buf = fs::read(&path).map_err(io_err(&path))?;
            let s = scan(&buf, min_id);
            if s.skipped > 0 || (s.tail > 0 && s.records.is_empty() && !buf.is_empty()) {
                // Damage in the middle (or nothing readable at all): keep the evidence.
                let moved = move_aside(&path)?;
                report.corrupt_files.push(moved);
                report.skipped_bytes += s.skipped + s.tail;
                let mut clean = Vec::with_capacity(s.good_end as usize);
                for &(_, off, len) in &s.records {
                    clean.extend_from_slice(buf.get(off as usize..(off + len) as usize).unwrap_or(&[]));
                }
                write_atomic(dir, &path, &clean)?;
            } else if s.tail > 0 {
                report.torn_tail_bytes += s.tail;
                let f = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                f.set_len(s.good_end).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
            }
            // Offsets of the rewritten file: records are now back to back.
            let mut off = 0;
            let mut unacked = 0;
            for &(id, _, len) in &s.records {
                if id >= next_unacked {
                    unacked += 1;
                    if first_unacked_pos.is_none() {
                        first_unacked_pos = Some((name_id, off));
                    }
                }
                off += len;
            }
            let last_id = s.records.last().map(|r| r.0);
            if let Some(l) = last_id {
                min_id = Some(l.saturating_add(1));
            }
            if unacked == 0 {
                // Empty or fully acknowledged.
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            report.unacked += unacked;
            segments.push_back(Segment { name_id, last_id, bytes: off, unacked });
        }
        let next_id = min_id.unwrap_or(0).max(next_unacked);
        if segments.is_empty() {
            next_unacked = next_id;
        }
        let segment_bytes = (max_bytes / 16).clamp(MIN_MAX_BYTES / 2, 1 << 20);
        let read = first_unacked_pos.unwrap_or((next_id, 0));
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(MIN_MAX_BYTES),
            segment_bytes,
            segments,
            head: None,
            next_id,
            next_unacked,
            dropped,
            inflight: VecDeque::new(),
            read,
            reader: None,
        };
        if let Some(last) = spool.segments.back() {
            if last.bytes < spool.segment_bytes {
                let path = spool.dir.join(segment_name(last.name_id));
                spool.head = Some(OpenOptions::new().append(true).open(&path).map_err(io_err(&path))?);
            }
        }
        spool.make_room(0)?;
        spool.write_cursor()?;
        Ok((spool, report))
    }

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
            if self.head.is_none() || self.segments.back().is_none_or(|s| s.bytes + total > self.segment_bytes && s.bytes > 0) {
                self.start_segment(id)?;
            }
            let mut rec = Vec::with_capacity(total as usize);
            let payload_len = (8 + data.len()) as u32;
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
            if let Some(seg) = self.segments.iter_mut().find(|s| s.last_id.is_some_and(|l| l >= front)) {
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
        let Some(seg) = self.segments.iter().find(|s| s.last_id.is_some_and(|l| l >= cursor)) else {
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
        self.dir.join(segment_name(self.segments.back().map_or(0, |s| s.name_id)))
    }

    fn start_segment(&mut self, id: u64) -> Result<(), SpoolError> {
        let path = self.dir.join(segment_name(id));
        let f = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        self.head = Some(f);
        self.segments.push_back(Segment { name_id: id, last_id: None, bytes: 0, unacked: 0 });
        self.collect()
    }

    /// Evicts the oldest segments until `extra` more bytes fit.
    fn make_room(&mut self, extra: u64) -> Result<(), SpoolError> {
        let mut evicted = false;
        while self.bytes() + extra > self.max_bytes {
            let Some(seg) = self.segments.pop_front() else { break };
            if self.segments.is_empty() {
                self.head = None;
            }
            let path = self.dir.join(segment_name(seg.name_id));
            fs::remove_file(&path).map_err(io_err(&path))?;
            self.dropped += seg.unacked;
            tracing::warn!(records = seg.unacked, bytes = seg.bytes, "spool full: dropped the oldest segment");
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
            let Some(front) = self.segments.front() else { break };
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
            return Err(SpoolError::Io { path, source: io::Error::other("no reader") });
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
        let mut data = vec![0u8; (len.saturating_sub(8) as usize).min(MAX_PAYLOAD)];
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

/// (payload length, record id) from the first 16 bytes of a record.
fn split_header(h: &[u8; 16]) -> (u64, u64) {
    let [l0, l1, l2, l3, _, _, _, _, i0, i1, i2, i3, i4, i5, i6, i7] = *h;
    (u64::from(u32::from_le_bytes([l0, l1, l2, l3])), u64::from_le_bytes([i0, i1, i2, i3, i4, i5, i6, i7]))
}

enum CursorRead {
    Missing,
    Ok(u64, u64),
    Corrupt(PathBuf),
}

fn read_cursor(dir: &Path) -> Result<CursorRead, SpoolError> {
    let path = dir.join(CURSOR_FILE);
    let buf = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(CursorRead::Missing),
        Err(e) => return Err(SpoolError::Io { path, source: e }),
    };
    let ok = buf.len() == 24
        && buf.get(0..4) == Some(CURSOR_MAGIC.as_slice())
        && buf.get(20..24).and_then(|c| c.try_into().ok()).map(u32::from_le_bytes)
            == buf.get(0..20).map(crc32fast::hash);
    if !ok {
        return Ok(CursorRead::Corrupt(move_aside(&path)?));
    }
    let word = |r: core::ops::Range<usize>| buf.get(r).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0);
    Ok(CursorRead::Ok(word(4..12), word(12..20)))
}

/// Renames `path` to `path.corrupt` (or `.corrupt.N` if taken) and returns the new name.
fn move_aside(path: &Path) -> Result<PathBuf, SpoolError> {
    let base = path.as_os_str().to_string_lossy().into_owned();
    let mut target = PathBuf::from(format!("{base}.corrupt"));
    let mut n = 1;
    while target.exists() {
        target = PathBuf::from(format!("{base}.corrupt.{n}"));
        n += 1;
    }
    tracing::error!(file = %path.display(), moved_to = %target.display(), "damaged spool file moved aside");
    fs::rename(path, &target).map_err(io_err(path))?;
    Ok(target)
}

fn write_atomic(dir: &Path, path: &Path, data: &[u8]) -> Result<(), SpoolError> {
    let tmp = path.with_extension("seg.tmp");
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(data).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

#[cfg(test)]
#[path = "spool_tests.rs"]
mod tests;
