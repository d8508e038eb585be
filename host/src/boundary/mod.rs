//! What the host holds on a guest's behalf, and its bounds: the accountant of one request
//! ([`Account`]), the memory all guests of the host share ([`MemoryBudget`]) and guest text cut
//! to a bound before the host keeps it ([`bound_text`]). The lowest room of the host: both the
//! wasi-nn backend ([`crate::nn`]) and the guest runtime ([`crate::guest`]) charge it, so it
//! imports neither.

mod account;
mod memory;

pub use account::{Account, Refused};
pub use memory::MemoryBudget;

/// `text` cut to at most `limit` bytes on a character boundary, with a marker saying how much
/// was cut.
pub fn bound_text(text: String, limit: usize) -> String {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [cut: {} more bytes]", &text[..end], text.len() - end)
}
