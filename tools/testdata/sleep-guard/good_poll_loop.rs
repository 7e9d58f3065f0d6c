#[tokio::test]
async fn waits_for_the_event() {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if peer.count() >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut n = 0;
    for _ in 0..100 {
        n = stats().await.good;
        if n >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(n >= 10, "{n}");
    wait_until("the PORT", GENEROUS, async || peer.ports() == 1).await;
    assert_eq!(peer.ports(), 1);
}
