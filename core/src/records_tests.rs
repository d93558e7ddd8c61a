//! Records round-trip, restore quarantines what it cannot read, intents decode or refuse.

use proptest::prelude::*;
use reelfarm_common::sequence::{Aspect, Pass, Resolution, Shot, Transition};
use reelfarm_models::catalog::reelfarm_tiny;

use super::*;
use crate::farm::{Action, FailureClass};
use crate::snapshot;

fn sequence(shots: usize) -> Sequence {
    Sequence {
        title: Some("records".into()),
        model: "reelfarm-tiny".into(),
        resolution: Resolution::P480,
        aspect: Aspect::Wide16x9,
        fps: 8,
        seed: 7,
        pass: Pass::Draft,
        style: None,
        negative: None,
        color_match: reelfarm_common::sequence::ColorMatch::DEFAULT,
        continuity_blend_seconds: 0.25,
        grade_references: Default::default(),
        owner: None,
        priority: 0,
        seam_qa: None,
        seam_qa_tries: reelfarm_common::sequence::SEAM_QA_TRIES,
        steps: Some(2),
        shots: (0..shots)
            .map(|index| Shot {
                prompt: format!("shot {index}"),
                duration_seconds: if index == 0 { 25.0 } else { 2.0 },
                transition: if index % 2 == 1 {
                    Transition::Continue
                } else {
                    Transition::Cut
                },
                crossfade_seconds: None,
                seed: None,
                negative: None,
                reference: None,
                name: None,
                scene: None,
                variants: 1,
                take: 0,
                model: None,
            })
            .collect(),
    }
}

fn all_records(farm: &Farm) -> (BTreeMap<String, Vec<u8>>, BTreeMap<String, Vec<u8>>) {
    let mut records = BTreeMap::new();
    for id in farm.sequences.keys() {
        records.extend(sequence_records(farm, id));
    }
    let workers = farm
        .workers
        .values()
        .map(|worker| (worker.id.clone(), worker_doc_bytes(worker)))
        .collect();
    (records, workers)
}

fn statuses(farm: &Farm) -> Vec<reelfarm_common::pb::SequenceStatus> {
    farm.sequences()
        .map(|record| {
            let mut status = snapshot::sequence_status(record);
            // Progress is not durable by design.
            for segment in &mut status.segments {
                segment.step = 0;
            }
            if let Some(stitch) = &mut status.stitch {
                stitch.done = 0;
                stitch.total = 0;
            }
            status
        })
        .collect()
}

fn device(gib: u64) -> pb::Device {
    pb::Device {
        index: 0,
        kind: "cpu".into(),
        name: "cpu".into(),
        memory_total_bytes: gib << 30,
        memory_free_bytes: 0,
        ..Default::default()
    }
}

