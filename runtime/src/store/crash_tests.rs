//! The spool's crash safety, on the simulated filesystem: sequences of writes,
//! deliveries and restarts are cut off by a power cut at every point, the real recovery
//! runs on what survives, and the guarantees are checked — then each fsync is removed
//! in turn to show that each one is needed.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use proptest::prelude::*;

use super::{
    Budget, ImageEncoding, NewEntry, SharedSpool, Spool, SpoolError,
    fs::SyncSite,
    sim::SimFs,
    upload::{Delivery, DeliveryError, Destination, Stored, deliver_one},
};
use crate::capture::synthetic::Rng;

const DIR: &str = "/spool";
const PREFIX: &str = "fleet";

/// A bucket that honours `If-None-Match: *` and counts how often each key was created.
#[derive(Default)]
struct Bucket {
    objects: HashMap<String, Vec<u8>>,
    created: HashMap<String, u32>,
}

struct BucketDestination(Arc<Mutex<Bucket>>);

impl Destination for BucketDestination {
    fn put(&mut self, key: &str, bytes: &[u8], _: &str) -> Result<Stored, DeliveryError> {
        let mut b = self.0.lock().expect("bucket");
        match b.objects.get(key) {
            Some(existing) if existing == bytes => Ok(Stored::Existing),
            Some(_) => Err(DeliveryError::Conflict(key.into())),
            None => {
                b.objects.insert(key.into(), bytes.to_vec());
                *b.created.entry(key.into()).or_default() += 1;
                Ok(Stored::New)
            }
        }
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Write(u8),
    Deliver,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u8>().prop_map(Op::Write),
        2 => Just(Op::Deliver),
        1 => Just(Op::Restart),
    ]
}

fn open(fs: &Arc<SimFs>) -> Result<SharedSpool, SpoolError> {
    let budget = Budget {
        max_bytes: u64::MAX,
        min_free_bytes: 0,
    };
    let (spool, _) = Spool::open(fs.clone(), Path::new(DIR), budget, Some("dev"))?;
    Ok(Arc::new(Mutex::new(spool)))
}

/// Write one entry whose image is unique to it; the id and image on success.
fn write(spool: &SharedSpool, value: u8, n: u32) -> Option<(String, Vec<u8>)> {
    let image = format!("image {n} of value {value}").repeat(3).into_bytes();
    let entry = NewEntry {
        value: f32::from(value) / 255.0,
        camera: "cam0",
        captured_unix_ms: 1_795_298_707_123 + u64::from(n),
    };
    let written = spool
        .lock()
        .expect("spool")
        .write(entry, &image, ImageEncoding::Encoded, |id, record| {
            serde_json::to_vec(&serde_json::json!({
                "id": id,
                "camera": "cam0",
                "value": f32::from(value) / 255.0,
                "captured_unix_ms": 1_795_298_707_123 + u64::from(n),
                "image": record,
            }))
        })
        .ok()?;
    Some((written.id, image))
}

