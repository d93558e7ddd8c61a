//! A bound on every string and list a request may carry, checked before anything else reads
//! it: a hostile or broken peer cannot make the scheduler hold, log, echo or store an
//! unbounded field. Each refusal names the field and its bound (InvalidArgument); the
//! spec's own rules (prompt lengths in characters, known models) come after, in `spec`.

use crate::pb;
use crate::{Error, spec};

/// The largest gRPC message either side decodes or encodes (tonic's default is 4 MiB).
/// Reference images stream on their own (`UploadReference`), so no message needs more.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// The largest request the sequence API decodes, the same as a spec file may be: decoding
/// happens before any check (or authentication), and a message of empty shots costs ~174
/// bytes of heap per byte on the wire (measured by the spec fuzzer), so this caps one
/// request's heap near 700 MiB where 16 MiB would allow 2.8 GiB.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Reference images of one submission, in all.
pub const MAX_SEQUENCE_REFERENCE_BYTES: u64 = 256 << 20;

/// Ids: sequences, workers, idempotency keys, page tokens, assignments.
pub const MAX_ID_BYTES: usize = 256;
/// Names and labels: worker and device names, models, reference names, phase kinds.
pub const MAX_NAME_BYTES: usize = 256;
/// Object keys.
pub const MAX_KEY_BYTES: usize = 1024;
/// Free text of the spec (prompts, style, negatives, titles): the spec checks characters,
/// this bounds bytes before it does (four bytes per character at most).
pub const MAX_TEXT_BYTES: usize = 4 * spec::MAX_PROMPT_CHARS;
/// A failure report's message.
pub const MAX_MESSAGE_TEXT_BYTES: usize = 16 << 10;

/// Devices per worker.
pub const MAX_DEVICES: usize = 64;
/// Models one worker serves.
pub const MAX_MODELS: usize = 256;
/// Assignments a reconnecting worker says it still runs.
pub const MAX_RUNNING: usize = 1024;
/// Phases per completion.
pub const MAX_PHASES: usize = 64;
/// Objects per completion (a segment writes 3, a stitch 4) and corrupt keys per failure.
pub const MAX_OBJECTS: usize = 16;
/// Registrations waiting for their worker's command stream.
pub const MAX_PENDING_REGISTRATIONS: usize = 1024;
/// Open WatchSequence streams per scheduler.
pub const MAX_WATCHERS: usize = 4096;

fn too_long(field: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.len() > max {
        return Err(Error::InvalidArgument(format!(
            "{field}: {} bytes, more than the {max} allowed",
            value.len()
        )));
    }
    Ok(())
}

fn too_many<T>(field: &str, items: &[T], max: usize) -> Result<(), Error> {
    if items.len() > max {
        return Err(Error::InvalidArgument(format!(
            "{field}: {} entries, more than the {max} allowed",
            items.len()
        )));
    }
    Ok(())
}

fn optional(field: &str, value: &Option<String>, max: usize) -> Result<(), Error> {
    value
        .as_deref()
        .map_or(Ok(()), |value| too_long(field, value, max))
}

/// A sequence id, page token or worker given to a client RPC.
pub fn check_id(field: &str, value: &str) -> Result<(), Error> {
    too_long(field, value, MAX_ID_BYTES)
}

/// Every string and list of a submission, before the spec's own rules run.
/// Every string of a ReviseSequence request within its bound.
pub fn check_revise(request: &pb::ReviseSequenceRequest) -> Result<(), Error> {
    check_id("sequence_id", &request.sequence_id)?;
    check_id("idempotency_key", &request.idempotency_key)?;
    too_long("shot", &request.shot, MAX_NAME_BYTES)?;
    too_long("pass", &request.pass, MAX_NAME_BYTES)?;
    optional("prompt", &request.prompt, MAX_TEXT_BYTES)
}

pub fn check_submit(request: &pb::SubmitSequenceRequest) -> Result<(), Error> {
    check_id("idempotency_key", &request.idempotency_key)?;
    let Some(spec) = &request.spec else {
        return Ok(());
    };
    optional("title", &spec.title, MAX_TEXT_BYTES)?;
    optional("model", &spec.model, MAX_NAME_BYTES)?;
    optional("resolution", &spec.resolution, MAX_NAME_BYTES)?;
    optional("aspect", &spec.aspect, MAX_NAME_BYTES)?;
    optional("pass", &spec.pass, MAX_NAME_BYTES)?;
    optional("style", &spec.style, MAX_TEXT_BYTES)?;
    optional("negative", &spec.negative, MAX_TEXT_BYTES)?;
    optional("color_match", &spec.color_match, MAX_NAME_BYTES)?;
    optional("owner", &spec.owner, MAX_NAME_BYTES)?;
    too_many("shots", &spec.shots, spec::MAX_SHOTS)?;
    if spec.grade_reference.len() > spec::MAX_SHOTS {
        return Err(Error::InvalidArgument(format!(
            "grade_reference: {} scenes, more than the {} allowed",
            spec.grade_reference.len(),
            spec::MAX_SHOTS
        )));
    }
    for (scene, shot) in &spec.grade_reference {
        too_long("grade_reference", scene, MAX_NAME_BYTES)?;
        too_long(&format!("grade_reference.{scene}"), shot, MAX_NAME_BYTES)?;
    }
    for (index, shot) in spec.shots.iter().enumerate() {
        let at = |field: &str| format!("shots[{index}].{field}");
        too_long(&at("prompt"), &shot.prompt, MAX_TEXT_BYTES)?;
        optional(&at("transition"), &shot.transition, MAX_NAME_BYTES)?;
        optional(&at("negative"), &shot.negative, MAX_TEXT_BYTES)?;
        optional(&at("reference_name"), &shot.reference_name, MAX_NAME_BYTES)?;
        optional(&at("name"), &shot.name, MAX_NAME_BYTES)?;
        optional(&at("scene"), &shot.scene, MAX_NAME_BYTES)?;
        optional(
            &at("reference_upload"),
            &shot.reference_upload,
            MAX_ID_BYTES,
        )?;
    }
    Ok(())
}

