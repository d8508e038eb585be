//! `qa-host eval`: exact match and F1 on a SQuAD v1.1 file, with the official script's
//! answer normalization (lower case, ASCII punctuation removed, the articles a/an/the
//! removed at word boundaries, white space collapsed); each question's score is its best
//! over the gold answers.

use crate::api::QaRequest;
use crate::service::QaService;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

#[derive(Deserialize)]
struct SquadFile {
    data: Vec<Article>,
}
#[derive(Deserialize)]
struct Article {
    paragraphs: Vec<Paragraph>,
}
#[derive(Deserialize)]
struct Paragraph {
    context: String,
    qas: Vec<Qa>,
}
#[derive(Deserialize)]
struct Qa {
    id: String,
    question: String,
    answers: Vec<Gold>,
}
#[derive(Deserialize)]
struct Gold {
    text: String,
}

/// One question to evaluate.
pub struct Question {
    pub id: String,
    pub question: String,
    pub context: Arc<str>,
    pub gold: Vec<String>,
}

pub fn load_squad(json: &[u8]) -> Result<Vec<Question>, serde_json::Error> {
    let file: SquadFile = serde_json::from_slice(json)?;
    let mut questions = Vec::new();
    for paragraph in file.data.into_iter().flat_map(|a| a.paragraphs) {
        let context: Arc<str> = paragraph.context.into();
        for qa in paragraph.qas {
            questions.push(Question {
                id: qa.id,
                question: qa.question,
                context: context.clone(),
                gold: qa.answers.into_iter().map(|g| g.text).collect(),
            });
        }
    }
    Ok(questions)
}

#[derive(Debug, serde::Serialize)]
pub struct EvalReport {
    pub exact_match: f64,
    pub f1: f64,
    pub total: usize,
    pub failed: usize,
    pub seconds: f64,
    pub median_ms: f64,
    pub model: String,
}

/// Asks every question and scores the answers. `predictions` receives id → answer text, the
/// official script's prediction format.
pub async fn evaluate(
    service: &Arc<QaService>,
    questions: &[Question],
    model: Option<String>,
    predictions: &mut BTreeMap<String, String>,
) -> EvalReport {
    let progress = indicatif::ProgressBar::new(questions.len() as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let (mut em, mut f1, mut failed) = (0.0, 0.0, 0);
    let mut latencies = Vec::with_capacity(questions.len());
    let mut model_used = model.clone().unwrap_or_default();
    for q in questions {
        let request = QaRequest { model_type: model.clone(), ..QaRequest::new(q.question.clone(), q.context.to_string()) };
        let asked = Instant::now();
        let prediction = match service.answer(request).await {
            Ok(response) => {
                model_used = response.model_type;
                response.answer
            }
            Err(error) => {
                failed += 1;
                progress.set_message(format!("{}: {}", q.id, error.code()));
                String::new()
            }
        };
        latencies.push(asked.elapsed().as_secs_f64() * 1e3);
        em += best_over(&q.gold, |g| exact_match(&prediction, g));
        f1 += best_over(&q.gold, |g| f1_score(&prediction, g));
        predictions.insert(q.id.clone(), prediction);
        progress.inc(1);
    }
    progress.finish_and_clear();
    latencies.sort_by(f64::total_cmp);
    let n = questions.len().max(1) as f64;
    EvalReport {
        exact_match: 100.0 * em / n,
        f1: 100.0 * f1 / n,
        total: questions.len(),
        failed,
        seconds: started.elapsed().as_secs_f64(),
        median_ms: latencies.get(latencies.len() / 2).copied().unwrap_or(0.0),
        model: model_used,
    }
}

fn best_over(gold: &[String], score: impl Fn(&str) -> f64) -> f64 {
    gold.iter().map(|g| score(g)).fold(0.0, f64::max)
}

/// The official SQuAD v1.1 normalization.
pub fn normalize_answer(text: &str) -> String {
    let lowered = text.to_lowercase();
    let no_punct: String = lowered.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    remove_articles(&no_punct).split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `re.sub(r'\b(a|an|the)\b', ' ', text)` with Python's Unicode word characters.
fn remove_articles(text: &str) -> String {
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let boundary_before = !is_word(i.checked_sub(1).map(|j| chars[j])) && is_word(Some(chars[i]));
        let article = ["the", "an", "a"].into_iter().find(|a| {
            let len = a.chars().count();
            boundary_before
                && chars.len() >= i + len
                && chars[i..i + len].iter().copied().eq(a.chars())
                && !is_word(chars.get(i + len).copied())
        });
        match article {
            Some(a) => {
                out.push(' ');
                i += a.len();
            }
            None => {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    out
}

pub fn exact_match(prediction: &str, gold: &str) -> f64 {
    f64::from(u8::from(normalize_answer(prediction) == normalize_answer(gold)))
}

pub fn f1_score(prediction: &str, gold: &str) -> f64 {
    let predicted = normalize_answer(prediction);
    let expected = normalize_answer(gold);
    let p: Vec<&str> = predicted.split_whitespace().collect();
    let g: Vec<&str> = expected.split_whitespace().collect();
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &g {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0;
    for t in &p {
        if let Some(c) = counts.get_mut(t).filter(|c| **c > 0) {
            *c -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_matches_the_official_script() {
        assert_eq!(normalize_answer("The  Eiffel Tower!"), "eiffel tower");
        assert_eq!(normalize_answer("an apple, a pear"), "apple pear");
        assert_eq!(normalize_answer("Theater"), "theater");
        assert_eq!(normalize_answer("“the” end"), "“ ” end");
        assert_eq!(normalize_answer("Ångström_a a_b"), "ångströma ab");
    }

    #[test]
    fn f1_counts_token_overlap() {
        assert_eq!(f1_score("the year 1886", "1886"), 2.0 * 0.5 * 1.0 / 1.5);
        assert_eq!(f1_score("1886", "1886"), 1.0);
        assert_eq!(f1_score("", "1886"), 0.0);
        assert_eq!(exact_match("The 1886.", "1886"), 1.0);
    }

    #[test]
    fn squad_file_flattens_to_questions() {
        let json = br#"{"data":[{"title":"t","paragraphs":[{"context":"c1","qas":[{"id":"1","question":"q","answers":[{"text":"a","answer_start":0}]}]}]}]}"#;
        let questions = load_squad(json).unwrap();
        assert_eq!(questions.len(), 1);
        assert_eq!(&*questions[0].context, "c1");
        assert_eq!(questions[0].gold, ["a"]);
    }
}