proptest! {
    /// Whatever happened, a new leader restoring the records sees the same farm: the same
    /// statuses, the same outstanding assignments, the same memory reservations.
    #[test]
    fn a_restored_farm_equals_the_one_that_wrote_the_records(
        shots in 1usize..5,
        workers in 1usize..3,
        events in proptest::collection::vec(0u8..4, 0..12),
        variants in 1u32..4,
        cached in proptest::collection::vec(any::<bool>(), 0..8),
        revised in any::<bool>(),
    ) {
        let mut farm = Farm::new(3);
        for worker in 0..workers {
            farm.register_worker(format!("w{worker}"), format!("w{worker}"), vec![device(16)], vec!["reelfarm-tiny".into()], &[], 0.0);
        }
        let mut sequence = sequence(shots);
        sequence.shots[0].variants = variants;
        let plan = planner::plan(&sequence, &reelfarm_tiny());
        // Segments reused from the cache (a continuation only after a reused predecessor),
        // and maybe a version of an earlier sequence.
        let keys: Vec<String> = (0..plan.segments.len()).map(|i| format!("key{i}")).collect();
        let hits = (0..plan.segments.len())
            .map(|i| {
                cached.get(i).copied().unwrap_or(false).then(|| crate::cache::tests::entry(
                    &keys[i],
                    &format!("sequences/seq-old/segments/{}.a1", plan.segments[i].id),
                ))
            })
            .collect();
        let hits = crate::cache::usable(&plan, hits);
        let cached = crate::farm::Cached { keys, hits };
        farm.submit_cached("seq-a".into(), Some("key".into()), sequence, plan, cached, 1.0);
        if revised {
            farm.set_revision("seq-a", crate::farm::Revision {
                of: "seq-old".into(),
                lineage: "seq-first".into(),
                version: 3,
                change: "shot 0: prompt \"x\"".into(),
            });
        }
        let mut outstanding: Vec<pb::AssignmentRef> = Vec::new();
        for event in events {
            for action in farm.dispatch() {
                if let Action::Assign { assignment, .. } = action {
                    outstanding.push(assignment.assignment.unwrap());
                }
            }
            let Some(reference) = outstanding.first().cloned() else { continue };
            match event {
                0 => { let _ = farm.complete(&reference, Vec::new(), Vec::new(), 5, 2.0); outstanding.remove(0); }
                1 => { let _ = farm.fail(&reference, FailureClass::OutOfMemory, "oom", 2.0); outstanding.remove(0); }
                2 => { let _ = farm.cancel("seq-a", 3.0); }
                _ => {}
            }
        }
        let (records, worker_records) = all_records(&farm);
        let restored = restore(3, &Catalog::builtin(), &records, &worker_records).farm;
        prop_assert_eq!(statuses(&restored), statuses(&farm));
        let mut before: Vec<_> = farm.assignments.iter().map(|(id, a)| (id.clone(), a.worker.clone(), a.device_slot, a.attempt)).collect();
        let mut after: Vec<_> = restored.assignments.iter().map(|(id, a)| (id.clone(), a.worker.clone(), a.device_slot, a.attempt)).collect();
        before.sort();
        after.sort();
        prop_assert_eq!(before, after);
        for (id, worker) in &farm.workers {
            let other = &restored.workers[id];
            prop_assert_eq!(worker.devices[0].reserved_bytes, other.devices[0].reserved_bytes);
            let sorted = |running: &[String]| { let mut r = running.to_vec(); r.sort(); r };
            prop_assert_eq!(sorted(&worker.devices[0].running), sorted(&other.devices[0].running));
            prop_assert!(!other.connected, "restored workers wait to reconnect");
        }
        prop_assert_eq!(restored.sequence_for_key("key"), Some(&"seq-a".to_string()));
        // The restored farm writes nothing new: its records are what was stored.
        let (again, _) = all_records(&restored);
        prop_assert_eq!(again, records);
    }
}

#[test]
fn one_unreadable_record_quarantines_its_sequence_only() {
    let mut farm = Farm::new(3);
    for id in ["seq-good", "seq-bad", "seq-gone"] {
        let sequence = sequence(3);
        let plan = planner::plan(&sequence, &reelfarm_tiny());
        farm.submit(id.into(), Some(format!("key-{id}")), sequence, plan, 1.0);
    }
    farm.register_worker(
        "w0".into(),
        "w0".into(),
        vec![device(16)],
        vec!["reelfarm-tiny".into()],
        &[],
        0.0,
    );
    farm.dispatch();
    let (mut records, mut workers) = all_records(&farm);
    records.insert(
        "sequences/seq-bad/tasks/s000-00".into(),
        b"{\"state\": nul".to_vec(),
    );
    records.remove("sequences/seq-gone/spec");
    workers.insert("w-poison".into(), b"\xff".to_vec());
    let restored = restore(3, &Catalog::builtin(), &records, &workers);
    assert_eq!(restored.unreadable_workers.len(), 1);
    assert!(restored.unreadable_workers[0].contains("workers/w-poison"));
    let farm = restored.farm;
    assert_eq!(farm.sequence_count(), 1, "the good sequence is restored");
    assert!(farm.sequence("seq-good").is_ok());
    let bad = snapshot::status(&farm, "seq-bad").unwrap();
    assert_eq!(bad.state, pb::SequenceState::Failed as i32);
    assert!(
        bad.error.contains("sequences/seq-bad/tasks/s000-00"),
        "{}",
        bad.error
    );
    assert_eq!(bad.submitted_unix_s, 1.0);
    let gone = snapshot::status(&farm, "seq-gone").unwrap();
    assert!(gone.error.contains("sequences/seq-gone/spec is missing"));
    let listed: Vec<_> = snapshot::statuses_page(&farm, "", usize::MAX - 1, None)
        .0
        .into_iter()
        .map(|status| status.sequence_id)
        .collect();
    assert_eq!(listed, ["seq-bad", "seq-gone", "seq-good"]);
    // Pages in id order, quarantined ones included.
    let ids = |page: &[pb::SequenceStatus]| -> Vec<String> {
        page.iter()
            .map(|status| status.sequence_id.clone())
            .collect()
    };
    let (first, more) = snapshot::statuses_page(&farm, "", 2, None);
    assert_eq!(
        (ids(&first), more),
        (vec!["seq-bad".into(), "seq-gone".into()], true)
    );
    let (second, more) = snapshot::statuses_page(&farm, "seq-gone", 2, None);
    assert_eq!((ids(&second), more), (vec!["seq-good".into()], false));
    let (exact, more) = snapshot::statuses_page(&farm, "", 3, None);
    assert_eq!((exact.len(), more), (3, false));
    // Nothing of a quarantined sequence holds a device, and cancelling it is a no-op.
    let mut farm = farm;
    assert!(farm.cancel("seq-bad", 2.0).unwrap().is_empty());
    assert!(
        farm.assignments
            .values()
            .all(|a| a.sequence_id == "seq-good")
    );
}

