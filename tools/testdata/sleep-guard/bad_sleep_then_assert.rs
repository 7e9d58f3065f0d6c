#[tokio::test]
async fn counts_after_a_guess() {
    let peer = start().await;
    peer.poke();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(peer.count(), 1);
}