fn check_device(field: &str, device: &pb::Device) -> Result<(), Error> {
    too_long(&format!("{field}.kind"), &device.kind, MAX_NAME_BYTES)?;
    too_long(&format!("{field}.name"), &device.name, MAX_NAME_BYTES)?;
    too_long(&format!("{field}.uuid"), &device.uuid, MAX_NAME_BYTES)?;
    too_long(&format!("{field}.class"), &device.class, MAX_NAME_BYTES)?;
    if !(device.speed.is_finite() && device.speed >= 0.0) {
        return Err(Error::InvalidArgument(format!(
            "{field}.speed: {} is not a speed (0 or more; 0 means 1.0)",
            device.speed
        )));
    }
    Ok(())
}

fn check_devices(devices: &[pb::Device]) -> Result<(), Error> {
    too_many("devices", devices, MAX_DEVICES)?;
    for (index, device) in devices.iter().enumerate() {
        check_device(&format!("devices[{index}]"), device)?;
    }
    Ok(())
}

fn check_ref(field: &str, reference: &pb::AssignmentRef) -> Result<(), Error> {
    too_long(
        &format!("{field}.assignment_id"),
        &reference.assignment_id,
        MAX_ID_BYTES,
    )
}

pub fn check_register(request: &pb::RegisterWorkerRequest) -> Result<(), Error> {
    too_long("name", &request.name, MAX_NAME_BYTES)?;
    check_id("worker_id", &request.worker_id)?;
    check_devices(&request.devices)?;
    too_many("models", &request.models, MAX_MODELS)?;
    for (index, model) in request.models.iter().enumerate() {
        too_long(&format!("models[{index}]"), model, MAX_NAME_BYTES)?;
    }
    too_many("running", &request.running, MAX_RUNNING)?;
    for (index, reference) in request.running.iter().enumerate() {
        check_ref(&format!("running[{index}]"), reference)?;
    }
    Ok(())
}

pub fn check_heartbeat(request: &pb::HeartbeatRequest) -> Result<(), Error> {
    check_id("worker_id", &request.worker_id)?;
    check_devices(&request.devices)
}

pub fn check_progress(request: &pb::ReportProgressRequest) -> Result<(), Error> {
    request
        .assignment
        .as_ref()
        .map_or(Ok(()), |reference| check_ref("assignment", reference))
}

/// A completion: bounded lists and keys, and phases that are finite times in order.
/// The most seam scores one completion may carry.
pub const MAX_SEAM_SCORES: usize = 4096;

pub fn check_complete(request: &pb::CompleteTaskRequest) -> Result<(), Error> {
    if let Some(reference) = &request.assignment {
        check_ref("assignment", reference)?;
    }
    too_long("output_key", &request.output_key, MAX_KEY_BYTES)?;
    too_many("phases", &request.phases, MAX_PHASES)?;
    for (index, phase) in request.phases.iter().enumerate() {
        too_long(
            &format!("phases[{index}].kind"),
            &phase.kind,
            MAX_NAME_BYTES,
        )?;
        too_long(
            &format!("phases[{index}].task_id"),
            &phase.task_id,
            MAX_ID_BYTES,
        )?;
        let finite = phase.start_unix_s.is_finite() && phase.end_unix_s.is_finite();
        if !finite || phase.start_unix_s < 0.0 || phase.end_unix_s < phase.start_unix_s {
            return Err(Error::InvalidArgument(format!(
                "phases[{index}]: {} to {} is not a time span (finite, not negative, start before end)",
                phase.start_unix_s, phase.end_unix_s
            )));
        }
    }
    // A stitch scores each continuity join once; an hour of 4 s windows is 900 of them.
    too_many("seams", &request.seams, MAX_SEAM_SCORES)?;
    for (index, seam) in request.seams.iter().enumerate() {
        too_long(
            &format!("seams[{index}].segment_id"),
            &seam.segment_id,
            MAX_ID_BYTES,
        )?;
    }
    too_many("objects", &request.objects, MAX_OBJECTS)?;
    for (index, object) in request.objects.iter().enumerate() {
        too_long(&format!("objects[{index}].key"), &object.key, MAX_KEY_BYTES)?;
        too_long(
            &format!("objects[{index}].crc32c"),
            &object.crc32c,
            MAX_NAME_BYTES,
        )?;
    }
    Ok(())
}