#[test]
fn reported_figures_that_are_not_finite_never_reach_a_record() {
    let mut farm = Farm::new(3);
    let sequence = sequence(1);
    let plan = planner::plan(&sequence, &reelfarm_tiny());
    farm.submit("seq-n".into(), None, sequence, plan, 1.0);
    let mut nan_device = device(16);
    nan_device.speed = f64::NAN;
    farm.register_worker(
        "w".into(),
        "w".into(),
        vec![nan_device],
        vec!["reelfarm-tiny".into()],
        &[],
        0.0,
    );
    let reference = farm
        .dispatch()
        .into_iter()
        .find_map(|action| match action {
            Action::Assign { assignment, .. } => assignment.assignment,
            _ => None,
        })
        .unwrap();
    let phase = |start: f64, end: f64| pb::TimedPhase {
        kind: "denoise".into(),
        start_unix_s: start,
        end_unix_s: end,
        task_id: "s000-00".into(),
    };
    farm.complete(
        &reference,
        Vec::new(),
        vec![
            phase(f64::NAN, 2.0),
            phase(1.0, f64::INFINITY),
            phase(1.0, 2.0),
        ],
        5,
        2.0,
    )
    .unwrap();
    let (records, workers) = all_records(&farm);
    let restored = restore(3, &Catalog::builtin(), &records, &workers);
    assert!(restored.unreadable_workers.is_empty());
    assert_eq!(restored.farm.quarantined().count(), 0);
    assert_eq!(restored.farm.sequence("seq-n").unwrap().phases.len(), 1);
}

