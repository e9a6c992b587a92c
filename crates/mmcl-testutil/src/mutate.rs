//! Mutations of valid files for property tests of readers.
//!
//! A reader meets most hostile files as small edits of valid ones: a flipped bit, a truncation,
//! a size field set to an extreme, a duplicated or deleted run. [`Mutation`] names such edits so
//! that a property-testing framework can generate and shrink them, and [`apply`] performs them on
//! a byte buffer. Positions are taken modulo the buffer's length so every mutation applies to
//! every input.

use proptest::prelude::*;

/// One edit of a byte buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// Flips bit `bit % 8` of the byte at `at`.
    FlipBit {
        /// Position (modulo the length).
        at: usize,
        /// Bit index (modulo 8).
        bit: u8,
    },
    /// Sets the byte at `at` to `value`.
    SetByte {
        /// Position (modulo the length).
        at: usize,
        /// The new byte.
        value: u8,
    },
    /// Keeps the first `len` bytes (modulo the length plus one).
    Truncate {
        /// The kept length.
        len: usize,
    },
    /// Inserts `bytes` before `at`.
    Insert {
        /// Position (modulo the length plus one).
        at: usize,
        /// The inserted bytes.
        bytes: Vec<u8>,
    },
    /// Removes up to `len` bytes from `at`.
    Delete {
        /// Position (modulo the length).
        at: usize,
        /// How many bytes.
        len: usize,
    },
    /// Overwrites the bytes at `at` with `value` as a little-endian integer of `width` bytes
    /// (1, 2, 4 or 8): hits binary size and offset fields.
    SetInteger {
        /// Position (modulo the length).
        at: usize,
        /// Byte width (1, 2, 4 or 8; other values become 4).
        width: u8,
        /// The value: mostly extremes.
        value: u64,
    },
    /// Replaces the run of ASCII digits nearest after `at` with `digits`: hits sizes, counts and
    /// rates in text formats.
    SetDecimal {
        /// Where to start looking (modulo the length).
        at: usize,
        /// The replacement text.
        digits: String,
    },
    /// Repeats the run `[at, at + len)` `times` times in place: deep nesting, long lists.
    Repeat {
        /// Start (modulo the length).
        at: usize,
        /// Length of the run (at most 64).
        len: usize,
        /// How many extra copies (at most 1000).
        times: usize,
    },
}

/// The property-test configuration of the reader fuzz tests: `MMCL_FUZZ_CASES` cases (default
/// 96), a fixed random stream (`MMCL_FUZZ_SEED` to explore another) so that a failure in CI
/// reproduces, and no failure files written into the source tree.
pub fn fuzz_config() -> ProptestConfig {
    let env_u64 = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    ProptestConfig {
        cases: env_u64("MMCL_FUZZ_CASES").map_or(96, |c| c.clamp(1, u64::from(u32::MAX)) as u32),
        rng_seed: proptest::test_runner::RngSeed::Fixed(env_u64("MMCL_FUZZ_SEED").unwrap_or(17)),
        failure_persistence: None,
        max_shrink_iters: 512,
        ..ProptestConfig::default()
    }
}

/// A strategy for one [`Mutation`], biased towards the edits that break parsers: extreme
/// integers, extreme decimal numbers, truncation and repetition.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    let extreme = prop_oneof![
        Just(0u64),
        Just(1u64),
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        Just(u64::from(u16::MAX)),
        Just(1u64 << 31),
        Just(1u64 << 40),
        any::<u64>(),
    ];
    let decimal = prop_oneof![
        Just("0".to_string()),
        Just("000".to_string()),
        Just("99999999999999999999".to_string()),
        Just("4294967296".to_string()),
        Just("-1".to_string()),
        Just("0.005".to_string()),
        Just("1e308".to_string()),
        Just("inf".to_string()),
        Just("nan".to_string()),
        "[0-9]{1,12}",
    ];
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::SetByte { at, value }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (
            any::<usize>(),
            prop_oneof![Just(1u8), Just(2), Just(4), Just(8)],
            extreme
        )
            .prop_map(|(at, width, value)| Mutation::SetInteger { at, width, value }),
        (any::<usize>(), decimal).prop_map(|(at, digits)| Mutation::SetDecimal { at, digits }),
        (any::<usize>(), 1usize..64, 1usize..1000).prop_map(|(at, len, times)| Mutation::Repeat {
            at,
            len,
            times
        }),
    ]
}

/// A strategy for a short list of mutations (one to `max` edits).
pub fn mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..=max.max(1))
}

/// Applies `mutations` in order to `bytes`.
pub fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        apply_one(&mut bytes, m);
    }
    bytes
}

fn apply_one(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    match m {
        Mutation::FlipBit { at, bit } if n > 0 => bytes[at % n] ^= 1 << (bit % 8),
        Mutation::SetByte { at, value } if n > 0 => bytes[at % n] = *value,
        Mutation::Truncate { len } => bytes.truncate(len % (n + 1)),
        Mutation::Insert { at, bytes: ins } => {
            let at = at % (n + 1);
            bytes.splice(at..at, ins.iter().copied());
        }
        Mutation::Delete { at, len } if n > 0 => {
            let at = at % n;
            let end = at.saturating_add(*len).min(n);
            bytes.drain(at..end);
        }
        Mutation::SetInteger { at, width, value } if n > 0 => {
            let width = match width {
                1 | 2 | 4 | 8 => *width as usize,
                _ => 4,
            };
            let at = at % n;
            let le = value.to_le_bytes();
            for (i, b) in le.iter().take(width).enumerate() {
                if let Some(slot) = bytes.get_mut(at + i) {
                    *slot = *b;
                }
            }
        }
        Mutation::SetDecimal { at, digits } if n > 0 => {
            let start = at % n;
            if let Some(first) = (start..n).find(|&i| bytes[i].is_ascii_digit()) {
                let end = (first..n)
                    .find(|&i| !bytes[i].is_ascii_digit())
                    .unwrap_or(n);
                bytes.splice(first..end, digits.bytes());
            }
        }
        Mutation::Repeat { at, len, times } if n > 0 => {
            let at = at % n;
            let end = at.saturating_add((*len).clamp(1, 64)).min(n);
            let run = bytes[at..end].to_vec();
            let copies = (*times).min(1000);
            let mut extra = Vec::with_capacity(run.len() * copies);
            for _ in 0..copies {
                extra.extend_from_slice(&run);
            }
            bytes.splice(end..end, extra);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_apply_to_any_length() {
        let all = [
            Mutation::FlipBit { at: 7, bit: 9 },
            Mutation::SetByte { at: 3, value: 0 },
            Mutation::Insert {
                at: 100,
                bytes: vec![1, 2],
            },
            Mutation::Delete { at: 1, len: 1 },
            Mutation::SetInteger {
                at: 0,
                width: 8,
                value: u64::MAX,
            },
            Mutation::SetDecimal {
                at: 0,
                digits: "999".into(),
            },
            Mutation::Repeat {
                at: 0,
                len: 2,
                times: 3,
            },
            Mutation::Truncate { len: 5 },
        ];
        for start in [Vec::new(), b"a1b22c".to_vec()] {
            let _ = apply(start, &all);
        }
        assert_eq!(
            apply(
                b"rate=500;".to_vec(),
                &[Mutation::SetDecimal {
                    at: 0,
                    digits: "0".into()
                }]
            ),
            b"rate=0;"
        );
        assert_eq!(
            apply(
                b"<a>".to_vec(),
                &[Mutation::Repeat {
                    at: 0,
                    len: 3,
                    times: 2
                }]
            ),
            b"<a><a><a>"
        );
    }
}
