//! Opening the spool: scanning segments, cutting torn tails, salvaging damaged
//! segments, reading the cursor (the crash cases of the module doc).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{
    io_err, parse_segment_name, segment_name, sync_dir, us, OpenReport, Segment, Spool, SpoolError,
    CURSOR_FILE, CURSOR_MAGIC, MAX_PAYLOAD, MIN_MAX_BYTES,
};

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
    Scan {
        records,
        good_end: good_end as u64,
        skipped: skipped as u64,
        tail: (buf.len() - good_end) as u64,
    }
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
                let mut clean = Vec::with_capacity(us(s.good_end));
                for &(_, off, len) in &s.records {
                    clean.extend_from_slice(buf.get(us(off)..us(off + len)).unwrap_or(&[]));
                }
                write_atomic(dir, &path, &clean)?;
            } else if s.tail > 0 {
                report.torn_tail_bytes += s.tail;
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
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
            segments.push_back(Segment {
                name_id,
                last_id,
                bytes: off,
                unacked,
            });
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
                spool.head = Some(
                    OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .map_err(io_err(&path))?,
                );
            }
        }
        spool.make_room(0)?;
        spool.write_cursor()?;
        Ok((spool, report))
    }
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
        && buf
            .get(20..24)
            .and_then(|c| c.try_into().ok())
            .map(u32::from_le_bytes)
            == buf.get(0..20).map(crc32fast::hash);
    if !ok {
        return Ok(CursorRead::Corrupt(move_aside(&path)?));
    }
    let word = |r: core::ops::Range<usize>| {
        buf.get(r)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0)
    };
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
