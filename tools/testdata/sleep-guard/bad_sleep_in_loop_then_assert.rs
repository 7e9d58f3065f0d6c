#[tokio::test]
async fn each_round_guesses() {
    for round in 0..3 {
        restart().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(ready(), "round {round}");
    }
}
