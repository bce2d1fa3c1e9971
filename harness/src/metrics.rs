//! The `metrics-reflect` kind (HLT-6): the counters of `/metrics` move with the work the
//! harness itself causes.
//!
//! A realm can expose every required series (HLT-5, `health.metrics`) and still never update
//! them. The driver reads `/metrics`, has a fresh funded wallet run `intents` probes, pinned to
//! a worker of the harness's own, to their end, and reads `/metrics` again (polling a little, since a realm may publish counters late).
//! The checker compares the first and last scrape: `mtor_intents_admitted_total` must rise by
//! exactly the intents accepted (nothing else was submitted meanwhile: cases run one at a time),
//! and every series in `at_least` by at least the intents completed.

use std::time::Duration;

use tokio::time::Instant;

use crate::case::Ctx;
use crate::checker::{note, Judgement, Outcome, MARK};
use crate::journal::{Entry, Record};
use crate::plan::CaseSpec;
use crate::scripted::stage::{Auto, Stage, StageError};
use crate::scripted::Params;
use crate::wire::http_get;

/// The case kind.
pub const KIND: &str = "metrics-reflect";

const ADMITTED: &str = "mtor_intents_admitted_total";
/// Series that must rise by at least the completed intents, unless the plan names others.
const AT_LEAST: &[&str] = &[
    "mtor_tasks_dispatched_total",
    "mtor_intent_latency_seconds_count",
];

fn int_param(spec: &CaseSpec, key: &str, default: u64) -> u64 {
    spec.params
        .get(key)
        .and_then(|v| v.as_integer())
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(default)
}

fn at_least(spec: &CaseSpec) -> Vec<String> {
    spec.params
        .get("at_least")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_else(|| AT_LEAST.iter().map(|s| (*s).to_owned()).collect())
}

