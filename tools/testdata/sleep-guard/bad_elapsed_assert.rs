#[tokio::test]
async fn refusal_is_fast() {
    let started = Instant::now();
    let r = connect(outside).await;
    assert!(r.is_err());
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "refusal must not wait"
    );
}
