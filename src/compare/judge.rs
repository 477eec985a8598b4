//! The judge job (`jobs::COMPARE_JUDGE`): once every answer of a comparison has ended, a
//! judge model (`COMPARE_JUDGE_MODEL`, by default the conversation's model) writes for each
//! answer a summary (at most 50 words), a reasoning line (at most 20 words) and a score
//! from 0 to 10, and ranks the answers. It is asked for strict JSON; its reply is parsed
//! leniently (a code fence or prose around the object is ignored, labels and numbers may
//! come as strings) and the word limits are enforced by truncation. When the reply is
//! unusable (`local/echo` repeats the prompt), the judge cannot be asked (no key), or it
//! keeps failing until the job's last attempt, a deterministic heuristic ranks the answers
//! instead (`judged_by` = `heuristic`). Then the comparison is READY and `ComparisonReady`
//! goes out on `conversationEvents`.
//!
//! The judge's tokens are not charged to the workspace (like titles).

use serde_json::Value;
use uuid::Uuid;

use crate::app::App;
use crate::compare::model::{Comparison, Entry, HEURISTIC, Judged};
use crate::conversations::model::{Conversation, Message};
use crate::llm::{ChatMessage, ChatRequest, ChatRole, collect};
use crate::streaming::hub::ConversationEvent;
use crate::streaming::jobs::Job;

pub const SUMMARY_WORDS: usize = 50;
pub const REASONING_WORDS: usize = 20;
/// Most characters of one answer shown to the judge.
const ANSWER_CHARS: usize = 8_000;

const INSTRUCTIONS: &str = "You compare several answers to the same question. Reply with one JSON object \
and nothing else (no prose, no code fence), in exactly this shape:\n\
{\"answers\": [{\"id\": \"A\", \"summary\": \"...\", \"reasoning\": \"...\", \"score\": 7.5}], \"ranking\": [\"A\"]}\n\
Give one object per answer, with the answer's letter as its id. summary: what the answer says, \
at most 50 words. reasoning: why it got its score, at most 20 words. score: a number from 0 \
(useless) to 10 (excellent). ranking: every letter exactly once, the best answer first.";

/// Runs the job: Err asks for a retry.
pub async fn run(app: &App, job: &Job) -> Result<(), String> {
    let comparison_id: Uuid = job
        .payload
        .get("comparisonId")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok())
        .ok_or("payload has no comparisonId")?;
    let mut conn = app.db.get().await.map_err(|e| e.to_string())?;
    let Some(comparison) = Comparison::find(&mut conn, comparison_id)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(()); // deleted with its conversation
    };
    if comparison.status == "READY" {
        return Ok(());
    }
    let conversation = Conversation::find(&mut conn, comparison.conversation_id)
        .await
        .map_err(|e| e.to_string())?;
    let question = Message::find(&mut conn, comparison.user_message_id)
        .await
        .map_err(|e| e.to_string())?;
    let (Some(conversation), Some(question)) = (conversation, question) else {
        return Ok(());
    };
    let answers = Comparison::entries(&mut conn, comparison_id)
        .await
        .map_err(|e| e.to_string())?;
    if answers.is_empty() {
        return Ok(());
    }
    let judge_model = app
        .config
        .chat
        .compare_judge_model
        .clone()
        .unwrap_or_else(|| conversation.model.clone());
    let last_attempt = job.attempts + 1 >= job.max_attempts;

    let resolved =
        crate::llm::keys::resolve_model(app, &mut conn, conversation.workspace_id, &judge_model)
            .await;
    drop(conn);
    let verdict = match resolved {
        Err(err) => {
            tracing::warn!(?err, %judge_model, "the judge model cannot be used; ranking by heuristic");
            None
        }
        Ok(resolved) => match app.providers.client(&resolved.spec.provider) {
            None => None,
            Some(client) => {
                let request = judge_request(&resolved.spec, &question.content, &answers);
                let out = collect(client.stream(request, resolved.api_key)).await;
                match out.error {
                    Some(err) if !last_attempt => return Err(err.to_string()),
                    Some(err) => {
                        tracing::warn!(error = %err, "the judge kept failing; ranking by heuristic");
                        None
                    }
                    None => {
                        let parsed = parse_verdict(&out.text, answers.len());
                        if parsed.is_none() {
                            tracing::info!(%judge_model, "the judge's reply is not a usable verdict; ranking by heuristic");
                        }
                        parsed
                    }
                }
            }
        },
    };
    let (results, judged_by) = match verdict {
        Some(results) => (results, judge_model.as_str()),
        None => (heuristic(&answers), HEURISTIC),
    };
    let mut conn = app.db.get().await.map_err(|e| e.to_string())?;
    let recorded = Comparison::record(&mut conn, comparison_id, &judge_model, judged_by, &results)
        .await
        .map_err(|e| e.to_string())?;
    if recorded {
        app.hub
            .publish_conversation(
                comparison.conversation_id,
                ConversationEvent::ComparisonReady {
                    user_message_id: comparison.user_message_id,
                },
            )
            .await;
    }
    Ok(())
}

