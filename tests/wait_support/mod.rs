//! Event waits for integration tests: poll a condition until it holds or a generous
//! deadline passes, instead of sleeping a fixed time and asserting.
//!
//! A fixed sleep encodes a guess about how fast the machine is; on a loaded 2-core CI
//! runner the guess is wrong now and then and the test fails for reasons that have nothing
//! to do with the code. Waiting for the event costs nothing when the machine is fast and
//! only fails when the event truly never comes (the deadline is there so that a real
//! failure ends the test with a message instead of hanging it). `tools/check-test-sleeps.py`
//! rejects new sleep-then-assert code in tests; see TESTING.md.
#![allow(dead_code)]

use std::time::Duration;

/// How long to wait for something that takes milliseconds on an idle machine: long enough
/// that only a real failure reaches it.
pub const GENEROUS: Duration = Duration::from_secs(30);

/// Between two probes: short enough not to slow a passing test down, long enough not to
/// burn the CPU the code under test needs.
const POLL: Duration = Duration::from_millis(20);

/// Calls `probe` until it returns `Some`, then returns the value; panics naming `what` if
/// `timeout` passes first (after one last probe, so a slow probe cannot lose the race).
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let expired = tokio::time::Instant::now() >= deadline;
        if let Some(v) = probe().await {
            return v;
        }
        if expired {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_for`] for a plain condition.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl AsyncFnMut() -> bool) {
    wait_for(what, timeout, async || cond().await.then_some(())).await
}
