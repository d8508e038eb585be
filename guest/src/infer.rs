//! Stage 3: the model, behind a trait so the pipeline runs with wasi-nn in the component and
//! with a stub in native tests.

use crate::QaError;
use crate::window::Batch;

/// Start and end logits for every position of a batch, row-major `[rows, seq_len]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Logits {
    pub rows: usize,
    pub seq_len: usize,
    pub start: Vec<f32>,
    pub end: Vec<f32>,
}

impl Logits {
    /// Checks the shape the model returned against the batch it was given, and that no logit
    /// is NaN or +inf (either would make every score of its window NaN). -inf is a
    /// probability of zero and passes.
    pub fn check(&self, batch: &Batch) -> Result<(), QaError> {
        let cells = batch.rows * batch.seq_len;
        if self.rows != batch.rows || self.seq_len != batch.seq_len || self.start.len() != cells || self.end.len() != cells {
            return Err(QaError::Inference(format!(
                "model returned logits of shape [{}, {}] ({} and {} values) for a [{}, {}] batch",
                self.rows,
                self.seq_len,
                self.start.len(),
                self.end.len(),
                batch.rows,
                batch.seq_len
            )));
        }
        if let Some(bad) = self.start.iter().chain(&self.end).find(|x| x.is_nan() || **x == f32::INFINITY) {
            return Err(QaError::Inference(format!("model returned a logit of {bad}")));
        }
        Ok(())
    }

    pub fn row(&self, row: usize) -> (&[f32], &[f32]) {
        let span = row * self.seq_len..(row + 1) * self.seq_len;
        (&self.start[span.clone()], &self.end[span])
    }
}

/// An extractive QA model: token ids in, start/end logits out.
pub trait QaModel {
    fn infer(&mut self, batch: &Batch) -> Result<Logits, QaError>;
}
