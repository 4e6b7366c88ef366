//! How token sequences go through an encoder's network: one forward per prompt, or padded
//! batches of at most [`MAX_BATCH`] prompts sorted by length, identical sequences run once, and
//! batches of long prompts made smaller to keep the attention scores under a budget.
//! Both encoders (`qwen`, `bert`) run their forward through
//! [`embed_sequences`].

use std::collections::HashMap;

use crate::error::{Result, TextError};

/// Most prompts in one padded batch (the official chunk size).
pub const MAX_BATCH: usize = 32;

/// A cap on the f32 elements of one layer's attention scores (batch × heads × L²): batches of
/// long prompts are made smaller than [`MAX_BATCH`] to stay under it (a batch holds at least
/// one prompt whatever its length).
const SCORE_BUDGET: usize = 1 << 27;

/// How an encoder's `embed_with` runs the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmbedMode {
    /// Left-padded batches of at most [`MAX_BATCH`] prompts under an attention mask, as the
    /// official code does (prompts sorted by length within the call, duplicates run once).
    #[default]
    Batched,
    /// Every prompt alone, without padding.
    OnePerPrompt,
}

/// Embed token sequences one per forward or in batches ([`run_batched`]); `run` is the model's
/// forward on rows of equal meaning (BERT and Qwen share this). Empty sequences are errors.
pub(crate) fn embed_sequences(
    ids: &[Vec<u32>],
    mode: EmbedMode,
    score_elements: impl Fn(usize, usize) -> usize,
    run: impl Fn(&[&[u32]]) -> Result<Vec<Vec<f32>>>,
) -> Result<Vec<Vec<f32>>> {
    if let Some(i) = ids.iter().position(Vec::is_empty) {
        return Err(TextError::Tokenize {
            prompt: format!("token sequence #{i}"),
            reason: "no tokens".into(),
        });
    }
    match mode {
        EmbedMode::OnePerPrompt => {
            ids.iter().map(|row| run(&[row.as_slice()]).map(|mut v| v.remove(0))).collect()
        }
        EmbedMode::Batched => run_batched(ids, score_elements, run),
    }
}

/// Run non-empty token sequences in padded batches: distinct sequences only, shortest first
/// (stable: ties keep the input order), split by [`batches`]; `run` embeds one batch (a vector
/// per row, in order). The vectors come back in the input order, duplicates sharing theirs.
fn run_batched(
    ids: &[Vec<u32>],
    score_elements: impl Fn(usize, usize) -> usize,
    mut run: impl FnMut(&[&[u32]]) -> Result<Vec<Vec<f32>>>,
) -> Result<Vec<Vec<f32>>> {
    let mut slot_of: HashMap<&[u32], usize> = HashMap::new();
    let mut distinct: Vec<&[u32]> = Vec::new();
    let slots: Vec<usize> = ids
        .iter()
        .map(|row| {
            *slot_of.entry(row.as_slice()).or_insert_with(|| {
                distinct.push(row.as_slice());
                distinct.len() - 1
            })
        })
        .collect();
    let mut order: Vec<usize> = (0..distinct.len()).collect();
    order.sort_by_key(|&i| distinct[i].len());
    let lens: Vec<usize> = order.iter().map(|&i| distinct[i].len()).collect();
    let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); distinct.len()];
    for range in batches(&lens, score_elements) {
        let chunk = &order[range];
        let rows: Vec<&[u32]> = chunk.iter().map(|&i| distinct[i]).collect();
        for (&i, v) in chunk.iter().zip(run(&rows)?) {
            vectors[i] = v;
        }
    }
    Ok(slots.into_iter().map(|s| vectors[s].clone()).collect())
}

/// Split ascending sequence lengths into consecutive batches of at most [`MAX_BATCH`] whose
/// attention scores (`score_elements(rows, padded length)`) stay within [`SCORE_BUDGET`]; a
/// batch holds at least one sequence.
fn batches(
    ascending_lens: &[usize],
    score_elements: impl Fn(usize, usize) -> usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < ascending_lens.len() {
        // Lengths ascend, so the newest row sets the padded length.
        let mut end = start + 1;
        while end < ascending_lens.len()
            && end - start < MAX_BATCH
            && score_elements(end + 1 - start, ascending_lens[end]) <= SCORE_BUDGET
        {
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_at_most_32_and_respect_the_score_budget() {
        let scores = |rows: usize, len: usize| rows * 32 * len * len;
        assert!(batches(&[], scores).is_empty());
        let lens = vec![30; 70];
        assert_eq!(batches(&lens, scores), vec![0..32, 32..64, 64..70]);
        // 32 heads: 32 rows of 362 tokens fit in 2^27 score elements; of 363 tokens, 31 do.
        let lens = [vec![100; 20], vec![363; 20]].concat();
        let got = batches(&lens, scores);
        assert_eq!(got, vec![0..31, 31..40]);
        assert!(got.iter().all(|r| scores(r.len(), lens[r.end - 1]) <= SCORE_BUDGET));
        // A sequence too long for the budget still gets a batch of its own.
        assert_eq!(batches(&[10, 9000, 9000], scores), vec![0..1, 1..2, 2..3]);
    }
}
