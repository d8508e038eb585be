//! The decoding for long documents: a window never mixes paragraphs (the model saw one
//! paragraph at a time in training), short windows share inference calls, and spans of
//! different windows are compared by their log-odds against each window's "no answer".

use super::{Placed, Ranked, Strategy, pipeline, stride_ranges};
use crate::Options;
use crate::pipeline::{DOCUMENT_BATCH_TOKENS, MAX_BATCH_ROWS};
use crate::score::{TokenSpan, WindowScores, log_odds_against_no_answer};
use crate::tokenize::Context;
use crate::window::Window;
use std::ops::Range;

pub struct Document;

impl Strategy for Document {
    /// Each paragraph on its own, cut as the pipeline cuts a context when longer than a window.
    fn window_ranges(&self, context: &Context, room: usize, options: &Options) -> Vec<Range<usize>> {
        context.paragraphs.iter().flat_map(|p| stride_ranges(p.clone(), room, options.doc_stride)).collect()
    }

    /// Paragraph windows hold fewer tokens than `room`, so only the tokens are bounded: the
    /// windows' tokens (question and special tokens included) over a full window's.
    fn min_windows(&self, tokens: usize, room: usize, options: &Options) -> usize {
        let full = options.max_seq_len.max(1);
        (tokens + full - room).div_ceil(full)
    }

    /// Shortest first, as many windows as fit in [`DOCUMENT_BATCH_TOKENS`] (or in
    /// [`MAX_BATCH_ROWS`] full windows, if fewer) once padded to the longest, a longer window
    /// alone. Paragraphs make windows of very different lengths; in context order a short one
    /// padded to its long neighbour wastes the difference, and a call has a fixed cost. Sorted,
    /// the 100 KB document of `bench/long_docs.py` pads 3 % instead of 31 % of its tokens.
    fn batches<'w>(&self, mut windows: Vec<Placed<'w>>, options: &Options) -> Vec<Vec<Placed<'w>>> {
        // Stable: windows of equal length keep context order, so the batches are reproducible.
        windows.sort_by_key(|&(_, _, w)| w.len());
        let budget = DOCUMENT_BATCH_TOKENS.min(MAX_BATCH_ROWS * options.max_seq_len);
        let mut batches: Vec<Vec<Placed<'w>>> = Vec::new();
        for window in windows {
            match batches.last_mut() {
                // Sorted, the newcomer is the longest: the batch pads to its length.
                Some(batch) if (batch.len() + 1) * window.2.len() <= budget => batch.push(window),
                _ => batches.push(vec![window]),
            }
        }
        batches
    }

    /// A context of one window: the pipeline's probabilities. Over several windows: each span
    /// by its log-odds against its window's "no answer" ([`log_odds_against_no_answer`]), "no
    /// answer" itself at log-odds 0 (it wins when no span is likelier than its own window's
    /// "no answer"); the answers' scores are then their shares of all the odds, "no answer"
    /// included: a distribution over the candidates that does not saturate at the top (as
    /// `odds / (1 + odds)` did, giving 1.0 to every confident answer of a long document) and
    /// keeps the log-odds' order.
    fn rank<'w>(&self, scored: Vec<(&'w Window, WindowScores)>) -> Ranked<'w> {
        if scored.len() == 1 {
            return pipeline::probabilities(scored);
        }
        let has_no_answer = scored.iter().any(|(_, s)| s.null_logit.is_some());
        let mut spans: Vec<(&Window, TokenSpan)> =
            scored.into_iter().flat_map(|(window, s)| log_odds_against_no_answer(s).into_iter().map(move |span| (window, span))).collect();
        // Odds relative to the best (log-odds `top`), so that none overflows and the best are near 1.
        let top = spans.iter().map(|(_, span)| span.score).chain(has_no_answer.then_some(0.0)).fold(f64::NEG_INFINITY, f64::max);
        // Every span of probability zero and no "no answer": all scores are 0, never NaN.
        let top = if top.is_finite() { top } else { 0.0 };
        for (_, span) in &mut spans {
            span.score = (span.score - top).exp();
        }
        let null_score = has_no_answer.then(|| (-top).exp());
        let total = spans.iter().map(|(_, span)| span.score).sum::<f64>() + null_score.unwrap_or(0.0);
        Ranked { spans, null_score, shares_of: (total > 0.0).then_some(total) }
    }
}