/// The letter of the answer at `index`: A, B, C, …
fn label(index: usize) -> String {
    char::from(b'A' + index as u8).to_string()
}

fn judge_request(
    spec: &crate::llm::catalog::ModelSpec,
    question: &str,
    answers: &[(Entry, Message)],
) -> ChatRequest {
    let n = answers.len();
    // Keep the prompt well inside the window (about 3 characters a token).
    let window_chars = (spec.context_window as usize).saturating_mul(3) / (n + 2);
    let limit = ANSWER_CHARS.min(window_chars.max(200));
    let excerpt = |text: &str| -> String {
        let mut cut: String = text.chars().take(limit).collect();
        if cut.len() < text.len() {
            cut.push_str(" […]");
        }
        cut
    };
    let mut prompt = format!("Question:\n{}\n", excerpt(question));
    for (i, (_, message)) in answers.iter().enumerate() {
        let content = if message.content.trim().is_empty() {
            "(no answer)".to_owned()
        } else {
            excerpt(&message.content)
        };
        let ending = match message.status.as_str() {
            "COMPLETE" => "",
            "CANCELLED" => " (stopped before the end)",
            _ => " (failed before the end)",
        };
        prompt.push_str(&format!("\nAnswer {}{ending}:\n{content}\n", label(i)));
    }
    ChatRequest {
        model: spec.upstream.clone(),
        messages: vec![
            ChatMessage::new(ChatRole::System, INSTRUCTIONS),
            ChatMessage::new(ChatRole::User, prompt),
        ],
        temperature: Some(0.0),
        max_output_tokens: (150 * n as u32 + 100).min(spec.max_output_tokens),
        stop: Vec::new(),
    }
}

/// At most `max` words of `text`, whitespace collapsed.
pub fn truncate_words(text: &str, max: usize) -> String {
    text.split_whitespace()
        .take(max)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The index of an answer named by a label: a letter (`"B"`, `"Answer B"`) or a 1-based
/// number.
fn index_of(value: &Value, n: usize) -> Option<usize> {
    let index = match value {
        Value::Number(number) => (number.as_u64()? as usize).checked_sub(1)?,
        Value::String(text) => {
            let text = text.trim();
            let text = text
                .strip_prefix("Answer ")
                .or_else(|| text.strip_prefix("answer "))
                .unwrap_or(text)
                .trim();
            if let Ok(number) = text.parse::<usize>() {
                number.checked_sub(1)?
            } else {
                let mut chars = text.chars();
                let letter = chars.next()?.to_ascii_uppercase();
                if chars.next().is_some() || !letter.is_ascii_uppercase() {
                    return None;
                }
                (letter as u8 - b'A') as usize
            }
        }
        _ => return None,
    };
    (index < n).then_some(index)
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|x: &f64| x.is_finite())
}

/// The judge's verdict on `n` answers, index-aligned with them, or None when the reply is
/// not one: it needs a JSON object with a summary and a score for every answer. A ranking
/// that misses answers is completed by score; without one, answers rank by score (ties: in
/// the request's order).
pub fn parse_verdict(text: &str, n: usize) -> Option<Vec<Judged>> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    let object: Value = serde_json::from_str(text.get(start..=end)?).ok()?;
    let listed = object
        .get("answers")
        .or_else(|| object.get("entries"))?
        .as_array()?;
    let mut found: Vec<Option<(String, Option<String>, f64)>> = vec![None; n];
    for item in listed {
        let Some(index) = ["id", "label", "answer"]
            .iter()
            .find_map(|key| item.get(*key).and_then(|v| index_of(v, n)))
        else {
            continue;
        };
        let summary = item.get("summary").and_then(Value::as_str)?;
        let summary = truncate_words(summary, SUMMARY_WORDS);
        if summary.is_empty() {
            return None;
        }
        let reasoning = item
            .get("reasoning")
            .and_then(Value::as_str)
            .map(|r| truncate_words(r, REASONING_WORDS))
            .filter(|r| !r.is_empty());
        let score = number(item.get("score")?)?.clamp(0.0, 10.0);
        found[index].get_or_insert((summary, reasoning, score));
    }
    let found: Vec<(String, Option<String>, f64)> = found.into_iter().collect::<Option<_>>()?;
    let mut order: Vec<usize> = Vec::with_capacity(n);
    if let Some(ranking) = object
        .get("ranking")
        .or_else(|| object.get("order"))
        .and_then(Value::as_array)
    {
        for item in ranking {
            if let Some(index) = index_of(item, n)
                && !order.contains(&index)
            {
                order.push(index);
            }
        }
    }
    let mut rest: Vec<usize> = (0..n).filter(|i| !order.contains(i)).collect();
    rest.sort_by(|a, b| found[*b].2.total_cmp(&found[*a].2).then(a.cmp(b)));
    order.extend(rest);
    let mut results: Vec<Option<Judged>> = vec![None; n];
    for (place, index) in order.into_iter().enumerate() {
        let (summary, reasoning, score) = found[index].clone();
        results[index] = Some(Judged {
            summary,
            reasoning,
            score,
            rank: place as i32 + 1,
        });
    }
    results.into_iter().collect()
}