/// Run `ops` with a power cut after `cut` filesystem calls, recover, check; then write
/// and deliver everything, and check again. `Err` names the guarantee that broke.
fn check(ops: &[Op], cut: u64, seed: u64, skipped: &[SyncSite]) -> Result<(), String> {
    let fs = Arc::new(SimFs::new());
    let bucket = Arc::new(Mutex::new(Bucket::default()));
    let mut destination = BucketDestination(bucket.clone());
    // Every write that returned: its id and image.
    let mut committed: Vec<(String, Vec<u8>)> = Vec::new();
    let mut n = 0;
    let mut spool = Some(open(&fs).map_err(|e| format!("first open: {e}"))?);
    // Fsyncs go missing from here on: the spool's first open made its boot counter
    // durable, as a spool in service has (a spool without one starts at random).
    for site in skipped {
        fs.skip(*site);
    }
    fs.cut_after(cut);
    for op in ops {
        let Some(s) = &spool else { break };
        match op {
            Op::Write(value) => {
                n += 1;
                committed.extend(write(s, *value, n));
            }
            Op::Deliver => {
                let _ = deliver_one(s, &mut destination, PREFIX);
            }
            Op::Restart => {
                // One spool, one owner: the old one closes before the new one opens.
                drop(spool.take());
                spool = open(&fs).ok();
            }
        }
    }
    drop(spool);

    // The power comes back.
    let fs = Arc::new(fs.after_cut(&mut Rng::new(seed)));
    let spool = open(&fs).map_err(|e| format!("recovery failed: {e}"))?;
    // New writes after recovery must not reuse a committed entry's id.
    for value in [7u8, 200, 90] {
        n += 1;
        committed.extend(write(&spool, value, n));
    }
    let ids: Vec<String> = spool
        .lock()
        .expect("spool")
        .entries()
        .map(|e| e.id.clone())
        .collect();
    for id in &ids {
        let files = spool.lock().expect("spool").files(id);
        if let Err(e) = files.read() {
            return Err(format!("a visible entry is not intact after recovery: {e}"));
        }
    }
    // Keys end in `/<id>.<ext>` (the date part is the entry's).
    let delivered = |b: &Bucket, id: &str, image: &[u8]| {
        let jpg = b
            .objects
            .iter()
            .find(|(k, _)| k.ends_with(&format!("/{id}.jpg")))
            .map(|(_, v)| v.as_slice());
        let json = b
            .objects
            .keys()
            .any(|k| k.ends_with(&format!("/{id}.json")));
        jpg == Some(image) && json
    };
    for (id, image) in &committed {
        let local = ids.contains(id);
        let remote = delivered(&bucket.lock().expect("bucket"), id, image);
        if !local && !remote {
            return Err(format!(
                "committed entry {id} is neither in the spool nor the bucket"
            ));
        }
    }

    // Deliver everything.
    loop {
        match deliver_one(&spool, &mut destination, PREFIX) {
            Ok(Delivery::Empty) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("delivery failed after recovery: {e}")),
        }
    }
    let b = bucket.lock().expect("bucket");
    if let Some((key, times)) = b.created.iter().find(|(_, t)| **t > 1) {
        return Err(format!("{key} was created {times} times"));
    }
    for (id, image) in &committed {
        if !delivered(&b, id, image) {
            return Err(format!("committed entry {id} never arrived intact"));
        }
    }
    for key in b.objects.keys().filter(|k| k.ends_with(".json")) {
        let jpg = key.trim_end_matches(".json").to_string() + ".jpg";
        if !b.objects.contains_key(&jpg) {
            return Err(format!("{key} arrived without its image"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn a_power_cut_anywhere_loses_nothing_committed_and_duplicates_nothing(
        ops in prop::collection::vec(op(), 1..16),
        cut in 0u64..160,
        seed in any::<u64>(),
    ) {
        if let Err(e) = check(&ops, cut, seed, &[]) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// Each fsync is needed: without it, some cut breaks a guarantee.
#[test]
fn removing_any_one_fsync_breaks_a_guarantee() {
    let mut rng = Rng::new(0x5eed);
    for site in SyncSite::ALL {
        let mut found = None;
        for _ in 0..4000 {
            let ops: Vec<Op> = (0..1 + rng.below(14))
                .map(|_| match rng.below(7) {
                    0..=3 => Op::Write(rng.below(256) as u8),
                    4 | 5 => Op::Deliver,
                    _ => Op::Restart,
                })
                .collect();
            let cut = u64::from(rng.below(160));
            let seed = u64::from(rng.below(u32::MAX));
            if let Err(e) = check(&ops, cut, seed, &[site]) {
                found = Some(e);
                break;
            }
        }
        assert!(
            found.is_some(),
            "no cut broke anything without the {site:?} fsync"
        );
        eprintln!("without {site:?}: {}", found.unwrap_or_default());
    }
}

#[test]
fn a_transient_read_error_never_deletes_a_committed_entry() {
    let fs = Arc::new(SimFs::new());
    let spool = open(&fs).expect("open");
    let (id, _) = write(&spool, 100, 1).expect("write");
    drop(spool);
    // The index log is gone (as if torn), so recovery must read the sidecar — and that
    // read fails.
    let meta = PathBuf::from(DIR).join(".meta/index");
    super::fs::Fs::remove(fs.as_ref(), &meta).expect("remove index");
    let sidecar = PathBuf::from(DIR).join(format!("{id}.json"));
    fs.set_unreadable(&sidecar, true);
    let (spool, recovery) = Spool::open(
        fs.clone(),
        Path::new(DIR),
        Budget {
            max_bytes: u64::MAX,
            min_free_bytes: 0,
        },
        Some("dev"),
    )
    .expect("open");
    assert_eq!(recovery.unreadable, 1);
    assert_eq!(spool.len(), 0, "not offered for upload while unreadable");
    drop(spool);
    fs.set_unreadable(&sidecar, false);
    let spool = open(&fs).expect("open");
    assert_eq!(
        spool.lock().expect("spool").len(),
        1,
        "still there, and back"
    );
}
