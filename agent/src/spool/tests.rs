//! Unit tests of the spool: replay order, acks, crash leftovers, eviction.

use super::*;

fn batch(i: u32) -> Vec<u8> {
    format!(
        "{{\"v\":1,\"seq\":{i},\"pad\":\"{}\"}}",
        "x".repeat((i % 7) as usize)
    )
    .into_bytes()
}

fn drain(s: &mut Spool) -> Vec<Record> {
    let mut out = Vec::new();
    while let Some(r) = s.next_unsent().unwrap() {
        out.push(r);
    }
    out
}

fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn replays_in_order_and_acks_remove() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report, OpenReport::default());
    let data: Vec<_> = (0..5).map(batch).collect();
    let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
    let ids = s.append_batch(&refs).unwrap();
    assert_eq!(s.unacked(), 5);
    let got = drain(&mut s);
    assert_eq!(got.iter().map(|r| r.data.clone()).collect::<Vec<_>>(), data);
    assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    s.ack(ids[0]).unwrap();
    s.ack(ids[1]).unwrap();
    assert_eq!(s.unacked(), 3);
    // Connection lost: everything unacknowledged comes again, in order.
    s.rewind();
    let again = drain(&mut s);
    assert_eq!(
        again.iter().map(|r| r.data.clone()).collect::<Vec<_>>(),
        data[2..].to_vec()
    );
    for r in &again {
        s.ack(r.id).unwrap();
    }
    assert_eq!(s.unacked(), 0);
    assert!(drain(&mut s).is_empty());
}

#[test]
fn out_of_order_acks_move_the_cursor_only_over_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    let data: Vec<_> = (0..3).map(batch).collect();
    let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
    let ids = s.append_batch(&refs).unwrap();
    drain(&mut s);
    s.ack(ids[2]).unwrap();
    s.ack(ids[1]).unwrap();
    assert_eq!(s.unacked(), 3, "nothing acked until the oldest is");
    drop(s);
    let (mut s, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.unacked, 3);
    assert_eq!(drain(&mut s).len(), 3);
}

#[test]
fn reopen_after_crash_keeps_unacked_records() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<_> = (0..6).map(batch).collect();
    {
        let (mut s, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        for d in &data {
            s.append_batch(&[d]).unwrap();
        }
        let sent = drain(&mut s);
        s.ack(sent[0].id).unwrap();
        s.ack(sent[1].id).unwrap();
        // dropped without any shutdown: a crash
    }
    let (mut s, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.unacked, 4);
    assert!(report.corrupt_files.is_empty());
    let got: Vec<_> = drain(&mut s).into_iter().map(|r| r.data).collect();
    assert_eq!(got, data[2..].to_vec());
    // New appends continue after the old ids.
    let id = s.append_batch(&[b"{\"n\":1}"]).unwrap();
    assert!(id[0] > 5);
}

#[test]
fn torn_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<_> = (0..3).map(batch).collect();
    {
        let (mut s, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        for d in &data {
            s.append_batch(&[d]).unwrap();
        }
    }
    let seg = seg_files(dir.path()).pop().unwrap();
    let good_len = fs::metadata(&seg).unwrap().len();
    // Half of a fourth record: header and part of its payload.
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9]).unwrap();
    drop(f);
    let (mut s, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.torn_tail_bytes, 11);
    assert!(report.corrupt_files.is_empty());
    assert_eq!(fs::metadata(&seg).unwrap().len(), good_len);
    let got: Vec<_> = drain(&mut s).into_iter().map(|r| r.data).collect();
    assert_eq!(got, data);
    // Appending after the cut works and replays after the old ones.
    s.append_batch(&[b"{\"after\":1}"]).unwrap();
    assert_eq!(drain(&mut s).pop().unwrap().data, b"{\"after\":1}".to_vec());
}

#[test]
fn last_record_with_bad_crc_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<_> = (0..3).map(batch).collect();
    {
        let (mut s, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        for d in &data {
            s.append_batch(&[d]).unwrap();
        }
    }
    let seg = seg_files(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0xff;
    fs::write(&seg, &bytes).unwrap();
    let (mut s, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    let last_len = 16 + data[2].len() as u64;
    assert_eq!(report.torn_tail_bytes, last_len);
    let got: Vec<_> = drain(&mut s).into_iter().map(|r| r.data).collect();
    assert_eq!(got, data[..2].to_vec());
}

#[test]
fn corrupted_middle_is_moved_aside_and_the_rest_salvaged() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<_> = (0..3).map(batch).collect();
    {
        let (mut s, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        for d in &data {
            s.append_batch(&[d]).unwrap();
        }
    }
    let seg = seg_files(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let second = 16 + data[0].len();
    bytes[second + 20] ^= 0x55; // inside the second record's payload
    fs::write(&seg, &bytes).unwrap();
    let (mut s, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.corrupt_files.len(), 1);
    assert!(report.corrupt_files[0].exists());
    assert_eq!(report.skipped_bytes, 16 + data[1].len() as u64);
    assert_eq!(report.unacked, 2);
    let got: Vec<_> = drain(&mut s).into_iter().map(|r| r.data).collect();
    assert_eq!(got, vec![data[0].clone(), data[2].clone()]);
    // The salvaged spool opens clean next time.
    drop(s);
    let (_, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert!(report.corrupt_files.is_empty());
    assert_eq!(report.unacked, 2);
}

#[test]
fn garbage_cursor_replays_everything() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<_> = (0..4).map(batch).collect();
    {
        let (mut s, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        for d in &data {
            s.append_batch(&[d]).unwrap();
        }
        let sent = drain(&mut s);
        s.ack(sent[0].id).unwrap();
    }
    fs::write(dir.path().join("acked"), b"garbage").unwrap();
    let (mut s, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert!(report.cursor_lost);
    assert_eq!(drain(&mut s).len(), 4, "a lost cursor replays, never loses");
}

#[test]
fn full_spool_drops_oldest_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let max = 4096;
    let (mut s, _) = Spool::open(dir.path(), max).unwrap();
    let data: Vec<_> = (0..200).map(batch).collect();
    for d in &data {
        s.append_batch(&[d]).unwrap();
        assert!(s.bytes() <= max);
    }
    let kept = s.unacked();
    assert!(kept > 0 && kept < 200);
    assert_eq!(s.dropped(), 200 - kept);
    // What is left is the newest, contiguous, in order.
    let got: Vec<_> = drain(&mut s).into_iter().map(|r| r.data).collect();
    assert_eq!(got, data[(200 - us(kept))..].to_vec());
    // The count survives a restart.
    drop(s);
    let (s, _) = Spool::open(dir.path(), max).unwrap();
    assert_eq!(s.dropped(), 200 - kept);
    assert_eq!(s.unacked(), kept);
}

#[test]
fn eviction_of_in_flight_records_is_safe() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(dir.path(), 2048).unwrap();
    let first = s.append_batch(&[&batch(0)]).unwrap()[0];
    let r = s.next_unsent().unwrap().unwrap();
    assert_eq!(r.id, first);
    for i in 1..100 {
        s.append_batch(&[&batch(i)]).unwrap();
    }
    // The ack of an evicted record is ignored; the rest still replays in order.
    s.ack(first).unwrap();
    let got = drain(&mut s);
    assert!(!got.is_empty());
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(got.last().unwrap().data, batch(99));
}

#[test]
fn too_large_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(dir.path(), 2048).unwrap();
    assert!(matches!(
        s.append_batch(&[&vec![b'x'; 4096]]),
        Err(SpoolError::TooLarge(4096))
    ));
}