/// The ranking without a judge: a complete answer before a stopped one before a failed
/// one, then the longer first, then the request's order. Score: 6 for a complete answer,
/// 3 for a stopped one, 0 for a failed one, plus up to 4 for length (relative to the
/// longest answer), to one decimal. Summary: the answer's first 50 words.
pub fn heuristic(answers: &[(Entry, Message)]) -> Vec<Judged> {
    let words: Vec<usize> = answers
        .iter()
        .map(|(_, m)| m.content.split_whitespace().count())
        .collect();
    let longest = words.iter().copied().max().unwrap_or(0);
    let scored: Vec<(f64, &str)> = answers
        .iter()
        .zip(&words)
        .map(|((_, m), count)| {
            let (base, reasoning) = match m.status.as_str() {
                "COMPLETE" => (6.0, "Complete answer; ranked by completion status, then length, without a judge model."),
                "CANCELLED" => (3.0, "Stopped before the end; ranked by completion status, then length, without a judge model."),
                _ => (0.0, "Failed before the end; ranked by completion status, then length, without a judge model."),
            };
            let length = if longest == 0 {
                0.0
            } else {
                4.0 * *count as f64 / longest as f64
            };
            (((base + length) * 10.0).round() / 10.0, reasoning)
        })
        .collect();
    let mut order: Vec<usize> = (0..answers.len()).collect();
    order.sort_by(|a, b| scored[*b].0.total_cmp(&scored[*a].0).then(a.cmp(b)));
    let mut ranks = vec![0; answers.len()];
    for (place, index) in order.into_iter().enumerate() {
        ranks[index] = place as i32 + 1;
    }
    answers
        .iter()
        .enumerate()
        .map(|(i, (_, m))| {
            let summary = truncate_words(&m.content, SUMMARY_WORDS);
            Judged {
                summary: if summary.is_empty() {
                    "(no answer)".to_owned()
                } else {
                    summary
                },
                reasoning: Some(truncate_words(scored[i].1, REASONING_WORDS)),
                score: scored[i].0,
                rank: ranks[i],
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_strict_verdict_is_read_and_limits_are_enforced() {
        let long = (1..=80)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let text = format!(
            "```json\n{{\"answers\": [{{\"id\": \"A\", \"summary\": \"{long}\", \"reasoning\": \"{long}\", \"score\": 4}}, \
             {{\"id\": \"b\", \"summary\": \"Short.\", \"score\": \"9.5\"}}], \"ranking\": [\"B\", \"A\"]}}\n```"
        );
        let v = parse_verdict(&text, 2).expect("usable");
        assert_eq!(v[0].summary.split_whitespace().count(), 50);
        assert_eq!(
            v[0].reasoning
                .as_deref()
                .map(|r| r.split_whitespace().count()),
            Some(20)
        );
        assert_eq!((v[0].rank, v[1].rank), (2, 1));
        assert_eq!(v[1].score, 9.5);
        assert_eq!(v[1].reasoning, None);
    }

    #[test]
    fn a_missing_ranking_follows_the_scores() {
        let text = r#"{"answers": [{"id": 1, "summary": "a", "score": 3}, {"id": 2, "summary": "b", "score": 12},
            {"id": "Answer C", "summary": "c", "score": 3}], "ranking": ["B"]}"#;
        let v = parse_verdict(text, 3).expect("usable");
        assert_eq!(v.iter().map(|j| j.rank).collect::<Vec<_>>(), vec![2, 1, 3]);
        assert_eq!(v[1].score, 10.0, "clamped");
    }

    #[test]
    fn unusable_replies_are_refused() {
        assert!(parse_verdict("Echo: Question: what is 2+2?", 2).is_none());
        assert!(
            parse_verdict(
                r#"{"answers": [{"id": "A", "summary": "x", "score": 1}]}"#,
                2
            )
            .is_none()
        );
        assert!(parse_verdict(r#"{"answers": [{"id": "A", "summary": "x"}, {"id": "B", "summary": "y", "score": 2}]}"#, 2).is_none());
        assert!(parse_verdict("{not json}", 1).is_none());
    }
}
