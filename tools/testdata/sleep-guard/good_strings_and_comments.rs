/// Never `sleep(100)` then `assert!` in a test; see TESTING.md.
#[test]
fn words_are_not_code() {
    let s = "tokio::time::sleep(x); assert!(done)";
    let raw = r#"std::thread::sleep(d) { ; } "#;
    let c = '{';
    // thread::sleep(Duration::from_millis(5));
    /* sleep( nested /* sleep( */ */
    assert_eq!(s.len() + raw.len(), 62, "{c}");
    let elapsed_words = "elapsed";
    assert!(!elapsed_words.is_empty());
}

fn sleeps_without_anything_after_in_a_loop<'a>(x: &'a str) -> &'a str {
    while busy() {
        std::thread::sleep(Duration::from_millis(10));
    }
    x
}
