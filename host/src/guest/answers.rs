//! A guest is untrusted code: its answers are checked before anything goes back to a caller.

use super::Response;

/// How a guest's answer broke the contract; the answer is dropped, never forwarded.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AnswerError {
    #[error("{got} answers for top_k {top_k}")]
    TooMany { got: usize, top_k: u32 },
    #[error("answer {index} spans characters {start}..{end} of a {chars}-character context")]
    OutsideContext { index: usize, start: usize, end: usize, chars: usize },
    #[error("answer {index} text ({bytes} bytes) is not the context's characters {start}..{end}")]
    NotTheSpan { index: usize, bytes: usize, start: usize, end: usize },
    #[error("answer {index} has score {score}")]
    NotFinite { index: usize, score: f64 },
    #[error("{results} results for {questions} questions")]
    ResultCount { results: usize, questions: usize },
}

/// A guest is untrusted code: its answers must be character spans of the context with exactly
/// that text, at most `top_k` of them, scores finite. This also bounds what a guest can make
/// the host send back (no answer is larger than the request's context).
pub(super) fn check(response: &Response, context: &str, top_k: u32) -> Result<(), AnswerError> {
    if response.answers.len() > top_k as usize {
        return Err(AnswerError::TooMany { got: response.answers.len(), top_k });
    }
    // Byte offset of each character boundary up to the furthest answer end, so character
    // offsets map to slices in O(1) (an answer past the context's end finds no boundary).
    let furthest = response.answers.iter().map(|a| a.end as usize).max().unwrap_or(0);
    let boundaries: Vec<usize> =
        context.char_indices().map(|(i, _)| i).chain(std::iter::once(context.len())).take(furthest.saturating_add(1)).collect();
    for (i, answer) in response.answers.iter().enumerate() {
        let (start, end) = (answer.start as usize, answer.end as usize);
        let slice = (start <= end)
            .then(|| Some(&context[*boundaries.get(start)?..*boundaries.get(end)?]))
            .flatten()
            .ok_or_else(|| AnswerError::OutsideContext { index: i, start, end, chars: context.chars().count() })?;
        if answer.text != slice {
            return Err(AnswerError::NotTheSpan { index: i, bytes: answer.text.len(), start, end });
        }
        if !answer.score.is_finite() {
            return Err(AnswerError::NotFinite { index: i, score: answer.score });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::{Answer, PhaseTimings};

    fn response(answers: &[(&str, u32, u32, f64)]) -> Response {
        Response {
            answers: answers.iter().map(|&(text, start, end, score)| Answer { text: text.into(), score, start, end }).collect(),
            timings: PhaseTimings::default(),
            windows: 1,
        }
    }

    #[test]
    fn answers_must_be_character_slices_of_the_context() {
        let context = "Benz, née 1844, built it in 1886 🚗.";
        assert_eq!(check(&response(&[("1886", 28, 32, 0.9)]), context, 1), Ok(()));
        assert_eq!(check(&response(&[("🚗", 33, 34, 0.1), ("née", 6, 9, 0.1)]), context, 2), Ok(()));
        assert_eq!(check(&response(&[("", 0, 0, 0.0)]), context, 1), Ok(()), "the no-answer span");
        let refused = |answers: &[(&str, u32, u32, f64)], top_k| check(&response(answers), context, top_k).unwrap_err().to_string();
        assert!(refused(&[("1886", 28, 32, 0.9), ("1844", 10, 14, 0.1)], 1).contains("2 answers"));
        assert!(refused(&[("x", 35, 99, 0.5)], 1).contains("35..99"));
        assert!(refused(&[("", 5, 4, 0.5)], 1).contains("5..4"));
        assert!(refused(&[("ok", 0, 2, 0.5)], 1).contains("not the context's"));
        assert!(refused(&[(&"A".repeat(1 << 20), 0, 4, 0.5)], 1).contains("1048576 bytes"));
        assert!(refused(&[("1886", 28, 32, f64::NAN)], 1).contains("NaN"));
    }
}
