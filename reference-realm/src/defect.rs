//! Seeded defects: one realistic bug each, switched on at start with `MTOR_DEFECT=name`, so that
//! the harness can be shown to catch every bug it exists for (`ci/self-certify.py`,
//! `ci/defect-matrix.toml`, `docs/self-certification.md`).
//!
//! The switches exist only in builds with the cargo feature `defects`, and that feature refuses
//! to compile with optimisations: a release build or the container image cannot carry a defect.
//! Without the feature [`on`] is a constant `false`, so every seeded branch compiles away, and
//! [`init`] refuses a set `MTOR_DEFECT` rather than run a clean realm that claims to be broken.

#[cfg(all(feature = "defects", not(debug_assertions)))]
compile_error!("the `defects` feature is for debug builds only: never ship a seeded defect");

/// A seeded defect. The names (see [`CATALOGUE`]) are the values of `MTOR_DEFECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Defect {
    // ---- events (frame-level processing)
    /// Frames that are not JSON are dropped without an answer.
    IgnoreBadJson,
    /// Any frame the realm refuses closes the connection.
    CloseOnBadFrame,
    /// Every frame-level refusal is answered `INVALID_EVENT`, whatever the cause.
    OneErrorCode,
    /// No nesting check of its own: the JSON parser's recursion limit answers instead.
    NoDepthLimit,
    /// Unknown event types are dropped without an answer.
    IgnoreUnknownType,
    /// Session proofs are not verified: anyone can claim any wallet.
    AcceptForgedProof,
    /// `session.ready` carries `limits.max_depth` as a string.
    EmitWrongTypedField,
    // ---- health
    /// The manifest leaves out its licence.
    ManifestWithoutLicence,
    /// `/v1/health` reports the queue depth as a string.
    HealthWrongTyped,
    /// `/metrics` serves every series, but the counters never move.
    MetricsFrozen,
    /// `/v1/health` keeps listing a disconnected worker as healthy.
    HealthKeepsDeadWorkers,
    /// Worker health ignores heartbeats: every enrolled worker is healthy.
    HealthIgnoresHeartbeats,
    // ---- workers and leases
    /// `worker.enrolled` grants a lease twice as long as the manifest's.
    EnrolledTermsDiffer,
    /// A probe's worker pin is ignored: it runs on any worker, and a pin to an unknown key is
    /// admitted.
    PinIgnored,
    /// Non-retryable failures are retried.
    RetryNonRetryable,
    /// Results are fenced by task id only: a stale attempt's result settles the intent.
    AcceptStaleEpoch,
    /// Leases never lapse by deadline: a hung worker keeps its task forever.
    NeverLapse,
    /// A disconnected worker's leases are dropped: its tasks are never re-dispatched.
    ForgetLostLeases,
    /// Progress is acknowledged but does not extend the lease.
    IgnoreProgress,
    /// Results are not checked against the intent's output schema and probe rules.
    AcceptMalformedResult,
    /// A dead-lettered intent's reservation is never released.
    NoRefundOnDeadLetter,
    // ---- recovery
    /// Intents queued or running at a crash are not recovered at start: they stay unfinished.
    ForgetUnfinishedOnRestart,
    /// A new realm key on every start: the realm_id changes across a restart.
    NewKeyOnRestart,
    // ---- stateless
    /// `intent.fetch` finds only the asking session's own live intents.
    FetchBySession,
    /// `intent.cancel` works only from the session that submitted the intent.
    CancelBySession,
    /// `session.hello`'s `resume` list is ignored: no status, no attachment, no delivery.
    ResumeIgnored,
    /// Resume looks live intents up by id alone: any wallet's session may attach to them.
    ResumeAnyWallet,
    /// A terminal event is sent again on every resume, not only when it reached no session.
    ResumeRedelivers,
    // ---- tokens
    /// The funds check counts money held for intents in flight as available: racing
    /// submissions overdraw the wallet.
    OverdrawOnRace,
    /// Idempotency keys are ignored: a retried submission is admitted again.
    IgnoreIdempotencyKey,
    /// A success captures the cost and then releases the whole reservation too.
    CaptureAndRelease,
    /// The realm's fee is paid to the worker instead of the fee account.
    FeeToWorker,
    /// Wallet statements leave out mint entries.
    StatementOmitsMints,
    // ---- audit
    /// Record hashes do not cover `prev_hash`: the chain does not link.
    BrokenAuditChain,
    /// Captures are not recorded in the audit log.
    SkipCaptureAudit,
    /// The audit export's `next_after` skips one record at each page boundary.
    PagingDropsRecord,
    // ---- dispatch
    /// One global first-in-first-out queue and no per-wallet limit: a heavy wallet starves
    /// the others.
    FifoUnfair,
    /// No queue bound and no per-wallet limit: overload is queued without end, never refused.
    UnboundedQueue,
    /// The dispatcher hands out one task per scheduling tick instead of on admission.
    SlowDispatch,
    /// Every terminal event is sent twice.
    DoubleTerminal,
    // ---- security
    /// `worker.register` is challenged whatever its enrolment token.
    AcceptAnyToken,
    /// `wallet.mint` is honoured in any session, not only the sysop's.
    MintByAnyone,
    /// Signed REST reads check the signature but not who may read.
    RestAnySigner,
    /// Signed REST requests are accepted whatever their `MTOR-Timestamp`.
    NoTimestampCheck,
    /// A refused `wallet.mint` is answered with an error that echoes the frame's body.
    EchoInErrors,
    /// A refused frame's error is sent to every client session, not only its sender.
    RefusalsToAll,
    /// A `/static/` route joins the decoded path onto its folder, `..` and all.
    /// Intent input strings are "sanitised" on admission: markup escaped, control characters
    /// dropped, so the worker and every later reader get another string than the client sent.
    SanitizeInput,
    ServeStaticNaively,
    /// The connection's token bucket is kept, but a frame that finds no token is processed
    /// anyway: no frame is ever refused for the rate.
    NoRateLimit,
    /// Frames refused for the rate are answered `RATE_LIMITED` without `retry_after_ms`.
    RateLimitedWithoutRetry,
}

