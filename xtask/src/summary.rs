//! Totals of the `test result:` lines that cargo test prints once per test binary.

/// Passed and failed test counts summed over every cargo test run of `cargo xtask test`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

impl Tally {
    /// Adds the counts from every `test result: ... N passed; M failed; ...` line.
    pub fn add_output(&mut self, output: &str) {
        for line in output.lines() {
            if let Some(rest) = line.trim().strip_prefix("test result:") {
                self.passed += count(rest, "passed");
                self.failed += count(rest, "failed");
            }
        }
    }

    /// The final line of `cargo xtask test` (CI logs are searched for it).
    pub fn summary(&self) -> String {
        format!("xtask test: {} passed, {} failed", self.passed, self.failed)
    }
}

/// The number written just before `label` (e.g. `3 passed;`), or 0.
fn count(text: &str, label: &str) -> u64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[1].trim_end_matches([';', ',']) == label)
        .and_then(|w| w[0].parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_result_lines_and_ignores_the_rest() {
        let output = "\
running 2 tests
test a ... ok
test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s
test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.50s
test passed_test ... ok
";
        let mut tally = Tally::default();
        tally.add_output(output);
        tally.add_output("test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured\n");
        assert_eq!(
            tally,
            Tally {
                passed: 15,
                failed: 2
            }
        );
        assert_eq!(tally.summary(), "xtask test: 15 passed, 2 failed");
    }
}
