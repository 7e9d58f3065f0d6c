#[tokio::test]
async fn kills_at_a_random_moment() {
    let delay = Duration::from_millis(rng.random_range(100..1500));
    // sleep-ok: the random moment of the kill is the input under test.
    tokio::time::sleep(delay).await;
    assert!(child.try_wait().unwrap().is_none());
    let started = Instant::now();
    let r = conn.recv().await;
    // clock-ok: a lower bound; load only makes it longer.
    assert!(started.elapsed() >= Duration::from_millis(150));
}