/// Every defect with its `MTOR_DEFECT` name and a line of description.
pub const CATALOGUE: &[(Defect, &str, &str)] = &[
    (
        Defect::IgnoreBadJson,
        "ignore-bad-json",
        "frames that are not JSON get no answer",
    ),
    (
        Defect::CloseOnBadFrame,
        "close-on-bad-frame",
        "any refused frame closes the connection",
    ),
    (
        Defect::OneErrorCode,
        "one-error-code",
        "every refusal on a connection is INVALID_EVENT",
    ),
    (
        Defect::NoDepthLimit,
        "no-depth-limit",
        "no nesting check; the parser's limit answers",
    ),
    (
        Defect::IgnoreUnknownType,
        "ignore-unknown-type",
        "unknown types get no answer",
    ),
    (
        Defect::AcceptForgedProof,
        "accept-forged-proof",
        "session proofs are not verified",
    ),
    (
        Defect::EmitWrongTypedField,
        "emit-wrong-typed-field",
        "session.ready max_depth is a string",
    ),
    (
        Defect::ManifestWithoutLicence,
        "manifest-without-licence",
        "the manifest lacks its licence",
    ),
    (
        Defect::HealthWrongTyped,
        "health-wrong-typed",
        "health's queue depth is a string",
    ),
    (
        Defect::MetricsFrozen,
        "metrics-frozen",
        "metric counters never move",
    ),
    (
        Defect::HealthKeepsDeadWorkers,
        "health-keeps-dead-workers",
        "health lists departed workers as healthy",
    ),
    (
        Defect::HealthIgnoresHeartbeats,
        "health-ignores-heartbeats",
        "worker health ignores heartbeats",
    ),
    (
        Defect::EnrolledTermsDiffer,
        "enrolled-terms-differ",
        "enrolment grants other lease terms than the manifest",
    ),
    (
        Defect::PinIgnored,
        "pin-ignored",
        "a probe's worker pin is ignored",
    ),
    (
        Defect::RetryNonRetryable,
        "retry-non-retryable",
        "non-retryable failures are retried",
    ),
    (
        Defect::AcceptStaleEpoch,
        "accept-stale-epoch",
        "results fenced by task id only",
    ),
    (
        Defect::NeverLapse,
        "never-lapse",
        "leases never lapse by deadline",
    ),
    (
        Defect::ForgetLostLeases,
        "forget-lost-leases",
        "a lost worker's tasks are never re-dispatched",
    ),
    (
        Defect::IgnoreProgress,
        "ignore-progress",
        "progress does not extend the lease",
    ),
    (
        Defect::AcceptMalformedResult,
        "accept-malformed-result",
        "results are not checked",
    ),
    (
        Defect::NoRefundOnDeadLetter,
        "no-refund-on-dead-letter",
        "dead letters keep their hold",
    ),
    (
        Defect::ForgetUnfinishedOnRestart,
        "forget-unfinished-on-restart",
        "in-flight intents are not resumed after a crash",
    ),
    (
        Defect::NewKeyOnRestart,
        "new-key-on-restart",
        "a new realm key (realm_id) on every start",
    ),
    (
        Defect::FetchBySession,
        "fetch-by-session",
        "fetch finds only the session's own live intents",
    ),
    (
        Defect::CancelBySession,
        "cancel-by-session",
        "only the submitting session may cancel",
    ),
    (
        Defect::ResumeIgnored,
        "resume-ignored",
        "the hello's resume list is ignored",
    ),
    (
        Defect::ResumeAnyWallet,
        "resume-any-wallet",
        "resume attaches live intents of any wallet",
    ),
    (
        Defect::ResumeRedelivers,
        "resume-redelivers",
        "every resume resends the terminal event",
    ),
    (
        Defect::OverdrawOnRace,
        "overdraw-on-race",
        "held money counts as available",
    ),
    (
        Defect::IgnoreIdempotencyKey,
        "ignore-idempotency-key",
        "retries are admitted again",
    ),
    (
        Defect::CaptureAndRelease,
        "capture-and-release",
        "a success is captured and released in full",
    ),
    (
        Defect::FeeToWorker,
        "fee-to-worker",
        "the realm fee is paid to the worker",
    ),
    (
        Defect::StatementOmitsMints,
        "statement-omits-mints",
        "statements leave out mints",
    ),
    (
        Defect::BrokenAuditChain,
        "broken-audit-chain",
        "hashes do not cover prev_hash",
    ),
    (
        Defect::SkipCaptureAudit,
        "skip-capture-audit",
        "captures are not audited",
    ),
    (
        Defect::PagingDropsRecord,
        "paging-drops-record",
        "audit paging skips a record per page",
    ),
    (
        Defect::FifoUnfair,
        "fifo-unfair",
        "one FIFO queue, no per-wallet limit",
    ),
    (
        Defect::UnboundedQueue,
        "unbounded-queue",
        "overload is queued, never refused",
    ),
    (
        Defect::SlowDispatch,
        "slow-dispatch",
        "one task dispatched per scheduling tick",
    ),
    (
        Defect::DoubleTerminal,
        "double-terminal",
        "every terminal event is sent twice",
    ),
    (
        Defect::AcceptAnyToken,
        "accept-any-token",
        "workers enrol with any token",
    ),
    (
        Defect::MintByAnyone,
        "mint-by-anyone",
        "any wallet may mint",
    ),
    (
        Defect::RestAnySigner,
        "rest-any-signer",
        "any signer may read any wallet",
    ),
    (
        Defect::NoTimestampCheck,
        "no-timestamp-check",
        "signed REST requests never expire",
    ),
    (
        Defect::EchoInErrors,
        "echo-in-errors",
        "refusals echo the refused frame",
    ),
    (
        Defect::RefusalsToAll,
        "refusals-to-all",
        "refusals go to every client session",
    ),
    (
        Defect::SanitizeInput,
        "sanitize-input",
        "input strings are escaped and stripped on admission",
    ),
    (
        Defect::ServeStaticNaively,
        "serve-static-naively",
        "a static route lets `..` escape its folder",
    ),
    (
        Defect::NoRateLimit,
        "no-rate-limit",
        "the frame rate limit never refuses",
    ),
    (
        Defect::RateLimitedWithoutRetry,
        "rate-limited-without-retry",
        "RATE_LIMITED answers lack retry_after_ms",
    ),
];

