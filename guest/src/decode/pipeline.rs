//! The transformers question-answering pipeline's decoding, reproduced exactly: windows of
//! `room` tokens overlapping by `doc_stride` wherever they fall, [`MAX_BATCH_ROWS`] windows a
//! call in context order, each span scored by its probability within its window.

use super::{Placed, Ranked, Strategy, stride_ranges};
use crate::Options;
use crate::pipeline::MAX_BATCH_ROWS;
use crate::score::WindowScores;
use crate::tokenize::{Context, window_count};
use crate::window::Window;
use std::ops::Range;

pub struct Pipeline;

impl Strategy for Pipeline {
    fn window_ranges(&self, context: &Context, room: usize, options: &Options) -> Vec<Range<usize>> {
        stride_ranges(0..context.len(), room, options.doc_stride)
    }

    /// The pipeline's windows are full but for the last, so the count is exact.
    fn min_windows(&self, tokens: usize, room: usize, options: &Options) -> usize {
        window_count(tokens, room, options.doc_stride)
    }

    /// Always [`MAX_BATCH_ROWS`] windows a call in context order: with a dynamically quantized
    /// model the batch changes the scores, and the reference's must stay reproducible.
    fn batches<'w>(&self, windows: Vec<Placed<'w>>, _options: &Options) -> Vec<Vec<Placed<'w>>> {
        windows.chunks(MAX_BATCH_ROWS).map(<[_]>::to_vec).collect()
    }

    fn rank<'w>(&self, scored: Vec<(&'w Window, WindowScores)>) -> Ranked<'w> {
        probabilities(scored)
    }
}

/// The reference's scores: each span its probability within its window, "no answer" the
/// least over windows. Also the document decoding's for a context of one window.
pub(super) fn probabilities(scored: Vec<(&Window, WindowScores)>) -> Ranked<'_> {
    let null_score = scored.iter().filter_map(|(_, s)| s.null_score.map(f64::from)).reduce(f64::min);
    let spans = scored.into_iter().flat_map(|(window, s)| s.spans.into_iter().map(move |span| (window, span))).collect();
    Ranked { spans, null_score, shares_of: None }
}
