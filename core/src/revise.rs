//! A new version of a sequence with one change, pure: which shot an edit names, what it
//! changes (prompt, seed, or the final pass), and a line saying so. The scheduler submits
//! the result like any sequence, and the segment cache supplies everything the change does
//! not touch.

use reelfarm_common::sequence::{Pass, Sequence};

use crate::Error;

/// One change to a sequence (`reelfarm rerender`, `reelfarm promote`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Edit {
    /// A shot's name or 0-based index; `None` for a change to the whole sequence.
    pub shot: Option<String>,
    pub prompt: Option<String>,
    /// The shot's new seed (`--seed`, or one drawn for `--new-seed`).
    pub seed: Option<u64>,
    /// `Some(Final)`: the final pass at the model's final steps (`promote`).
    pub pass: Option<Pass>,
    /// The take of the shot to put on the timeline (`pick`).
    pub take: Option<u32>,
}

/// The index of the shot `name` names: a shot's name, else a 0-based index.
pub fn find_shot(sequence: &Sequence, name: &str) -> Result<usize, Error> {
    if let Some(index) = sequence
        .shots
        .iter()
        .position(|shot| shot.name.as_deref() == Some(name))
    {
        return Ok(index);
    }
    match name.trim().parse::<usize>() {
        Ok(index) if index < sequence.shots.len() => Ok(index),
        _ => {
            let names: Vec<String> = sequence
                .shots
                .iter()
                .filter_map(|shot| shot.name.clone())
                .collect();
            Err(Error::InvalidArgument(format!(
                "shot: {name:?} names no shot; give a shot's name{} or an index from 0 to {}",
                if names.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", names.join(", "))
                },
                sequence.shots.len().saturating_sub(1)
            )))
        }
    }
}

/// `sequence` with `edit` applied, and what changed in words. An edit that changes nothing
/// is refused: it would only render the same video again.
pub fn revise(sequence: &Sequence, edit: &Edit) -> Result<(Sequence, String), Error> {
    let mut revised = sequence.clone();
    let mut changes = Vec::new();
    let shot_edit = edit.prompt.is_some() || edit.seed.is_some() || edit.take.is_some();
    match (&edit.shot, shot_edit) {
        (Some(name), _) => {
            let index = find_shot(sequence, name)?;
            let label = sequence.shots[index].display_name(index);
            let shot = &mut revised.shots[index];
            if let Some(prompt) = &edit.prompt {
                if prompt.trim().is_empty() {
                    return Err(Error::InvalidArgument(
                        "prompt: must not be empty".to_string(),
                    ));
                }
                if *prompt != shot.prompt {
                    changes.push(format!("{label}: prompt {prompt:?}"));
                    shot.prompt = prompt.clone();
                }
            }
            if let Some(seed) = edit.seed
                && shot.seed != Some(seed)
            {
                changes.push(format!("{label}: seed {seed}"));
                shot.seed = Some(seed);
            }
            if let Some(take) = edit.take {
                if take >= shot.variants {
                    return Err(Error::InvalidArgument(format!(
                        "take: {label} has {} take{} (0 to {}); render more with variants: N",
                        shot.variants,
                        if shot.variants == 1 { "" } else { "s" },
                        shot.variants - 1
                    )));
                }
                if take != shot.take {
                    changes.push(format!("{label}: take {take}"));
                    shot.take = take;
                }
            }
            if !shot_edit {
                return Err(Error::InvalidArgument(format!(
                    "{label}: say what to change (a prompt, a seed, a new seed or a take)"
                )));
            }
        }
        (None, true) => {
            return Err(Error::InvalidArgument(
                "shot: name the shot whose prompt or seed changes".to_string(),
            ));
        }
        (None, false) => {}
    }
    if let Some(pass) = edit.pass {
        // The final pass takes the model's final steps, whatever steps the draft was given.
        if revised.pass != pass || revised.steps.is_some() {
            changes.push(format!("{} pass", pass_name(pass)));
            revised.pass = pass;
            revised.steps = None;
        }
    }
    if changes.is_empty() {
        return Err(Error::InvalidArgument(
            "nothing changes: this version would render the same video again".to_string(),
        ));
    }
    Ok((revised, changes.join("; ")))
}

fn pass_name(pass: Pass) -> &'static str {
    match pass {
        Pass::Draft => "draft",
        Pass::Final => "final",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence() -> Sequence {
        let doc = reelfarm_common::spec::parse_spec_text(
            "steps: 2\nshots:\n  - {prompt: harbour, duration: 2, name: opener}\n  - {prompt: dunes, duration: 2}\n",
        )
        .unwrap();
        reelfarm_common::spec::validate(doc, None, &|_| Err("none".into())).unwrap()
    }

    #[test]
    fn a_shot_is_named_by_its_name_or_its_index() {
        let sequence = sequence();
        assert_eq!(find_shot(&sequence, "opener").unwrap(), 0);
        assert_eq!(find_shot(&sequence, "1").unwrap(), 1);
        let error = find_shot(&sequence, "5").unwrap_err().to_string();
        assert!(
            error.contains("give a shot's name (opener) or an index from 0 to 1"),
            "{error}"
        );
    }

    #[test]
    fn an_edit_changes_one_shot_and_says_what_changed() {
        let sequence = sequence();
        let edit = Edit {
            shot: Some("1".into()),
            prompt: Some("red dunes".into()),
            seed: Some(7),
            pass: None,
            take: None,
        };
        let (revised, change) = revise(&sequence, &edit).unwrap();
        assert_eq!(revised.shots[1].prompt, "red dunes");
        assert_eq!(revised.shots[1].seed, Some(7));
        assert_eq!(revised.shots[0], sequence.shots[0]);
        assert_eq!(change, "shot 1: prompt \"red dunes\"; shot 1: seed 7");
    }

    #[test]
    fn the_final_pass_drops_the_draft_steps_and_empty_edits_are_refused() {
        let sequence = sequence();
        let promote = Edit {
            pass: Some(Pass::Final),
            ..Edit::default()
        };
        let (revised, change) = revise(&sequence, &promote).unwrap();
        assert_eq!((revised.pass, revised.steps), (Pass::Final, None));
        assert_eq!(revised.shots, sequence.shots);
        assert_eq!(change, "final pass");
        assert!(revise(&revised, &promote).is_err(), "already final");
        let same = Edit {
            shot: Some("opener".into()),
            prompt: Some("harbour".into()),
            ..Edit::default()
        };
        assert!(
            revise(&sequence, &same)
                .unwrap_err()
                .to_string()
                .contains("nothing changes")
        );
        let no_shot = Edit {
            prompt: Some("x".into()),
            ..Edit::default()
        };
        assert!(revise(&sequence, &no_shot).is_err());
    }
}