/// Why the realm refuses to start with the `MTOR_DEFECT` it was given.
#[derive(Debug, thiserror::Error)]
pub enum DefectError {
    /// The name is not in [`CATALOGUE`].
    #[error("MTOR_DEFECT={0} is not a known defect; known: {known}", known = names())]
    Unknown(String),
    /// This build has no seeded defects.
    #[error("MTOR_DEFECT={0} is set, but this build has no seeded defects (build the realm with `--features defects`, debug only)")]
    NotBuilt(String),
}

/// The names, comma-separated, for error messages.
pub fn names() -> String {
    CATALOGUE
        .iter()
        .map(|(_, n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The defect of this name.
pub fn parse(name: &str) -> Option<Defect> {
    CATALOGUE
        .iter()
        .find(|(_, n, _)| *n == name)
        .map(|(d, _, _)| *d)
}

/// The name of a defect.
pub fn name(defect: Defect) -> &'static str {
    CATALOGUE
        .iter()
        .find(|(d, _, _)| *d == defect)
        .map_or("unknown", |(_, n, _)| *n)
}

#[cfg(feature = "defects")]
static ACTIVE: std::sync::OnceLock<Option<Defect>> = std::sync::OnceLock::new();

/// Reads `MTOR_DEFECT` once, before the realm starts. An empty or unset variable is no defect.
pub fn init() -> Result<Option<Defect>, DefectError> {
    let wanted = std::env::var("MTOR_DEFECT").unwrap_or_default();
    let wanted = wanted.trim();
    if wanted.is_empty() {
        return Ok(None);
    }
    #[cfg(feature = "defects")]
    {
        let defect = parse(wanted).ok_or_else(|| DefectError::Unknown(wanted.to_owned()))?;
        let _ = ACTIVE.set(Some(defect));
        tracing::warn!(
            defect = name(defect),
            "SEEDED DEFECT ACTIVE: this realm is broken on purpose"
        );
        Ok(Some(defect))
    }
    #[cfg(not(feature = "defects"))]
    {
        Err(DefectError::NotBuilt(wanted.to_owned()))
    }
}

/// Whether `defect` is the one seeded in this process.
#[cfg(feature = "defects")]
#[inline]
pub fn on(defect: Defect) -> bool {
    ACTIVE.get().copied().flatten() == Some(defect)
}

/// Whether `defect` is the one seeded in this process: never, in this build.
#[cfg(not(feature = "defects"))]
#[inline(always)]
pub const fn on(_defect: Defect) -> bool {
    false
}

/// What `sanitize-input` does to every string of an intent's input: the well-meant escaping that
/// SEC-2 forbids (HTML-escape markup, drop control characters).
pub fn sanitize(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            *s = s
                .chars()
                .filter(|c| !c.is_control())
                .map(|c| match c {
                    '<' => "&lt;".to_owned(),
                    '>' => "&gt;".to_owned(),
                    '&' => "&amp;".to_owned(),
                    '"' => "&quot;".to_owned(),
                    '\'' => "&#39;".to_owned(),
                    c => c.to_string(),
                })
                .collect();
        }
        Value::Array(a) => a.iter_mut().for_each(sanitize),
        Value::Object(o) => o.values_mut().for_each(sanitize),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for (d, n, _) in CATALOGUE {
            assert!(seen.insert(*n), "{n} twice");
            assert_eq!(parse(n), Some(*d));
            assert_eq!(name(*d), *n);
        }
        assert!(CATALOGUE.len() >= 24);
        assert_eq!(parse("no-such-defect"), None);
    }

    #[cfg(not(feature = "defects"))]
    #[test]
    fn a_clean_build_has_no_defect_on() {
        for (d, _, _) in CATALOGUE {
            assert!(!on(*d));
        }
    }
}
