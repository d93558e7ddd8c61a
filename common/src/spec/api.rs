//! The API message for a spec (`pb::SequenceSpec`) in both directions: into the same raw form
//! a YAML file becomes, so it goes through the one validation, and back out of a validated
//! `Sequence` for submission and storage.

use super::*;

/// The API message goes through the same validation as a spec file; `known_models` are the
/// ids of the farm's model catalog.
pub fn sequence_from_pb(
    spec: pb::SequenceSpec,
    known_models: &[String],
) -> Result<Sequence, SpecError> {
    let shots = spec
        .shots
        .into_iter()
        .map(|shot| ShotDoc {
            prompt: Some(shot.prompt),
            duration: Some(Scalar::Float(shot.duration_seconds)),
            transition: shot.transition,
            crossfade: shot.crossfade_seconds.map(Scalar::Float),
            seed: shot.seed,
            negative: shot.negative,
            name: shot.name,
            scene: shot.scene,
            reference: None,
            variants: shot.variants,
            take: shot.take,
            model: shot.model,
            inline_reference: shot.reference_png.map(|png| Reference {
                name: shot
                    .reference_name
                    .unwrap_or_else(|| "reference.png".to_string()),
                png,
            }),
        })
        .collect();
    let doc = SpecDoc {
        title: spec.title,
        model: spec.model,
        resolution: spec.resolution.map(Scalar::Text),
        aspect: spec.aspect.map(Scalar::Text),
        fps: spec.fps.map(|fps| Scalar::Integer(i64::from(fps))),
        seed: spec.seed,
        pass: spec.pass,
        style: spec.style,
        negative: spec.negative,
        steps: spec.steps.map(|steps| Scalar::Integer(i64::from(steps))),
        shots: Some(shots),
        color_match: spec.color_match,
        continuity_blend: spec.continuity_blend_seconds.map(Scalar::Float),
        grade_reference: (!spec.grade_reference.is_empty()).then(|| {
            spec.grade_reference
                .into_iter()
                .map(|(scene, shot)| {
                    let shot = match shot.parse::<i64>() {
                        Ok(index) => Scalar::Integer(index),
                        Err(_) => Scalar::Text(shot),
                    };
                    (scene, shot)
                })
                .collect()
        }),
        owner: spec.owner,
        priority: spec
            .priority
            .map(|priority| Scalar::Integer(i64::from(priority))),
        seam_qa: spec.seam_qa,
        seam_qa_tries: spec.seam_qa_tries,
    };
    validate(doc, Some(known_models), &|_| {
        Err("references travel as image bytes over the API".to_string())
    })
}

pub fn sequence_to_pb(sequence: &Sequence) -> pb::SequenceSpec {
    pb::SequenceSpec {
        title: sequence.title.clone(),
        model: Some(sequence.model.clone()),
        resolution: Some(sequence.resolution.name().to_string()),
        aspect: Some(sequence.aspect.name().to_string()),
        fps: Some(sequence.fps),
        seed: Some(sequence.seed),
        pass: Some(sequence.pass.name().to_string()),
        style: sequence.style.clone(),
        negative: sequence.negative.clone(),
        steps: sequence.steps,
        shots: sequence
            .shots
            .iter()
            .map(|shot| pb::ShotSpec {
                prompt: shot.prompt.clone(),
                duration_seconds: shot.duration_seconds,
                transition: Some(shot.transition.name().to_string()),
                crossfade_seconds: shot.crossfade_seconds,
                seed: shot.seed,
                negative: shot.negative.clone(),
                reference_png: shot
                    .reference
                    .as_ref()
                    .map(|reference| reference.png.clone()),
                reference_name: shot
                    .reference
                    .as_ref()
                    .map(|reference| reference.name.clone()),
                name: shot.name.clone(),
                variants: (shot.variants > 1).then_some(shot.variants),
                take: (shot.take > 0).then_some(shot.take),
                model: shot.model.clone(),
                scene: shot.scene.clone(),
                reference_upload: None,
            })
            .collect(),
        color_match: Some(sequence.color_match.name().to_string()),
        continuity_blend_seconds: Some(sequence.continuity_blend_seconds),
        grade_reference: sequence
            .grade_references
            .iter()
            .map(|(scene, index)| (scene.clone(), index.to_string()))
            .collect(),
        owner: sequence.owner.clone(),
        priority: (sequence.priority != 0).then_some(sequence.priority),
        seam_qa: sequence.seam_qa,
        seam_qa_tries: (sequence.seam_qa_tries != crate::sequence::SEAM_QA_TRIES)
            .then_some(sequence.seam_qa_tries),
    }
}
