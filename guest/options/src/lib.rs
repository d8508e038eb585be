//! The defaults of the QA options, from one source: `defaults.json` beside this crate, turned
//! into the constants below at build time. The guest's `Options::DEFAULT`, the values the host
//! fills in for fields a request leaves out, and the benchmarks' settings (Python reads the
//! file) all come from there.

include!(concat!(env!("OUT_DIR"), "/defaults.rs"));

/// The stride of a request that names a window length but no stride: [`DOC_STRIDE`], but at
/// most half the window (the transformers pipeline's rule), so a short window still advances.
pub const fn doc_stride_for(max_seq_len: usize) -> usize {
    let half = max_seq_len / 2;
    if half < DOC_STRIDE { half } else { DOC_STRIDE }
}

/// How a long context is cut into windows and how answers of different windows compare.
/// Both give the same answers for a context that fits one window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decoding {
    /// Each window holds one paragraph, and spans of different windows compare by their odds
    /// against their own window's "no answer": a window whose model finds no answer in it gives
    /// its best span low odds. Over several windows the score is `1 - 1 / (1 + odds)`; a
    /// context of one window scores as `Pipeline`.
    Document,
    /// Exactly the transformers question-answering pipeline: windows overlap by `doc_stride`
    /// wherever they fall, and each window is soft-maxed on its own (every window's best span
    /// scores high, even in a window without the answer).
    Pipeline,
}

impl Decoding {
    pub const ALL: [Self; 2] = [Self::Document, Self::Pipeline];

    /// The name requests, fixtures and `defaults.json` use.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Document => "document",
            Self::Pipeline => "pipeline",
        }
    }

    pub fn from_name(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| format!("decoding must be \"document\" or \"pipeline\", got {name:?}"))
    }
}

impl Default for Decoding {
    fn default() -> Self {
        DECODING
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_constants_are_the_file() {
        let file = include_str!("../defaults.json");
        let compact: String = file.split_whitespace().collect();
        for (key, value) in [
            ("top_k", TOP_K.to_string()),
            ("max_answer_len", MAX_ANSWER_LEN.to_string()),
            ("max_seq_len", MAX_SEQ_LEN.to_string()),
            ("doc_stride", DOC_STRIDE.to_string()),
            ("max_question_len", MAX_QUESTION_LEN.to_string()),
            ("handle_impossible_answer", HANDLE_IMPOSSIBLE_ANSWER.to_string()),
            ("decoding", format!("\"{}\"", DECODING.name())),
        ] {
            assert!(compact.contains(&format!("\"{key}\":{value}")), "{key} = {value} not in {file}");
        }
    }

    /// The numbers docs/api.md documents (the request table's default column, the limits
    /// table's 64-token question), written here as the README writes them: a default changed
    /// in `defaults.json` fails here until docs/api.md and this test follow.
    #[test]
    fn the_defaults_are_the_documented_numbers() {
        assert_eq!(TOP_K, 1);
        assert_eq!(MAX_ANSWER_LEN, 15);
        assert_eq!(MAX_SEQ_LEN, 384);
        assert_eq!(DOC_STRIDE, 128);
        assert_eq!(doc_stride_for(384), 128, "half the window up to 128");
        assert_eq!(MAX_QUESTION_LEN, 64);
        assert_eq!((HANDLE_IMPOSSIBLE_ANSWER, DECODING), (false, Decoding::Document));
    }

    #[test]
    fn a_short_window_gets_at_most_half_of_it_as_stride() {
        assert_eq!(doc_stride_for(MAX_SEQ_LEN), DOC_STRIDE.min(MAX_SEQ_LEN / 2));
        assert_eq!(doc_stride_for(64), 32);
        assert_eq!(doc_stride_for(1), 0);
        assert!(doc_stride_for(4096) <= DOC_STRIDE);
    }

    #[test]
    fn decodings_are_named_both_ways() {
        for decoding in Decoding::ALL {
            assert_eq!(Decoding::from_name(decoding.name()), Ok(decoding));
        }
        assert!(Decoding::from_name("Document").is_err());
    }
}