proptest! {
    #[test]
    fn an_intent_reads_back_as_the_writes_it_recorded(
        writes in proptest::collection::vec(
            ("[a-z/0-9-]{1,40}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300))),
            0..50,
        ),
    ) {
        let writes: Vec<Write> = writes
            .into_iter()
            .map(|(key, value)| Write { key, value, expected_revision: 0 })
            .collect();
        let bytes = encode_intent(&writes);
        prop_assert_eq!(decode_intent(&bytes).unwrap(), writes);
        // Any truncation is an error, never a panic or a shorter list.
        for cut in 0..bytes.len() {
            prop_assert!(decode_intent(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_as_an_intent(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut framed = b"RFI1".to_vec();
        framed.extend(bytes);
        let _ = decode_intent(&framed);
    }
}

#[test]
fn a_deleted_sequence_s_records_are_deleted_at_the_revision_last_written() {
    let mut farm = Farm::new(3);
    let sequence = sequence(3);
    let plan = planner::plan(&sequence, &reelfarm_tiny());
    farm.submit("seq-x".into(), None, sequence, plan, 1.0);
    farm.cancel("seq-x", 2.0).unwrap();
    let mut durable = Durable::default();
    let ids = vec!["seq-x".to_string()];
    let written = durable.writes(&farm, &ids);
    let keys: Vec<String> = written.iter().map(|write| write.key.clone()).collect();
    let revisions = vec![9; written.len()];
    durable.committed(written, &revisions);
    let actions = farm.delete_sequence("seq-x").unwrap();
    assert!(
        matches!(&actions[..], [Action::DeleteObjects { keys }] if keys.iter().any(|key| key.ends_with("final.mp4")))
    );
    let deletes = durable.settle(&mut farm).writes;
    let mut deleted: Vec<String> = deletes.iter().map(|write| write.key.clone()).collect();
    deleted.sort();
    let mut expected = keys;
    expected.sort();
    assert_eq!(deleted, expected);
    assert!(
        deletes
            .iter()
            .all(|write| write.value.is_none() && write.expected_revision == 9)
    );
    assert!(farm.sequence("seq-x").is_err());
}

#[test]
fn reference_images_stay_out_of_the_state_store() {
    let mut sequence = sequence(1);
    sequence.shots[0].reference = Some(Reference {
        name: "hero.png".into(),
        png: vec![1; 4096],
    });
    let plan = planner::plan(&sequence, &reelfarm_tiny());
    let mut farm = Farm::new(3);
    farm.submit("seq-r".into(), None, sequence, plan, 1.0);
    let (records, workers) = all_records(&farm);
    let spec = &records["sequences/seq-r/spec"];
    assert!(
        spec.len() < 1024,
        "the PNG must not be stored: {} bytes",
        spec.len()
    );
    let restored = restore(3, &Catalog::builtin(), &records, &workers).farm;
    let shot = &restored.sequences["seq-r"].sequence.shots[0];
    assert_eq!(
        shot.reference.as_ref().map(|r| r.name.as_str()),
        Some("hero.png")
    );
    assert!(restored.sequences["seq-r"].plan.segments[0].uses_reference);
}

#[test]
fn durable_writes_only_what_changed_at_the_revision_it_read() {
    let mut farm = Farm::new(3);
    let sequence = sequence(2);
    let plan = planner::plan(&sequence, &reelfarm_tiny());
    farm.submit("seq-d".into(), None, sequence, plan, 1.0);
    let mut durable = Durable::default();
    let ids = vec!["seq-d".to_string()];
    let first = durable.writes(&farm, &ids);
    assert!(first.iter().all(|write| write.expected_revision == 0));
    let revisions = vec![7; first.len()];
    durable.committed(first, &revisions);
    assert!(durable.writes(&farm, &ids).is_empty(), "nothing changed");
    farm.register_worker(
        "w".into(),
        "w".into(),
        vec![device(16)],
        vec!["reelfarm-tiny".into()],
        &[],
        0.0,
    );
    farm.dispatch();
    let second = durable.writes(&farm, &ids);
    assert!(!second.is_empty());
    assert!(second.iter().all(|write| write.expected_revision == 7));
    assert!(
        second
            .iter()
            .all(|write| write.key.contains("/status") || write.key.contains("/tasks/"))
    );
}

#[test]
fn tokens_are_stored_as_hashes_restored_and_deleted_when_revoked() {
    use crate::auth::{Role, TokenRecord, sha256_hex, token_text};
    let mut farm = Farm::new(3);
    farm.create_token(TokenRecord {
        id: "7e57".into(),
        name: "ci".into(),
        tenant: "studio-a".into(),
        role: Role::Submitter,
        secret_sha256: sha256_hex("s3cret"),
        created_unix_s: 1.0,
    })
    .unwrap();
    let mut durable = Durable::default();
    let written = durable.settle(&mut farm).writes;
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].key, "tokens/7e57");
    let stored = String::from_utf8(written[0].value.clone().unwrap()).unwrap();
    assert!(!stored.contains("s3cret") && stored.contains(&sha256_hex("s3cret")));
    let records: BTreeMap<String, Vec<u8>> = written
        .iter()
        .map(|write| (write.key.clone(), write.value.clone().unwrap()))
        .collect();
    durable.committed(written, &[4]);
    let restored = restore(3, &Catalog::builtin(), &records, &BTreeMap::new());
    assert!(restored.unreadable_tokens.is_empty());
    let principal = restored
        .farm
        .authenticate(&token_text("7e57", "s3cret"))
        .unwrap();
    assert_eq!(principal.tenant, "studio-a");
    // Nothing changed, nothing written; a revoked token's record is deleted at its revision.
    assert!(durable.settle(&mut farm).writes.is_empty());
    farm.revoke_token("7e57").unwrap();
    let deletes = durable.settle(&mut farm).writes;
    assert_eq!(deletes.len(), 1);
    assert_eq!(
        (
            deletes[0].key.as_str(),
            deletes[0].value.is_none(),
            deletes[0].expected_revision
        ),
        ("tokens/7e57", true, 4)
    );
    // An unreadable token record is reported, not fatal.
    let broken = BTreeMap::from([("tokens/bad".to_string(), b"{".to_vec())]);
    let restored = restore(3, &Catalog::builtin(), &broken, &BTreeMap::new());
    assert_eq!(restored.unreadable_tokens.len(), 1);
}
