//! The decodings, one file per strategy behind [`Strategy`]: how a question's windows are cut
//! from the context, grouped into inference calls and ranked into answers. The stages around
//! them ([`crate::tokenize`], [`crate::score`], [`crate::extract`]) are the same for both.
//!
//! - `pipeline.rs`: the transformers question-answering pipeline's, reproduced exactly.
//! - `document.rs`: for long documents: a window per paragraph, calls packed by length, spans of
//!   different windows compared by their log-odds against each window's "no answer".

mod document;
mod pipeline;

use crate::score::{TokenSpan, WindowScores};
use crate::tokenize::Context;
use crate::window::Window;
use crate::{Decoding, Options};
use std::ops::Range;

/// What differs between decodings. Stateless: [`strategy`] hands out one shared instance each.
pub trait Strategy: Sync {
    /// Token ranges of the context in a question's windows, `room` context tokens each.
    fn window_ranges(&self, context: &Context, room: usize, options: &Options) -> Vec<Range<usize>>;

    /// At least how many windows of `options.max_seq_len` tokens a context of at least
    /// `tokens` tokens needs with a question that leaves `room` tokens (the window budget's
    /// check before the context is tokenized).
    fn min_windows(&self, tokens: usize, room: usize, options: &Options) -> usize;

    /// A question's windows cut into inference calls.
    fn batches<'w>(&self, windows: Vec<Placed<'w>>, options: &Options) -> Vec<Vec<Placed<'w>>>;

    /// A question's spans from all its windows (in context order), scored for ranking, and
    /// its "no answer" score.
    fn rank<'w>(&self, scored: Vec<(&'w Window, WindowScores)>) -> Ranked<'w>;
}

/// The strategy of `decoding`.
pub fn strategy(decoding: Decoding) -> &'static dyn Strategy {
    match decoding {
        Decoding::Pipeline => &pipeline::Pipeline,
        Decoding::Document => &document::Document,
    }
}

/// A window of one question: (question, its place among the question's windows, window).
pub type Placed<'w> = (usize, usize, &'w Window);

/// What [`Strategy::rank`] gives: the spans, the "no answer" score, and, where the scores are
/// relative odds, their total, which turns each into its share.
pub struct Ranked<'w> {
    pub spans: Vec<(&'w Window, TokenSpan)>,
    pub null_score: Option<f64>,
    pub shares_of: Option<f64>,
}

/// `span` cut into ranges of at most `room` tokens, each starting `stride` tokens before the
/// previous one ended (`stride < room`); at least one range, empty for an empty span. What
/// `tokenizers` cuts with `only_second` truncation and a stride.
fn stride_ranges(span: Range<usize>, room: usize, stride: usize) -> Vec<Range<usize>> {
    let mut ranges = Vec::with_capacity(crate::tokenize::window_count(span.len(), room, stride));
    let mut start = span.start;
    loop {
        let end = (start + room).min(span.end);
        ranges.push(start..end);
        if end == span.end {
            return ranges;
        }
        start = end - stride;
    }
}
