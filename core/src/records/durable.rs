//! How a transition becomes durable: the conditional writes of the records it changed
//! (`Durable`, which remembers what the state store holds), and the intent that lets a
//! transition too big for one transaction take effect wholly or not at all.

use std::collections::{BTreeMap, BTreeSet};

use crate::Error;
use crate::farm::{Farm, FarmEvent, SequenceId};

use super::{INTENT, SEQUENCES, TOKENS, json, sequence_records};

/// One conditional write of a record: `value: None` deletes. `expected_revision` is the key's
/// revision when it was last read or written (0: the key must not exist). The state store
/// (etcd, or memory) applies a transition's writes atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub expected_revision: i64,
}

const INTENT_MAGIC: &[u8; 4] = b"RFI1";

/// A transition's writes as one value: the state store records it before it applies a
/// transition in several transactions, and a new leader that finds it applies the rest, so
/// a big transition (a 500-shot submit) takes effect wholly or not at all. Binary, since
/// values are protobuf or JSON bytes: `RFI1`, a count, then per write a tag (1 put, 0
/// delete), the key and the value, each with a little-endian u32 length.
pub fn encode_intent(writes: &[Write]) -> Vec<u8> {
    let mut bytes = INTENT_MAGIC.to_vec();
    let length = |bytes: &mut Vec<u8>, n: usize| {
        bytes.extend_from_slice(
            &u32::try_from(n)
                .expect("records are far below 4 GiB")
                .to_le_bytes(),
        )
    };
    length(&mut bytes, writes.len());
    for write in writes {
        bytes.push(u8::from(write.value.is_some()));
        length(&mut bytes, write.key.len());
        bytes.extend_from_slice(write.key.as_bytes());
        if let Some(value) = &write.value {
            length(&mut bytes, value.len());
            bytes.extend_from_slice(value);
        }
    }
    bytes
}

/// The writes `encode_intent` recorded (expected revisions 0: a new leader applies them
/// under its own fence).
pub fn decode_intent(bytes: &[u8]) -> Result<Vec<Write>, Error> {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
            if self.0.len() < n {
                return Err(bad("truncated"));
            }
            let (head, tail) = self.0.split_at(n);
            self.0 = tail;
            Ok(head)
        }
        fn length(&mut self) -> Result<usize, Error> {
            let raw = self.take(4)?;
            Ok(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize)
        }
    }
    fn bad(why: &str) -> Error {
        Error::Internal(format!("record {INTENT} does not decode: {why}"))
    }
    let mut cursor = Cursor(
        bytes
            .strip_prefix(INTENT_MAGIC.as_slice())
            .ok_or_else(|| bad("wrong magic"))?,
    );
    let count = cursor.length()?;
    // Each write takes at least 5 bytes: a huge count in a short value is refused, not
    // allocated.
    let mut writes = Vec::with_capacity(count.min(bytes.len() / 5));
    for _ in 0..count {
        let tag = cursor.take(1)?[0];
        let key_length = cursor.length()?;
        let key = String::from_utf8(cursor.take(key_length)?.to_vec())
            .map_err(|_| bad("a key is not UTF-8"))?;
        let value = match tag {
            1 => {
                let value_length = cursor.length()?;
                Some(cursor.take(value_length)?.to_vec())
            }
            0 => None,
            _ => return Err(bad("unknown write tag")),
        };
        writes.push(Write {
            key,
            value,
            expected_revision: 0,
        });
    }
    if !cursor.0.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(writes)
}

/// What a transition leaves to do once its dispatch ran (`Durable::settle`).
#[derive(Debug)]
pub struct Settled {
    pub events: Vec<FarmEvent>,
    pub changed: BTreeSet<SequenceId>,
    pub writes: Vec<Write>,
}

/// What the state store holds, as last written: turns a transition's changed sequences into
/// the conditional writes that make them durable.
#[derive(Debug, Default)]
pub struct Durable {
    known: BTreeMap<String, (Vec<u8>, i64)>,
}

impl Durable {
    pub fn from_loaded(
        records: &BTreeMap<String, Vec<u8>>,
        revisions: &BTreeMap<String, i64>,
    ) -> Self {
        let known = records
            .iter()
            .map(|(key, value)| {
                (
                    key.clone(),
                    (value.clone(), revisions.get(key).copied().unwrap_or(0)),
                )
            })
            .collect();
        Durable { known }
    }

    /// Writes for every record of `changed` sequences that differs from what is stored.
    pub fn writes<'a>(
        &self,
        farm: &Farm,
        changed: impl IntoIterator<Item = &'a SequenceId>,
    ) -> Vec<Write> {
        let mut writes = Vec::new();
        for id in changed {
            let records = sequence_records(farm, id);
            // Records of the sequence the farm no longer has (it was deleted).
            let prefix = format!("{SEQUENCES}{id}/");
            for (key, (_, revision)) in self.known.range(prefix.clone()..) {
                if !key.starts_with(&prefix) {
                    break;
                }
                if !records.contains_key(key) {
                    writes.push(Write {
                        key: key.clone(),
                        value: None,
                        expected_revision: *revision,
                    });
                }
            }
            for (key, value) in records {
                let stored = self.known.get(&key);
                if stored.is_some_and(|(bytes, _)| *bytes == value) {
                    continue;
                }
                writes.push(Write {
                    expected_revision: stored.map_or(0, |(_, revision)| *revision),
                    key,
                    value: Some(value),
                });
            }
        }
        writes
    }

    /// After a transition and the dispatch that follows it: what happened (for metrics), the
    /// sequences whose status changed (for watchers) and the writes that make it durable. The
    /// leader commits the writes before it carries out any action; the simulator counts them.
    pub fn settle(&self, farm: &mut Farm) -> Settled {
        let events = farm.take_events();
        let changed = farm.take_changed();
        let mut writes = self.writes(farm, &changed);
        for id in farm.take_changed_tokens() {
            let key = format!("{TOKENS}{id}");
            let stored = self.known.get(&key);
            match farm.tokens.get(&id) {
                Some(token) => {
                    let value = json(token);
                    if stored.is_none_or(|(bytes, _)| *bytes != value) {
                        writes.push(Write {
                            expected_revision: stored.map_or(0, |(_, revision)| *revision),
                            key,
                            value: Some(value),
                        });
                    }
                }
                None => {
                    if let Some((_, revision)) = stored {
                        writes.push(Write {
                            expected_revision: *revision,
                            key,
                            value: None,
                        });
                    }
                }
            }
        }
        Settled {
            events,
            changed,
            writes,
        }
    }

    pub fn committed(&mut self, writes: Vec<Write>, revisions: &[i64]) {
        for (write, &revision) in writes.into_iter().zip(revisions) {
            match write.value {
                Some(value) => {
                    self.known.insert(write.key, (value, revision));
                }
                None => {
                    self.known.remove(&write.key);
                }
            }
        }
    }
}