pub fn check_fail(request: &pb::FailTaskRequest) -> Result<(), Error> {
    if let Some(reference) = &request.assignment {
        check_ref("assignment", reference)?;
    }
    too_long("message", &request.message, MAX_MESSAGE_TEXT_BYTES)?;
    too_many("corrupt_keys", &request.corrupt_keys, MAX_OBJECTS)?;
    for (index, key) in request.corrupt_keys.iter().enumerate() {
        too_long(&format!("corrupt_keys[{index}]"), key, MAX_KEY_BYTES)?;
    }
    Ok(())
}

/// `text` cut to at most `max` bytes on a character boundary, saying that it was: what an
/// honest sender does with a message that may not fit its field.
pub fn truncate(text: &str, max: usize) -> String {
    const MARK: &str = " …(cut)";
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn submit_with(shot: pb::ShotSpec) -> pb::SubmitSequenceRequest {
        pb::SubmitSequenceRequest {
            spec: Some(pb::SequenceSpec {
                shots: vec![shot],
                ..Default::default()
            }),
            idempotency_key: String::new(),
            no_cache: false,
            max_cost_usd: None,
        }
    }

    #[test]
    fn each_oversized_field_is_named() {
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        let error = check_submit(&submit_with(pb::ShotSpec {
            prompt: long.clone(),
            ..Default::default()
        }))
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("shots[0].prompt: 8001 bytes"), "{error}");
        let error = check_submit(&pb::SubmitSequenceRequest {
            spec: None,
            idempotency_key: long.clone(),
            no_cache: false,
            max_cost_usd: None,
        })
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("idempotency_key:"), "{error}");
        let error = check_register(&pb::RegisterWorkerRequest {
            name: "w".into(),
            models: vec!["m".into(); MAX_MODELS + 1],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("models: 257 entries"), "{error}");
        let error = check_fail(&pb::FailTaskRequest {
            message: long.repeat(3),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("message:"), "{error}");
        for (field, request) in [
            (
                "shot:",
                pb::ReviseSequenceRequest {
                    sequence_id: "seq-1".into(),
                    shot: long.clone(),
                    ..Default::default()
                },
            ),
            (
                "prompt:",
                pb::ReviseSequenceRequest {
                    sequence_id: "seq-1".into(),
                    prompt: Some(long.clone()),
                    ..Default::default()
                },
            ),
        ] {
            let error = check_revise(&request).unwrap_err().to_string();
            assert!(error.starts_with(field), "{error}");
        }
    }

    #[test]
    fn phases_must_be_finite_spans_and_speeds_numbers() {
        let phase = |start: f64, end: f64| pb::TimedPhase {
            kind: "model".into(),
            start_unix_s: start,
            end_unix_s: end,
            task_id: String::new(),
        };
        for (start, end) in [
            (f64::NAN, 1.0),
            (1.0, f64::INFINITY),
            (2.0, 1.0),
            (-1.0, 1.0),
        ] {
            let error = check_complete(&pb::CompleteTaskRequest {
                phases: vec![phase(1.0, 2.0), phase(start, end)],
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(error.starts_with("phases[1]:"), "{error}");
        }
        assert!(
            check_complete(&pb::CompleteTaskRequest {
                phases: vec![phase(1.0, 1.0)],
                ..Default::default()
            })
            .is_ok()
        );
        let error = check_heartbeat(&pb::HeartbeatRequest {
            worker_id: "w".into(),
            devices: vec![pb::Device {
                speed: f64::NAN,
                ..Default::default()
            }],
        })
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("devices[0].speed: NaN"), "{error}");
    }

    proptest! {
        /// A cut message fits its bound, is valid UTF-8 by construction, keeps the start,
        /// and a message that fits is left alone.
        #[test]
        fn truncation_fits_and_keeps_the_start(text in "\\PC{0,300}", max in 12usize..200) {
            let cut = truncate(&text, max);
            prop_assert!(cut.len() <= max);
            if text.len() <= max {
                prop_assert_eq!(&cut, &text);
            } else {
                let kept = cut.trim_end_matches(" …(cut)");
                prop_assert!(text.starts_with(kept));
            }
        }

        /// Any request whose fields are all within bounds passes; one byte over fails and
        /// names the field.
        #[test]
        fn bounds_are_exact(name_len in 0usize..=MAX_NAME_BYTES + 1) {
            let request = pb::RegisterWorkerRequest {
                name: "n".repeat(name_len),
                ..Default::default()
            };
            let result = check_register(&request);
            if name_len <= MAX_NAME_BYTES {
                prop_assert!(result.is_ok());
            } else {
                prop_assert!(result.unwrap_err().to_string().starts_with("name: 257 bytes"));
            }
        }
    }
}
