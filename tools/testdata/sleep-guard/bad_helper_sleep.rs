fn finish(mut self) -> String {
    self.child.wait().unwrap();
    // Let the reader threads drain.
    std::thread::sleep(Duration::from_millis(100));
    self.lines.try_iter().collect()
}