/// The sum of every sample of `name` (all label sets) in a Prometheus text body; `None` when
/// the series is absent or a value does not parse.
pub fn series_sum(body: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name` must end here: `name value` or `name{labels} value`.
        let rest = match rest.chars().next() {
            Some(' ') => rest,
            Some('{') => rest.split_once('}').map(|(_, v)| v)?,
            _ => continue,
        };
        let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
        sum += value;
        found = true;
    }
    found.then_some(sum)
}

async fn scrape(ctx: &Ctx<'_>) -> Option<String> {
    match http_get(
        &ctx.target.http_base,
        "/metrics",
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(3000),
    )
    .await
    {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// Drives the case; the verdict is [`check`]'s.
pub async fn drive(ctx: &Ctx<'_>) {
    let intents = int_param(ctx.spec, "intents", 3).clamp(1, 20);
    let settle_ms = int_param(ctx.spec, "settle_ms", 3000).min(10_000);
    let Some(before) = scrape(ctx).await else {
        return ctx.abort("GET /metrics did not answer 200 before the work");
    };
    // The harness's own worker runs the probes (pinned to its key), so the case needs no
    // worker of the realm's and the work is exactly what the harness caused.
    let params = Params::of(ctx.spec);
    let mut stage = match Stage::open(ctx, &params).await {
        Ok(s) => s,
        Err(StageError::Skip(why)) => return ctx.skip(why),
        Err(e) => return ctx.abort(e),
    };
    let w = match stage.enrol().await {
        Ok(w) => w,
        Err(e) => {
            stage.finish().await;
            return ctx.abort(e);
        }
    };
    stage.auto = Some(Auto::Answer);
    let key = stage.worker_key(w);
    let mut accepted = Vec::new();
    for _ in 0..intents {
        match stage.submit(&key).await {
            Ok((id, _)) => accepted.push(id),
            Err(e) => stage.note(format!("a probe was not admitted: {e}")),
        }
    }
    ctx.mark("accepted", &accepted.len().to_string());
    let mut completed = 0usize;
    for id in &accepted {
        let end = stage.wait_terminal(id, 10_000).await;
        if end.as_ref().and_then(|r| r.kind()) == Some("intent.result") {
            completed += 1;
        }
    }
    ctx.mark("completed", &completed.to_string());
    // Poll until the counters show the work (or the settle time is over): a realm may publish
    // them a little late, and the checker takes the last scrape.
    let want = accepted.len() as f64;
    let base = series_sum(&before, ADMITTED).unwrap_or(0.0);
    let until = Instant::now() + Duration::from_millis(settle_ms);
    loop {
        let after = scrape(ctx).await;
        let moved = after
            .as_deref()
            .and_then(|b| series_sum(b, ADMITTED))
            .is_some_and(|v| v - base >= want);
        if moved || Instant::now() >= until || Instant::now() >= ctx.deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stage.finish().await;
}

fn scrapes<'a>(records: &[&'a Record]) -> Vec<(u64, &'a str)> {
    records
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Http {
                path, status, body, ..
            } if path == "/metrics" && *status == 200 => Some((r.seq, body.as_str())),
            _ => None,
        })
        .collect()
}

fn marked(records: &[&Record], name: &str) -> Option<usize> {
    records.iter().find_map(|r| {
        note(r, MARK)?
            .strip_prefix(name)?
            .strip_prefix(':')?
            .parse()
            .ok()
    })
}

/// Judges the case from its records.
pub fn check(spec: &CaseSpec, records: &[&Record]) -> Judgement {
    let (Some(accepted), Some(completed)) =
        (marked(records, "accepted"), marked(records, "completed"))
    else {
        return Judgement::new(Outcome::Unknown, "the probes were never run", "");
    };
    if completed == 0 {
        return Judgement::new(
            Outcome::Unknown,
            format!("none of the {accepted} accepted probes completed: no work to count"),
            "",
        );
    }
    let scraped = scrapes(records);
    let (Some((first_seq, first)), Some((last_seq, last))) = (scraped.first(), scraped.last())
    else {
        return Judgement::new(Outcome::Unknown, "/metrics was never read with 200", "");
    };
    if first_seq == last_seq {
        return Judgement::new(Outcome::Unknown, "/metrics was not read after the work", "");
    }
    let mut wrong = Vec::new();
    let mut seen = Vec::new();
    let delta = |name: &str| match (series_sum(first, name), series_sum(last, name)) {
        (Some(a), Some(b)) => Ok(b - a),
        _ => Err(format!("{name} is missing or unreadable in a scrape")),
    };
    match delta(ADMITTED) {
        Ok(d) if d == accepted as f64 => seen.push(format!("{ADMITTED} +{d}")),
        Ok(d) => wrong.push(format!(
            "{ADMITTED} rose by {d} while the harness had {accepted} intents admitted"
        )),
        Err(e) => wrong.push(e),
    }
    for name in at_least(spec) {
        match delta(&name) {
            Ok(d) if d >= completed as f64 => seen.push(format!("{name} +{d}")),
            Ok(d) => wrong.push(format!(
                "{name} rose by {d} while {completed} intents were dispatched and completed"
            )),
            Err(e) => wrong.push(e),
        }
    }
    if wrong.is_empty() {
        Judgement::new(
            Outcome::Pass,
            format!("the counters moved with the {completed} probes the harness ran"),
            seen.join(", "),
        )
        .with("scrapes before and after", vec![*first_seq, *last_seq])
    } else {
        Judgement::new(
            Outcome::Broken,
            "the metrics do not count the work the harness caused",
            wrong.join("\n"),
        )
        .with("scrapes before and after", vec![*first_seq, *last_seq])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_sum_matches_whole_names_and_adds_label_sets() {
        let body = "# HELP x\nmtor_a_total 3\nmtor_a_total_other 100\nmtor_b{code=\"X\"} 2\nmtor_b{code=\"Y\"} 5\n";
        assert_eq!(series_sum(body, "mtor_a_total"), Some(3.0));
        assert_eq!(series_sum(body, "mtor_b"), Some(7.0));
        assert_eq!(series_sum(body, "mtor_c"), None);
        assert_eq!(series_sum("mtor_a_total notanumber", "mtor_a_total"), None);
    }
}
