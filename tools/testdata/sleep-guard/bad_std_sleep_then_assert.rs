#[test]
fn thread_sleep_then_assert() {
    let h = spawn_worker();
    std::thread::sleep(Duration::from_millis(50));
    assert!(h.done(), "worker still busy");
}
